"""Constraint baselines (``scripts/baselines/``) against brute force: next-token sets,
completeness, beam outputs.

Oracles: the next tokens after a prefix enumerated from the item array (NumPy), and a plain
NumPy beam search of the bigram model using those brute-force masks. Exact methods (CPU trie,
exact PPV, the STATIC dense-mask adapter) must match them exactly, and each one run through
the library's ``beam_search`` (its dense path) must return what the STATIC ``TrieIndex``
returns through the sparse path; approximate PPV must never allow an invalid token; the hash
bitmap must never forbid a valid one (its false positives are measured).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

from baselines import (  # noqa: E402
    PrefixState,
    StaticMask,
    build_cpu_trie,
    build_hash_bitmap,
    build_ppv,
    check_items,
)
from baselines.ppv import pack_items  # noqa: E402
from fake_models import BigramModel, TokenCache, random_params  # noqa: E402

from constraints import build_fixed_length_index  # noqa: E402
from constraints.lexsort import sorted_unique_rows  # noqa: E402
from decoding.beam_search import beam_search  # noqa: E402

VOCAB = 12
DEPTH = 3
NUM_PREFIXES = 64  # states per mask call: one shape, one compile per method


def _item_sets():
    """Three small item sets with different shapes of trie (dense root, sparse, one hot path)."""
    rng = np.random.default_rng(7)
    dense = rng.integers(0, VOCAB, (60, DEPTH))
    sparse = rng.integers(0, VOCAB, (9, DEPTH))
    skewed = np.concatenate([np.tile([[5, 5]], (VOCAB, 1)), np.arange(VOCAB)[:, None]], axis=1)
    skewed = np.concatenate([skewed, skewed[:4], [[0, 11, 3]]])  # duplicates too
    return {"dense": dense, "sparse": sparse, "skewed": skewed}


ITEM_SETS = _item_sets()


def _next_tokens(items: np.ndarray, prefix: np.ndarray) -> set[int]:
    """Brute force: tokens that follow ``prefix`` in some item."""
    d = len(prefix)
    if d >= items.shape[1]:
        return set()
    rows = items[np.all(items[:, :d] == prefix, axis=1)]
    return set(rows[:, d].tolist())


def _prefixes(items: np.ndarray, depth: int, rng: np.random.Generator) -> np.ndarray:
    """int [NUM_PREFIXES, depth]: the item prefixes of that length, then random (mostly invalid) ones."""
    real = np.unique(items[:, :depth], axis=0)[: NUM_PREFIXES // 2] if depth else np.zeros((1, 0), int)
    fill = rng.integers(0, VOCAB, (NUM_PREFIXES - len(real), depth))
    return np.concatenate([real, fill]).astype(np.int32)


def _oracle_masks(items: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(prefixes), VOCAB), bool)
    for row, prefix in enumerate(prefixes):
        out[row, sorted(_next_tokens(items, prefix))] = True
    return out


@jax.jit
def _walk(method, prefixes, depth):
    """Advances fresh states by the first ``depth`` (int32 [], traced) tokens of each row of
    ``prefixes`` (int32 [P, DEPTH + 1]); returns (mask bool [P, vocab], complete bool [P])."""
    state = method.initial_state((prefixes.shape[0],))
    for position in range(prefixes.shape[1]):
        advanced = method.advance(state, prefixes[:, position])
        state = jax.tree.map(lambda new, old: jnp.where(position < depth, new, old), advanced, state)
    return method.allowed_mask(state), method.is_complete(state)


def _run(method, prefixes: np.ndarray):
    """_walk on prefixes int [P, depth] (depth <= DEPTH + 1), as NumPy."""
    padded = np.zeros((len(prefixes), DEPTH + 1), np.int32)
    padded[:, : prefixes.shape[1]] = prefixes
    mask, complete = _walk(method, jnp.asarray(padded), jnp.int32(prefixes.shape[1]))
    return np.asarray(mask), np.asarray(complete)


def _methods(items: np.ndarray) -> dict:
    return {
        "cpu_trie": build_cpu_trie(items, VOCAB),
        "ppv": build_ppv(items, VOCAB),
        "static": StaticMask(build_fixed_length_index(items, VOCAB)),
    }


@pytest.mark.parametrize("name", sorted(ITEM_SETS))
def test_exact_methods_match_brute_force(name):
    items = ITEM_SETS[name]
    item_set = set(map(tuple, items.tolist()))
    rng = np.random.default_rng(1)
    for depth in range(DEPTH + 1):
        prefixes = _prefixes(items, depth, rng)
        expected = _oracle_masks(items, prefixes)
        expected_complete = np.array([tuple(p) in item_set for p in prefixes.tolist()]) & (depth == DEPTH)
        for method_name, method in _methods(items).items():
            mask, complete = _run(method, prefixes)
            np.testing.assert_array_equal(mask, expected, err_msg=f"{method_name} depth {depth}")
            np.testing.assert_array_equal(complete, expected_complete, err_msg=method_name)


@pytest.mark.parametrize("name", sorted(ITEM_SETS))
def test_approximate_ppv_never_allows_an_invalid_token(name):
    items = ITEM_SETS[name]
    approx = build_ppv(items, VOCAB, sample_window=2)
    rng = np.random.default_rng(2)
    found = total = 0
    for depth in range(DEPTH):
        prefixes = _prefixes(items, depth, rng)
        expected = _oracle_masks(items, prefixes)
        mask = _run(approx, prefixes)[0]
        assert not np.any(mask & ~expected), f"invalid token allowed at depth {depth}"
        assert np.all(mask.any(axis=1) == expected.any(axis=1)), "a live prefix must keep a token"
        found, total = found + int(mask.sum()), total + int(expected.sum())
    recall = found / total
    # Two samples per range: a prefix with more than two children loses some (the skewed set
    # has 12 children under [5, 5]); a prefix with at most two never does.
    assert 0 < recall <= 1
    if name == "skewed":
        assert recall < 1


def test_approximate_ppv_with_a_wide_window_is_exact():
    items = ITEM_SETS["dense"]
    wide = build_ppv(items, VOCAB).approximate(len(items))
    rng = np.random.default_rng(3)
    for depth in range(DEPTH + 1):
        prefixes = _prefixes(items, depth, rng)
        mask = _run(wide, prefixes)[0]
        np.testing.assert_array_equal(mask, _oracle_masks(items, prefixes))


def test_hash_bitmap_has_no_false_negatives_and_few_false_positives():
    rng = np.random.default_rng(4)
    items = rng.integers(0, VOCAB, (200, DEPTH))
    rates = {}
    for bits_per_entry in (4, 64):
        bitmap = build_hash_bitmap(items, VOCAB, bits_per_entry=bits_per_entry, num_hashes=3)
        false_pos = negatives = 0
        for depth in range(DEPTH + 1):
            prefixes = _prefixes(items, depth, rng)
            expected = _oracle_masks(items, prefixes)
            mask, complete = _run(bitmap, prefixes)
            assert not np.any(expected & ~mask), f"false negative at depth {depth}"
            assert np.all(complete == (depth == DEPTH))
            false_pos += int((mask & ~expected).sum())
            negatives += int((~expected).sum())
        rates[bits_per_entry] = false_pos / negatives
    # Blocked Bloom filter, 3 bits per entry: about (3 * load)^3 with load = entries/bits. With 4
    # bits per entry the rate is a few percent; with 64 it is tiny. Both bounds are loose.
    assert rates[4] < 0.2, rates
    assert rates[64] < 0.01, rates
    assert rates[64] <= rates[4], rates


def test_dead_prefixes_stay_dead():
    items = ITEM_SETS["sparse"]
    absent = next(t for t in range(VOCAB) if t not in set(items[:, 0].tolist()))
    for method in (build_cpu_trie(items, VOCAB), build_ppv(items, VOCAB)):
        for depth in (1, DEPTH):  # off the trie at the first token: nothing allowed, never complete
            mask, complete = _run(method, np.array([[absent] + [items[0, 1]] * (depth - 1)]))
            assert not mask.any() and not complete.any()
        mask, complete = _run(method, items[:1])  # a real item: complete, nothing more allowed
        assert complete.all() and not mask.any()
        mask, complete = _run(method, np.concatenate([items[:1], [[0]]], axis=1))  # past its end: dead
        assert not complete.any() and not mask.any()


PROMPTS = np.array([[0], [7]], np.int32)  # two rows, one prompt token each


def _numpy_beam_search(items: np.ndarray, table: np.ndarray, first: int, beams: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference constrained beam search of the bigram model (logits after token t: ``table[t]``)
    from prompt token ``first``, with brute-force masks; ties to the lower beam * VOCAB + token."""
    log_probs = table - np.log(np.exp(table).sum(axis=-1, keepdims=True))
    seqs = [()]
    scores = np.array([0.0])
    for _ in range(items.shape[1]):
        cands = []
        for beam, (seq, score) in enumerate(zip(seqs, scores)):
            previous = seq[-1] if seq else first
            for token in sorted(_next_tokens(items, np.array(seq, int))):
                cands.append((-(score + log_probs[previous, token]), beam * VOCAB + token, seq + (token,)))
        cands.sort()
        seqs = [c[2] for c in cands[:beams]]
        scores = np.array([-c[0] for c in cands[:beams]])
    return np.array(seqs), scores


