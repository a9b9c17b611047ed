"""Diverse beam search: the worked example and the penalty threshold by hand, groups that
differ at every step, strength 0 = ordinary beam search per group, the constrained dense
path against the sparse one, and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from constraints import build_fixed_length_index, build_variable_length_index
from decoding.beam_search import beam_search
from decoding.diverse_beam_search import diverse_beam_search
from fake_models import BigramModel, HistoryModel, TokenCache, counting_params, random_params

CAPACITY = 32


def run(model, params, prompts, lengths, search=diverse_beam_search, **kwargs):
    prompts = np.asarray(prompts)
    cache = TokenCache.empty(prompts.shape[0], CAPACITY)
    return search(model, params, cache, prompts, np.asarray(lengths), **kwargs)


def test_worked_example_and_penalty_threshold():
    """Module docstring: group 1 avoids "2" once the penalty exceeds the log-prob gap of 10."""
    p = float(np.log1p(5 * np.exp(-10.0)))
    kwargs = dict(num_beams=2, num_groups=2, max_new_tokens=2, length_penalty=0.0)
    for strength in (20.0, 11.0):
        out = run(BigramModel(), counting_params(6), [[1]], [1], diversity_strength=strength, **kwargs)
        np.testing.assert_array_equal(out.sequences[0], [[2, 3], [0, 1]])
        np.testing.assert_allclose(out.log_probs[0], [-2 * p, -10 - 2 * p], rtol=1e-5, atol=1e-6)
        assert np.all(out.valid)
    for strength in (9.0, 0.0):  # below the gap group 1 also picks 2 3: a repeat, reported once
        out = run(BigramModel(), counting_params(6), [[1]], [1], diversity_strength=strength, **kwargs)
        np.testing.assert_array_equal(out.sequences[0], [[2, 3], [0, 0]])
        assert np.asarray(out.valid[0]).tolist() == [True, False]
        np.testing.assert_allclose(out.log_probs[0, 0], -2 * p, rtol=1e-5, atol=1e-6)


def test_groups_differ_at_every_step():
    """One beam per group and an overwhelming penalty: at every position the two groups'
    tokens differ (no EOS, so the outputs are the live beams). Same compile as above."""
    for seed in range(4):
        out = run(BigramModel(), random_params(6, seed=seed), [[seed]], [1], num_beams=2, num_groups=2,
                  diversity_strength=1e4, max_new_tokens=2, length_penalty=0.0)
        assert np.all(out.sequences[0, 0] != out.sequences[0, 1])
        assert out.scores[0, 0] >= out.scores[0, 1]  # sorted best first


def test_zero_strength_is_ordinary_beam_search_per_group():
    """Strength 0: each of the 2 groups is ordinary beam search with 3 beams, so every
    hypothesis is found twice; the output names each once, then 3 invalid beams."""
    params = random_params(7, seed=1, scale=2.0)
    prompts, lengths = np.array([[3, 1, 4], [5, 0, 0]]), [3, 1]
    common = dict(max_new_tokens=6, eos_ids=(0, 5), length_penalty=0.7)
    diverse = run(HistoryModel(), params, prompts, lengths, num_beams=6, num_groups=2, diversity_strength=0.0, **common)
    plain = run(HistoryModel(), params, prompts, lengths, search=beam_search, num_beams=3, **common)
    np.testing.assert_array_equal(diverse.sequences[:, :3], plain.sequences)
    np.testing.assert_array_equal(diverse.lengths[:, :3], plain.lengths)
    np.testing.assert_allclose(diverse.scores[:, :3], plain.scores, rtol=1e-6)
    assert np.asarray(diverse.valid[:, :3]).all() and not np.asarray(diverse.valid[:, 3:]).any()
    assert np.isneginf(np.asarray(diverse.scores[:, 3:])).all()


def test_more_beams_than_items_returns_each_item_once():
    """Two items, six beams in three groups: exactly two valid beams, the two items."""
    items = np.array([[1, 2], [3, 4]])
    index = build_fixed_length_index(items, vocab_size=6)
    out = run(BigramModel(), random_params(6, seed=0), [[0]], [1], num_beams=6, num_groups=3,
              diversity_strength=5.0, constraint=index, length_penalty=0.0)
    valid = np.asarray(out.valid[0])
    assert valid.tolist() == [True, True, False, False, False, False]
    assert sorted(map(tuple, np.asarray(out.sequences[0, :2]).tolist())) == [(1, 2), (3, 4)]


def test_constrained_dense_path_matches_sparse_path():
    """A fixed-length index through the dense mask (one group, strength 0) gives the sparse
    path's result; with 2 groups every valid output is still an item."""
    rng = np.random.default_rng(8)
    items = rng.integers(0, 7, size=(12, 3))
    index = build_fixed_length_index(items, 7)
    params = random_params(7, seed=4)
    prompts, lengths = [[2, 6], [1, 0]], [2, 1]
    sparse = run(HistoryModel(), params, prompts, lengths, search=beam_search, num_beams=4, constraint=index)
    dense = run(HistoryModel(), params, prompts, lengths, num_beams=4, num_groups=1, diversity_strength=0.0,
                constraint=index)
    np.testing.assert_array_equal(dense.sequences, sparse.sequences)
    np.testing.assert_allclose(dense.scores, sparse.scores, rtol=1e-5)
    np.testing.assert_array_equal(dense.valid, sparse.valid)
    grouped = run(HistoryModel(), params, prompts, lengths, num_beams=4, num_groups=2, diversity_strength=3.0,
                  constraint=index)
    allowed = {tuple(item) for item in items.tolist()}
    for row in range(2):
        found = [tuple(seq) for seq, ok in zip(np.asarray(grouped.sequences[row]).tolist(), grouped.valid[row]) if ok]
        assert found and set(found) <= allowed and len(set(found)) == len(found)  # items, each once


def test_variable_length_constraint_outputs_in_set():
    seqs = [[1, 2, 6], [1, 6], [3, 6], [4, 5, 2, 6], [2, 6]]
    index = build_variable_length_index(seqs, 7, 6)
    out = run(HistoryModel(), random_params(7, seed=2), [[5, 5]], [2], num_beams=6, num_groups=3,
              diversity_strength=2.0, constraint=index, length_penalty=0.5)
    allowed = {tuple(seq) for seq in seqs}
    found = [tuple(np.asarray(out.sequences[0, b, : out.lengths[0, b]]).tolist()) for b in range(6) if out.valid[0, b]]
    assert found and set(found) <= allowed
    assert np.all(np.isneginf(out.scores[0, ~np.asarray(out.valid[0])]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=3, num_groups=2, diversity_strength=1.0), "multiple of num_groups"),
        (dict(num_beams=2, num_groups=0, diversity_strength=1.0), "num_groups"),
        (dict(num_beams=2, num_groups=2, diversity_strength=-1.0), "diversity_strength"),
    ],
)
def test_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(BigramModel(), counting_params(6), [[1]], [1], max_new_tokens=2, **kwargs)
