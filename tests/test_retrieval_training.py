"""Training: a run killed mid-way resumes to the same parameters; settings changes are refused;
the end-to-end pipeline writes the table from the batch job's output."""

import dataclasses
import os

import jax
import numpy as np
import pytest

import retrieval.training as training
from retrieval.end_to_end import run_end_to_end
from retrieval.evaluate import EvalSettings, format_table
from retrieval.job import JobSettings
from retrieval.training import load_retriever, train_retriever
from retrieval_helpers import SMALL_DATA, SMALL_TRAIN


def test_crash_and_resume_gives_the_same_parameters(small_run, tmp_path, monkeypatch):
    prepared = small_run.prepared
    run_dir = str(tmp_path / "model")
    real = training.training_windows

    def crash_at_25(train, catalog, step, *args, **kwargs):
        if step == 25:
            raise KeyboardInterrupt("simulated crash")
        return real(train, catalog, step, *args, **kwargs)

    monkeypatch.setattr(training, "training_windows", crash_at_25)
    with pytest.raises(KeyboardInterrupt):
        train_retriever(prepared.split.train, prepared.split.valid, prepared.catalog, run_dir, SMALL_TRAIN,
                        max_history=SMALL_DATA.max_history, progress=False)
    monkeypatch.setattr(training, "training_windows", real)
    resumed = train_retriever(prepared.split.train, prepared.split.valid, prepared.catalog, run_dir, SMALL_TRAIN,
                              max_history=SMALL_DATA.max_history, progress=False)
    assert [e["step"] for e in resumed.log["evals"]] == [20, 40] and len(resumed.log["losses"]) == 40
    for a, b in zip(jax.tree.leaves(resumed.retriever.params), jax.tree.leaves(small_run.retriever.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="other settings"):
        train_retriever(prepared.split.train, prepared.split.valid, prepared.catalog, run_dir,
                        dataclasses.replace(SMALL_TRAIN, learning_rate=1e-3), max_history=SMALL_DATA.max_history,
                        progress=False)


def test_load_retriever_errors(tmp_path, small_run):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_retriever(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_retriever(str(tmp_path))


def test_end_to_end_scores_the_job_output(tmp_path):
    results = run_end_to_end(
        str(tmp_path), SMALL_DATA, dataclasses.replace(SMALL_TRAIN, steps=20, eval_every=20),
        JobSettings(k=20, num_beams=20, batch_size=16), EvalSettings(exact_users=30, batch_size=16), progress=False,
    )
    table = results["evaluation"]
    assert results["job"]["invalid_outputs"] == 0 and results["job"]["queries"] == table["counts"]["test_users"]
    assert set(table["rows"]) == {"constrained beam", "unconstrained beam", "exact scoring", "most popular", "co-occurrence"}
    for row in table["rows"].values():
        assert 0.0 <= row["recall@5"] <= row["recall@10"] <= row["recall@20"] <= 1.0
    cold = table["cold_start"]
    assert cold["events"] > 0 and 0.0 <= cold[f"constrained_to_cold recall@{cold['k']}"] <= 1.0
    assert "constrained beam" in format_table(table, "small")
    assert os.path.exists(tmp_path / "output" / "manifest.json")


def test_hybrid_ids_use_training_events_only():
    """Hybrid semantic IDs read co-occurrence of the training events alone: changing every
    user's held-out test item leaves the catalog's IDs unchanged."""
    from retrieval.pipeline import load_tables, prepare
    from retrieval.tables import Interactions

    settings = dataclasses.replace(SMALL_DATA, embeddings="hybrid")
    items, events = load_tables(settings)
    base = prepare(items, events, settings)
    assert "co-occurrence" in base.embedding_source
    assert len(np.unique(base.catalog.codes, axis=0)) == base.catalog.num_items
    # Each user's latest event is its test target; point them all at one other item.
    order = np.lexsort((np.arange(len(events)), events.timestamps, events.user_ids))
    last = order[np.r_[np.flatnonzero(events.user_ids[order][1:] != events.user_ids[order][:-1]), len(order) - 1]]
    item_ids = events.item_ids.copy()
    item_ids[last] = base.catalog.item_ids[0]
    changed = prepare(items, Interactions(events.user_ids, item_ids, events.timestamps, events.source, events.lines),
                      settings)
    assert (changed.catalog.codes == base.catalog.codes).all()
    content = prepare(items, events, SMALL_DATA)
    assert not (content.catalog.codes.shape == base.catalog.codes.shape and (content.catalog.codes == base.catalog.codes).all())
