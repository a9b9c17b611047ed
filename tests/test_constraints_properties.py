"""Property tests: the on-device ops agree with a brute-force Python trie on random item sets.

Each example builds one index and checks every op on every state (and every token) in one
compiled program, so an example costs one compile whatever the size of the item set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_constraints_oracle import Oracle, random_fixed_items, random_variable_items

from constraints import (
    DEAD_STATE,
    advance,
    allowed_mask,
    build_fixed_length_index,
    build_variable_length_index,
    candidates,
    initial_state,
    is_complete,
)

# None: the default budget; 0: no dense level; 1 << 30: every level with edges is dense.
DENSE_BUDGETS = st.sampled_from([None, 0, 1 << 30])
VOCABS = st.sampled_from([1, 2, 3, 7, 40, 300])
SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def fixed_item_sets(draw):
    vocab = draw(VOCABS)
    length = draw(st.integers(1, 9 if vocab == 300 else 5))
    num = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return random_fixed_items(rng, num, length, vocab, skewed=draw(st.booleans())), vocab


@st.composite
def variable_item_sets(draw):
    vocab = draw(VOCABS)
    eos_id = draw(st.integers(0, vocab - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num = draw(st.integers(1, 40))
    max_len = draw(st.integers(1, 6))
    return random_variable_items(rng, num, max_len, vocab, eos_id, skewed=draw(st.booleans())), vocab, eos_id


@jax.jit
def _probe(index, item_rows: jax.Array) -> dict:
    """Every op on every state, plus a walk of each item: one compiled program per index.

    item_rows: int32 [items, depth] (variable-length rows padded after their EOS; the walk
    keeps the first complete state it reaches).
    """
    states = jnp.arange(-1, index.num_states, dtype=jnp.int32)  # the dead state first
    probe_tokens = jnp.arange(-1, index.vocab_size + 1, dtype=jnp.int32)  # out of vocab on both sides

    def walk(state, token):  # int32 [items], int32 [items]
        return jnp.where(is_complete(index, state), state, advance(index, state, token)), None

    walked, _ = jax.lax.scan(walk, initial_state(index, item_rows.shape[:1]), item_rows.T)
    return {
        "mask": allowed_mask(index, states),
        "advance": advance(index, states[:, None], probe_tokens[None, :]),
        "complete": is_complete(index, states),
        "candidates": [candidates(index, states, depth) for depth in range(index.depth)],
        "walked": walked,
    }


def _check_against_oracle(index, oracle: Oracle, item_rows: np.ndarray) -> None:
    """Exhaustive comparison over every state (plus the dead state) and every token."""
    assert index.num_states == oracle.num_states
    item_rows = jnp.asarray(item_rows, jnp.int32)
    # Every example is a new program that runs once on tiny arrays: skip XLA's backend
    # optimizations (compile time dominates; the random-walk tests below use the defaults).
    probe = _probe.lower(index, item_rows).compile(compiler_options={"xla_backend_optimization_level": 0})
    got = jax.tree.map(np.asarray, probe(index, item_rows))
    order = np.r_[1 : oracle.num_states + 1, 0]  # oracle tables put the dead state last

    expected_mask = oracle.mask_table()
    np.testing.assert_array_equal(got["mask"][order], expected_mask)
    probe_tokens = np.arange(-1, index.vocab_size + 1)
    np.testing.assert_array_equal(got["advance"][order], oracle.transition_table(probe_tokens))
    np.testing.assert_array_equal(got["complete"][order], oracle.complete_table())

    for depth, (toks, next_states, valid) in enumerate(got["candidates"]):
        assert toks.shape[1] == index.max_branching[depth]
        toks, next_states, valid = toks[order], next_states[order], valid[order]
        for state in oracle.states_at_depth(depth):
            allowed = np.flatnonzero(expected_mask[state])
            np.testing.assert_array_equal(toks[state][valid[state]], allowed)
            np.testing.assert_array_equal(next_states[state][valid[state]], [oracle.child(state, t) for t in allowed])
            assert (toks[state][~valid[state]] == -1).all() and (next_states[state][~valid[state]] == DEAD_STATE).all()
        assert not valid[-1].any()  # the dead state has no candidates

    assert got["complete"][got["walked"] + 1].all(), "walking an item must reach a complete state"


@SETTINGS
@given(fixed_item_sets(), DENSE_BUDGETS)
def test_fixed_length_index_matches_brute_force(item_set, dense_budget):
    items, vocab = item_set
    index = build_fixed_length_index(items, vocab, dense_budget_bytes=dense_budget)
    oracle = Oracle.of(items, vocab)
    assert index.num_items == len(oracle.items) and index.depth == items.shape[1] and index.fixed_length
    _check_against_oracle(index, oracle, items)


@SETTINGS
@given(variable_item_sets(), DENSE_BUDGETS)
def test_variable_length_index_matches_brute_force(item_set, dense_budget):
    seqs, vocab, eos_id = item_set
    index = build_variable_length_index(seqs, vocab, eos_id, dense_budget_bytes=dense_budget)
    oracle = Oracle.of(seqs, vocab)
    assert index.num_items == len(oracle.items) and index.depth == max(map(len, seqs))
    assert not index.fixed_length and index.eos_id == eos_id
    padded = np.full((len(seqs), index.depth), eos_id)
    for row, seq in enumerate(seqs):
        padded[row, : len(seq)] = seq
    _check_against_oracle(index, oracle, padded)


@SETTINGS
@given(fixed_item_sets(), st.integers(0, 2**32 - 1))
def test_unsorted_and_duplicated_input_builds_the_identical_index(item_set, seed):
    items, vocab = item_set
    rng = np.random.default_rng(seed)
    shuffled = np.concatenate([items, items[rng.integers(0, items.shape[0], size=items.shape[0])]])
    shuffled = shuffled[rng.permutation(shuffled.shape[0])]
    canonical = np.unique(items, axis=0)  # sorted, distinct
    reference = build_fixed_length_index(canonical, vocab)
    for variant in (items, shuffled, shuffled.astype(np.int32)):
        index = build_fixed_length_index(variant, vocab)
        for name in ("indptr", "tokens", "dense_bits", "dense_rank"):
            got, want = np.asarray(getattr(index, name)), np.asarray(getattr(reference, name))
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        assert index.replace(indptr=None, tokens=None, dense_bits=None, dense_rank=None) == reference.replace(
            indptr=None, tokens=None, dense_bits=None, dense_rank=None
        )


@SETTINGS
@given(variable_item_sets(), st.integers(0, 2**32 - 1))
def test_variable_length_order_and_duplicates_do_not_matter(item_set, seed):
    seqs, vocab, eos_id = item_set
    rng = np.random.default_rng(seed)
    shuffled = [seqs[i] for i in rng.integers(0, len(seqs), size=2 * len(seqs))] + seqs
    shuffled = [tuple(shuffled[i]) for i in rng.permutation(len(shuffled))]
    canonical = [list(s) for s in sorted(set(map(tuple, seqs)))]
    reference = build_variable_length_index(canonical, vocab, eos_id)
    index = build_variable_length_index(shuffled, vocab, eos_id)
    for name in ("indptr", "tokens", "dense_bits", "dense_rank"):
        np.testing.assert_array_equal(np.asarray(getattr(index, name)), np.asarray(getattr(reference, name)))
    assert index.level_sizes == reference.level_sizes and index.num_items == reference.num_items


WALKERS = 256


@jax.jit
def _random_walks(index, key: jax.Array) -> dict:
    """WALKERS sequences made by repeatedly picking a uniformly random allowed token, twice:
    picking among ``candidates`` and picking among ``allowed_mask``'s True tokens.

    Returns, per way, the tokens int32 [WALKERS, depth] (-1 after a row completes) and whether
    each row ended complete, bool [WALKERS].
    """
    out = {}
    for use_mask in (False, True):
        state = initial_state(index, (WALKERS,))
        tokens = []
        for depth in range(index.depth):
            key, sub = jax.random.split(key)
            done = is_complete(index, state)
            if use_mask:
                token = jax.random.categorical(sub, jnp.where(allowed_mask(index, state), 0.0, -jnp.inf))
                nxt = advance(index, state, token)
            else:
                toks, next_states, valid = candidates(index, state, depth)
                slot = jax.random.categorical(sub, jnp.where(valid, 0.0, -jnp.inf))[:, None]
                token = jnp.take_along_axis(toks, slot, axis=1)[:, 0]
                nxt = jnp.take_along_axis(next_states, slot, axis=1)[:, 0]
            tokens.append(jnp.where(done, -1, token))
            state = jnp.where(done, state, nxt)
        out["mask" if use_mask else "candidates"] = (jnp.stack(tokens, axis=1), is_complete(index, state))
    return out


@pytest.mark.parametrize("variable, skewed", [(False, True), (True, False)])
def test_random_walks_only_emit_items(variable, skewed):
    rng = np.random.default_rng(7)
    vocab = 300
    if variable:
        items = random_variable_items(rng, 3000, 7, vocab, eos_id=5, skewed=skewed)
        index = build_variable_length_index(items, vocab, eos_id=5)
    else:
        items = random_fixed_items(rng, 3000, 6, vocab, skewed=skewed)
        index = build_fixed_length_index(items, vocab)
    item_set = {tuple(int(t) for t in item) for item in items}
    seen = set()
    for way, (walks, complete) in _random_walks(index, jax.random.key(0)).items():
        assert np.asarray(complete).all(), way
        emitted = {tuple(int(t) for t in row if t >= 0) for row in np.asarray(walks)}
        assert emitted <= item_set, way
        seen |= emitted
    # Uniform picks at each node reach many different items (a walker stuck on one path fails).
    assert len(seen) >= min(len(item_set), WALKERS) // 4
