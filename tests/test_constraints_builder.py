"""Builder tests: worked examples, dtypes, large-vocabulary sorting, dense levels, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_constraints_oracle import random_fixed_items

from constraints import (
    DEAD_STATE,
    TrieIndex,
    advance,
    allowed_mask,
    build_fixed_length_index,
    build_variable_length_index,
    candidates,
    initial_state,
    is_complete,
)
from constraints.lexsort import sorted_unique_rows


def _items_of(index: TrieIndex) -> set[tuple[int, ...]]:
    """Every item, read back from the CSR arrays in NumPy (parent of state e+1 = row of edge e)."""
    indptr = np.asarray(index.indptr).astype(np.int64)
    tokens = np.asarray(index.tokens).astype(np.int64)
    edges = np.arange(tokens.shape[0])
    parent = np.r_[-1, np.searchsorted(indptr, edges, side="right") - 1]  # [num_states]
    token_in = np.r_[-1, tokens]
    row_width = np.zeros(index.num_states, dtype=np.int64)
    row_width[: index.num_rows] = np.diff(indptr)
    items = set()
    for leaf in np.flatnonzero(row_width == 0):
        path, state = [], leaf
        while state > 0:
            path.append(int(token_in[state]))
            state = parent[state]
        items.add(tuple(reversed(path)))
    return items


def test_worked_example():
    index = build_fixed_length_index(np.array([[4, 0], [1, 3], [1, 2], [1, 3]]), vocab_size=5)
    assert index.level_sizes == (1, 2, 3) and index.num_items == 3 and index.depth == 2
    np.testing.assert_array_equal(index.indptr, [0, 2, 4, 5])
    np.testing.assert_array_equal(index.tokens, [1, 4, 2, 3, 0])
    assert index.max_branching == (2, 2) and index.eos_id is None and index.fixed_length
    # Replays the example in constraints/ops.py.
    state = initial_state(index, (2,))
    toks, nxt, valid = candidates(index, state, 0)
    np.testing.assert_array_equal(toks, [[1, 4], [1, 4]])
    np.testing.assert_array_equal(nxt, [[1, 2], [1, 2]])
    assert np.asarray(valid).all()
    state = advance(index, state, jnp.array([1, 2]))
    np.testing.assert_array_equal(state, [1, DEAD_STATE])
    np.testing.assert_array_equal(allowed_mask(index, state), [[False, False, True, True, False], [False] * 5])
    state = advance(index, state, jnp.array([3, 3]))
    np.testing.assert_array_equal(state, [4, DEAD_STATE])
    np.testing.assert_array_equal(is_complete(index, state), [True, False])


def test_variable_length_worked_example():
    # "5" then EOS, "5 6" then EOS, and the empty item (EOS alone); EOS = 9.
    index = build_variable_length_index([[5, 6, 9], [9], [5, 9], [5, 6, 9]], vocab_size=10, eos_id=9)
    assert index.level_sizes == (1, 2, 2, 1) and index.num_items == 3 and index.depth == 3
    np.testing.assert_array_equal(index.indptr, [0, 2, 4, 4, 5, 5])
    np.testing.assert_array_equal(index.tokens, [5, 9, 6, 9, 9])
    assert index.max_branching == (2, 2, 1)
    toks, nxt, valid = candidates(index, jnp.array([1]), 1)  # after "5": 6 or EOS
    np.testing.assert_array_equal(toks, [[6, 9]])
    np.testing.assert_array_equal(nxt, [[3, 4]])
    np.testing.assert_array_equal(is_complete(index, jnp.arange(6)), [False, False, True, False, True, True])


@pytest.mark.parametrize(
    "vocab, token_dtype, rank_dtype",
    [(256, np.uint8, np.uint16), (257, np.uint16, np.uint16), (65536, np.uint16, np.uint16), (65537, np.int32, np.int32)],
)
def test_smallest_dtypes(vocab, token_dtype, rank_dtype):
    items = np.array([[0, vocab - 1], [vocab - 1, 0]])
    index = build_fixed_length_index(items, vocab, dense_budget_bytes=1 << 30)
    assert index.indptr.dtype == np.int32 and index.tokens.dtype == token_dtype
    assert index.dense_bits.dtype == np.uint32 and index.dense_rank.dtype == rank_dtype
    assert _items_of(index) == {(0, vocab - 1), (vocab - 1, 0)}


@pytest.mark.parametrize("vocab, length", [(1, 3), (2, 70), (7, 30), (300, 9), (100_000, 6), (2**31 - 1, 4)])
def test_sorted_unique_rows_matches_numpy(vocab, length):
    rng = np.random.default_rng(vocab)
    # Heavy shared prefixes force the chunk-by-chunk refinement, duplicates the dedupe.
    rows = random_fixed_items(rng, 3000, length, vocab, skewed=True)
    rows = np.concatenate([rows, rows[:500]])
    got = sorted_unique_rows(rows, vocab)
    np.testing.assert_array_equal(got, np.unique(rows, axis=0))


@pytest.mark.parametrize("vocab, length", [(300, 9), (100_000, 5)])
def test_large_vocab_index_holds_exactly_the_items(vocab, length):
    rng = np.random.default_rng(0)
    items = np.concatenate(
        [random_fixed_items(rng, 4000, length, vocab, skewed=True), random_fixed_items(rng, 4000, length, vocab, False)]
    )
    index = build_fixed_length_index(items[rng.permutation(items.shape[0])], vocab)
    expected = {tuple(int(t) for t in row) for row in items}
    assert _items_of(index) == expected and index.num_items == len(expected)
    assert index.num_states == len({row[:d] for row in expected for d in range(length + 1)})


def test_dense_budget_picks_levels_from_the_root():
    items = np.random.default_rng(1).integers(0, 64, size=(500, 4))
    none = build_fixed_length_index(items, 64, dense_budget_bytes=0)
    every = build_fixed_length_index(items, 64, dense_budget_bytes=1 << 30)
    root_only = build_fixed_length_index(items, 64, dense_budget_bytes=2 * (4 + 2))  # one state of 2 words
    assert (none.dense_levels, every.dense_levels, root_only.dense_levels) == (0, 4, 1)
    assert none.dense_bits.shape == (0, 2) and every.dense_bits.shape == (every.num_rows, 2)
    for index in (every, root_only):
        # Bit t of a dense row is set exactly when t leaves that state.
        bits = np.unpackbits(np.asarray(index.dense_bits).view(np.uint8), bitorder="little").reshape(-1, 64)
        widths = np.diff(np.asarray(index.indptr))[: bits.shape[0]]
        np.testing.assert_array_equal(bits.sum(axis=1), widths)
    for index in (none, every, root_only):
        np.testing.assert_array_equal(index.indptr, none.indptr)
        np.testing.assert_array_equal(index.tokens, none.tokens)
    with pytest.raises(ValueError, match="dense_budget_bytes"):
        build_fixed_length_index(items, 64, dense_budget_bytes=-1)


def test_progress_reports_every_stage_in_order():
    calls = []
    build_fixed_length_index(np.array([[1, 2, 3], [3, 2, 1]]), 4, progress=lambda *a: calls.append(a))
    assert [done for _, done, _ in calls] == list(range(1, len(calls) + 1))
    assert {total for _, _, total in calls} == {len(calls)}
    assert [stage for stage, _, _ in calls][:3] == ["validate", "sort", "level 1/3"]


def test_index_is_a_pytree_with_static_metadata():
    index = build_fixed_length_index(np.array([[1, 2], [1, 3]]), 4, dense_budget_bytes=1 << 30)
    leaves, treedef = jax.tree.flatten(index)
    assert len(leaves) == 4 and all(isinstance(leaf, jax.Array) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.max_branching == (1, 2) and rebuilt.vocab_size == 4

    @jax.jit
    def step(index, state, token):
        return advance(index, state, token), is_complete(index, advance(index, state, token))

    state, _ = step(index, jnp.zeros((3,), jnp.int32), jnp.array([1, 2, 5]))
    _, done = step(index, state, jnp.array([3, 3, 3]))
    np.testing.assert_array_equal(done, [True, False, False])
    vmapped = jax.vmap(lambda s, t: advance(index, s, t))(jnp.zeros((3,), jnp.int32), jnp.array([1, 2, 5]))
    np.testing.assert_array_equal(vmapped, state)
    with pytest.raises(ValueError, match="depth"):
        candidates(index, state, 2)


@pytest.mark.parametrize(
    "items, vocab, message",
    [
        (np.array([[0, 1], [1, 4], [2, 2]]), 4, r"row 1 has token 4 at position 1"),
        (np.array([[0, 1], [1, 1], [-2, 2]]), 4, r"row 2 has token -2 at position 0"),
        (np.zeros((0, 3), np.int32), 4, r"empty"),
        (np.zeros((3, 0), np.int32), 4, r"length 0"),
        (np.array([[0.0, 1.0]]), 4, r"integer dtype"),
        (np.array([True, False])[None], 4, r"integer dtype"),
        (np.array([1, 2, 3]), 4, r"2-D"),
        ([[1, 2], [1, 2, 3], [0, 1]], 4, r"row 1 has 3 tokens but row 0 has 2"),
        (np.array([[1, 2]]), 0, r"vocab_size"),
        (np.array([[1, 2]]), 2.5, r"vocab_size"),
        (np.array([[1, 2]]), True, r"vocab_size"),
    ],
)
def test_fixed_length_bad_input(items, vocab, message):
    with pytest.raises(ValueError, match=message):
        build_fixed_length_index(items, vocab)


@pytest.mark.parametrize(
    "seqs, eos_id, message",
    [
        ([[1, 0], [], [0]], 0, r"row 1 is empty"),
        ([[1, 0], [2, 1]], 0, r"row 1 does not end in eos_id=0"),
        ([[1, 0], [2, 0, 1, 0]], 0, r"row 1 has eos_id=0 before its end"),
        ([[1, 0], [2, 7, 0]], 0, r"row 1 has token 7"),
        ([[1, 0], [2, -1, 0]], 0, r"row 1 has token -1"),
        ([[1, 0], [2.5, 0]], 0, r"row 1 holds non-integer tokens"),
        ([], 0, r"empty"),
        ([[1, 0]], 4, r"eos_id must be an integer in \[0, 4\)"),
        ([[1, 0]], None, r"eos_id"),
    ],
)
def test_variable_length_bad_input(seqs, eos_id, message):
    with pytest.raises(ValueError, match=message):
        build_variable_length_index(seqs, 4, eos_id)
