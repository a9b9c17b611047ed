"""Per-row item filters (history exclusion, segments) against brute force over the item set."""

import numpy as np
import pytest

from constraints import FilterTables, ItemFilter, build_fixed_length_index, leaf_ranks
from constraints.item_filter import leaf_ranges
from decoding import beam_search
from fake_models import BigramModel, TokenCache, random_params

VOCAB = 7


def _items(rng, num=40, depth=3):
    return np.unique(rng.integers(0, VOCAB, size=(num, depth)), axis=0)


def test_leaf_ranks_and_ranges_match_sorted_rows():
    rng = np.random.default_rng(0)
    items = _items(rng)
    index = build_fixed_length_index(items[rng.permutation(len(items))], vocab_size=VOCAB)
    assert leaf_ranks(index, items).tolist() == list(range(len(items)))  # np.unique sorted them
    assert leaf_ranks(index, np.array([[VOCAB - 1] * 3, [0, 0, VOCAB]])).tolist()[1] == -1
    start, stop = leaf_ranges(index)
    assert (start[0], stop[0]) == (0, len(items))
    # state 1 is the first root child: the items starting with the smallest first token
    first = items[0, 0]
    assert (start[1], stop[1]) == (0, int((items[:, 0] == first).sum()))


def _log_prob(table: np.ndarray, prompt_last: int, item: np.ndarray) -> float:
    log_probs = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
    total, prev = 0.0, prompt_last
    for token in item:
        total += log_probs[prev, token]
        prev = token
    return total


@pytest.mark.parametrize("with_segments", [False, True])
def test_filtered_beam_search_equals_brute_force(with_segments):
    rng = np.random.default_rng(1 + with_segments)
    items = _items(rng, num=60)
    index = build_fixed_length_index(items, vocab_size=VOCAB)
    segments = rng.integers(0, 3, size=len(items)) if with_segments else None
    tables = FilterTables.build(index, leaf_segments=segments)
    batch = 4
    excluded = [rng.choice(len(items), size=rng.integers(0, 12), replace=False) for _ in range(batch)]
    row_segments = [0, 2, -1, 1] if with_segments else None
    flt = ItemFilter.for_rows(tables, index, excluded=excluded, row_segments=row_segments, max_excluded=12)
    params = random_params(VOCAB, seed=3)
    prompts = rng.integers(0, VOCAB, size=(batch, 2))
    out = beam_search(
        BigramModel(), params, TokenCache.empty(batch, 8), prompts, np.full(batch, 2), num_beams=len(items),
        constraint=flt, length_penalty=0.0,
    )
    table = np.asarray(params, np.float64)
    for r in range(batch):
        allowed = [i for i in range(len(items)) if i not in set(excluded[r].tolist())]
        if with_segments and row_segments[r] >= 0:
            allowed = [i for i in allowed if segments[i] == row_segments[r]]
        scores = np.array([_log_prob(table, prompts[r, -1], items[i]) for i in allowed])
        expected = [allowed[i] for i in np.argsort(-scores, kind="stable")]
        valid = np.asarray(out.valid[r])
        got = leaf_ranks(index, np.asarray(out.sequences[r])[valid]).tolist()
        assert got == expected
        np.testing.assert_allclose(np.asarray(out.log_probs[r])[valid], np.sort(scores)[::-1], rtol=1e-5, atol=1e-5)


def test_few_beams_never_return_filtered_items():
    rng = np.random.default_rng(5)
    items = _items(rng, num=60)
    index = build_fixed_length_index(items, vocab_size=VOCAB)
    tables = FilterTables.build(index)
    params = random_params(VOCAB, seed=4)
    prompts = np.zeros((2, 1), np.int64)
    plain = beam_search(BigramModel(), params, TokenCache.empty(2, 8), prompts, np.ones(2, np.int32), num_beams=3, constraint=index)
    # exclude the unfiltered top-3 of row 0 and every item but 2 for row 1
    top = leaf_ranks(index, np.asarray(plain.sequences[0]))
    keep = np.array([5, 9])
    flt = ItemFilter.for_rows(tables, index, excluded=[top, np.setdiff1d(np.arange(len(items)), keep)])
    out = beam_search(BigramModel(), params, TokenCache.empty(2, 8), prompts, np.ones(2, np.int32), num_beams=3, constraint=flt)
    got0 = leaf_ranks(index, np.asarray(out.sequences[0]))
    assert not set(got0.tolist()) & set(top.tolist()) and np.asarray(out.valid[0]).all()
    assert np.asarray(out.valid[1]).tolist() == [True, True, False]
    assert sorted(leaf_ranks(index, np.asarray(out.sequences[1][:2])).tolist()) == keep.tolist()


def test_bad_filter_inputs():
    index = build_fixed_length_index(np.array([[0, 1], [1, 0]]), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="leaf_segments"):
        FilterTables.build(index, leaf_segments=np.array([0]))
    tables = FilterTables.build(index)
    with pytest.raises(ValueError, match="without leaf_segments"):
        ItemFilter.for_rows(tables, index, excluded=[[]], row_segments=[0])
    with pytest.raises(ValueError, match="max_excluded"):
        ItemFilter.for_rows(tables, index, excluded=[[0, 1]], max_excluded=1)
    variable = __import__("constraints").build_variable_length_index([[1, 2, 3]], vocab_size=VOCAB, eos_id=3)
    with pytest.raises(ValueError, match="fixed-length"):
        FilterTables.build(variable)