def _beam_search(constraint, params, beams):
    """The library's beam search of the bigram model from PROMPTS under ``constraint``."""
    cache = TokenCache.empty(len(PROMPTS), capacity=DEPTH + 1)
    lengths = np.ones(len(PROMPTS), np.int32)
    return beam_search(
        BigramModel(), params, cache, PROMPTS, lengths, num_beams=beams, constraint=constraint, length_penalty=0.0
    )


def test_beam_search_with_every_baseline_matches_static_and_the_numpy_reference():
    """Every exact method through beam_search's dense path returns the NumPy reference's beams,
    as the STATIC TrieIndex does through the sparse path. The hash bitmap, at 1024 bits per
    entry, has no false positive on these beams' paths, so it returns them too; sampled PPV
    (2 samples per range) returns items only, scored by the model's exact log-probs."""
    items = ITEM_SETS["dense"]
    beams = 8
    params = random_params(VOCAB, seed=5)
    table = np.asarray(params, np.float64)
    index = build_fixed_length_index(items, VOCAB)
    static = _beam_search(index, params, beams)
    for row, (first,) in enumerate(PROMPTS.tolist()):
        expected_tokens, expected_scores = _numpy_beam_search(items, table, first, beams)
        np.testing.assert_array_equal(np.asarray(static.sequences[row]), expected_tokens)
        np.testing.assert_allclose(np.asarray(static.scores[row]), expected_scores, rtol=1e-5)
    assert np.asarray(static.valid).all()
    methods = dict(_methods(items), hash_bitmap=build_hash_bitmap(items, VOCAB, bits_per_entry=1024))
    for name, method in methods.items():
        out = _beam_search(method, params, beams)
        np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(static.sequences), err_msg=name)
        np.testing.assert_allclose(np.asarray(out.scores), np.asarray(static.scores), rtol=1e-5, err_msg=name)
        np.testing.assert_array_equal(np.asarray(out.valid), np.asarray(static.valid), err_msg=name)
    sampled = _beam_search(build_ppv(items, VOCAB, sample_window=2), params, beams)
    item_set = set(map(tuple, items.tolist()))
    log_probs = table - np.log(np.exp(table).sum(axis=-1, keepdims=True))
    sequences, valid = np.asarray(sampled.sequences), np.asarray(sampled.valid)
    assert valid[:, 0].all()
    for row, beam in zip(*np.nonzero(valid)):
        path = [int(PROMPTS[row, 0])] + sequences[row, beam].tolist()
        assert tuple(path[1:]) in item_set
        expected = sum(log_probs[a, b] for a, b in zip(path, path[1:]))
        np.testing.assert_allclose(np.asarray(sampled.log_probs[row, beam]), expected, rtol=1e-5)


