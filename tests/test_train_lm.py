"""scripts/train_lm.py: the stdlib corpus split, loss going down, orbax checkpoints and exact resume.

One tiny-preset run of 12 steps is the reference; a run stopped at step 6 and resumed to 12
(same schedule) must continue from 6 and end with bit-identical params.
"""

import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import train_lm  # noqa: E402
from models import restore_params  # noqa: E402

SETTINGS = train_lm.TrainSettings(
    preset="tiny", steps=12, batch=4, seq_len=32, learning_rate=1e-2, warmup_steps=2,
    schedule_steps=12, checkpoint_every=3, eval_batches=2,
)


@pytest.fixture(scope="module")
def corpus():
    return train_lm.load_corpus(max_bytes=8192)


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, train_lm.train(SETTINGS, corpus, str(out), progress=False)


def test_split_is_fixed_sorted_and_disjoint(corpus):
    paths = train_lm.stdlib_sources()
    assert paths == sorted(paths) and all(p.endswith(".py") for p in paths)
    assert not any(part in train_lm.SKIPPED_DIRS for p in paths for part in p.split(os.sep)[:-1])
    heldout = [p for p in paths if train_lm.is_heldout(p)]
    assert 0 < len(heldout) < len(paths) // 5
    assert list(corpus.heldout_files) == heldout[: len(corpus.heldout_files)]
    assert corpus.train.shape == (8192,) and corpus.heldout.shape == (8192,) and corpus.train.dtype == np.uint8
    first_train = next(p for p in paths if not train_lm.is_heldout(p))
    with open(os.path.join(train_lm.stdlib_root(), first_train), "rb") as f:
        head = f.read(100)
    assert corpus.train[: len(head)].tobytes() == head


def test_batches_depend_only_on_seed_and_step(corpus):
    a = train_lm.batch_at(corpus.train, 5, 4, 32, seed=0)
    assert a.shape == (4, 33) and a.dtype == np.int32
    np.testing.assert_array_equal(a, train_lm.batch_at(corpus.train, 5, 4, 32, seed=0))
    assert not np.array_equal(a, train_lm.batch_at(corpus.train, 6, 4, 32, seed=0))
    assert not np.array_equal(a, train_lm.batch_at(corpus.train, 5, 4, 32, seed=1))
    # each window is a contiguous slice of the corpus
    text = corpus.train.tobytes()
    assert all(bytes(row.astype(np.uint8)) in text for row in a)
    with pytest.raises(ValueError, match="seq_len"):
        train_lm.batch_at(corpus.train[:10], 0, 4, 32, seed=0)


def test_loss_decreases_and_outputs_written(full_run):
    out, result = full_run
    assert result.start_step == 0 and len(result.losses) == 12
    assert np.log(256) - 0.3 < result.losses[0] < np.log(256) + 0.5  # starts near uniform over bytes
    assert np.mean(result.losses[-3:]) < result.losses[0] - 1.0
    assert result.heldout_loss < result.losses[0] - 0.5
    steps = sorted(int(name) for name in os.listdir(out / "checkpoints") if name.isdigit())
    assert steps[-1] == 12 and len(steps) <= 2  # max_to_keep
    with open(out / "metadata.json") as f:
        metadata = json.load(f)
    assert metadata["preset"] == "tiny" and metadata["steps"] == 12
    assert metadata["final_loss"] == pytest.approx(np.mean(result.losses[-10:]))


def test_restore_params_round_trip(full_run):
    out, result = full_run
    restored = restore_params(str(out / "params"), like=result.params)
    assert jax.tree.structure(restored) == jax.tree.structure(result.params)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_continues_and_matches_uninterrupted(corpus, full_run, tmp_path):
    _, full = full_run
    first = train_lm.train(dataclasses.replace(SETTINGS, steps=6), corpus, str(tmp_path), progress=False)
    assert first.start_step == 0 and len(first.losses) == 6
    np.testing.assert_array_equal(first.losses, full.losses[:6])
    resumed = train_lm.train(SETTINGS, corpus, str(tmp_path), progress=False)
    assert resumed.start_step == 6 and len(resumed.losses) == 6
    np.testing.assert_array_equal(resumed.losses, full.losses[6:])
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a run that is already finished resumes at its end and trains no further
    again = train_lm.train(SETTINGS, corpus, str(tmp_path), progress=False)
    assert again.start_step == 12 and again.losses == ()


def test_refuses_resume_with_other_settings(corpus, full_run):
    out, _ = full_run
    with pytest.raises(ValueError, match="learning_rate"):
        train_lm.train(dataclasses.replace(SETTINGS, learning_rate=5e-3), corpus, str(out), progress=False)
    with pytest.raises(ValueError, match="horizon"):  # more steps without --schedule-steps: another schedule
        train_lm.train(dataclasses.replace(SETTINGS, steps=20, schedule_steps=None), corpus, str(out), progress=False)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="batch"):
        train_lm.TrainSettings(batch=0).validate()
    with pytest.raises(ValueError, match="schedule_steps"):
        train_lm.TrainSettings(steps=10, schedule_steps=5).validate()