def test_cpu_trie_runs_through_pure_callback_inside_jit():
    items = ITEM_SETS["sparse"]
    trie = build_cpu_trie(items, VOCAB)
    calls = []
    mask_fn = trie.host.mask

    def counting_mask(prefix, length):
        calls.append(np.shape(length))
        return mask_fn(prefix, length)

    trie.host.mask = counting_mask
    state = PrefixState(prefix=jnp.asarray(items[:2]), length=jnp.array([1, 2], jnp.int32))
    mask = jax.jit(lambda t, s: t.allowed_mask(s))(trie, state)
    assert calls == [(2,)]  # the host ran once, for the whole batch
    expected = _oracle_masks(items, [items[0, :1]])[0], _oracle_masks(items, [items[1, :2]])[0]
    np.testing.assert_array_equal(np.asarray(mask), np.stack(expected))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=4, max_size=4), min_size=1, max_size=30))
def test_packed_keys_keep_the_sorted_order(rows):
    """PPV's keys of the library-sorted items are sorted and distinct, in one or two words."""
    ordered = sorted_unique_rows(np.array(rows, np.int32), 6)
    for bits, per_word in ((3, 10), (3, 2)):  # 3 bits per token, one or two words per item
        keys = pack_items(ordered, bits, per_word)
        as_tuples = [tuple(k) for k in keys.tolist()]
        assert as_tuples == sorted(as_tuples) and len(set(as_tuples)) == len(as_tuples)


@pytest.mark.parametrize(
    "items, vocab, message",
    [
        (np.zeros((0, 3), int), 4, "empty"),
        (np.zeros(3, int), 4, "2-D"),
        (np.array([[0.5, 1.0]]), 4, "integer dtype"),
        (np.array([[0, 4]]), 4, r"row 0 has token 4 .* \[0, 4\)"),
        (np.array([[0, 1], [-1, 0]]), 4, r"row 1 has token -1 .* \[0, 4\)"),
        (np.array([[0, 1]]), 0, "vocab_size"),
    ],
)
def test_bad_items_are_rejected(items, vocab, message):
    with pytest.raises(ValueError, match=message):
        check_items(items, vocab)


def test_bad_knobs_are_rejected():
    items = ITEM_SETS["sparse"]
    with pytest.raises(ValueError, match="sample_window"):
        build_ppv(items, VOCAB, sample_window=-1)
    with pytest.raises(ValueError, match="sample_window"):
        build_ppv(items, VOCAB).approximate(0)
    with pytest.raises(ValueError, match="bits_per_entry"):
        build_hash_bitmap(items, VOCAB, bits_per_entry=0)
    with pytest.raises(ValueError, match="num_hashes"):
        build_hash_bitmap(items, VOCAB, num_hashes=7)


def test_wide_candidate_rows_match_brute_force_including_the_last_row():
    """constraints.candidates on rows >= 32 wide (read as contiguous windows), up to the very last
    row of the edge array (its window is clamped at the end and shifted back), plus dead and
    complete states: tokens, next states and valid slots against brute force."""
    import constraints

    vocab = 48
    children = {0: range(5), 2: range(3, 43), 7: [1], 9: range(47, 13, -1)}  # rows 5, 40, 1, 34 wide
    items = np.array([[first, b] for first, seconds in children.items() for b in seconds], np.int32)
    index = build_fixed_length_index(items, vocab)
    width = index.max_branching[1]
    assert width >= 32  # the window path
    firsts = [0, 2, 7, 9]
    states = jax.vmap(lambda t: constraints.advance(index, jnp.int32(0), t))(jnp.array(firsts))
    states = jnp.concatenate([states, jnp.array([constraints.DEAD_STATE, index.num_states - 1], jnp.int32)])
    tokens, next_states, valid = jax.jit(lambda s: constraints.candidates(index, s, 1))(states)
    tokens, next_states, valid = map(np.asarray, (tokens, next_states, valid))
    for row, first in enumerate(firsts + [None, None]):
        expected = [] if first is None else sorted(_next_tokens(items, np.array([first])))
        assert valid[row].sum() == len(expected)
        np.testing.assert_array_equal(tokens[row, : len(expected)], expected)
        assert (tokens[row, len(expected) :] == -1).all() and (next_states[row, len(expected) :] == -1).all()
        for token, state in zip(expected, next_states[row, : len(expected)]):
            assert int(state) == int(constraints.advance(index, states[row], token))
