"""Constrained decoding: beam search on the sparse (fixed-length) and dense (variable-length)
paths against brute-force ranking of every item, hypothesis properties (outputs in the set,
extra beams invalid), and constrained greedy / sampling against NumPy references."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from constraints import build_fixed_length_index, build_variable_length_index
from decoding.beam_search import beam_search
from decoding.generate import generate
from decoding.samplers import Categorical, Greedy, Temperature
from fake_models import BigramModel, HistoryModel, TokenCache, counting_params, random_params
from test_beam_search import assert_matches, ranked

CAPACITY = 32


def run_beams(model, params, prompts, lengths, index, **kwargs):
    prompts = np.asarray(prompts)
    cache = TokenCache.empty(prompts.shape[0], CAPACITY)
    return beam_search(model, params, cache, prompts, np.asarray(lengths), constraint=index, **kwargs)


def run_generate(model, params, prompts, lengths, index, **kwargs):
    prompts = np.asarray(prompts)
    cache = TokenCache.empty(prompts.shape[0], CAPACITY)
    out = generate(model, params, cache, prompts, np.asarray(lengths), constraint=index, **kwargs)
    return out, out.complete


def random_items(rng, num_items, length, vocab, skewed):
    """int [num_items, length]; skewed sets share long prefixes and reuse a few tokens."""
    if skewed:
        items = rng.choice(min(3, vocab), size=(num_items, length))
        items[: num_items // 2, : length - 1] = items[0, : length - 1]
        return items
    return rng.integers(0, vocab, size=(num_items, length))


def random_sequences(rng, num_items, max_len, vocab, eos, skewed):
    """Variable-length items (1..max_len tokens before EOS, EOS nowhere else), with duplicates."""
    tokens = [t for t in range(vocab) if t != eos][: 3 if skewed else vocab]
    seqs = []
    for _ in range(num_items):
        body = list(rng.choice(tokens, size=rng.integers(1, max_len + 1)))
        seqs.append([int(t) for t in body] + [eos])
    if skewed and len(seqs) > 1:
        seqs.append(seqs[0][:-1] + [tokens[0], eos])  # one item a prefix of another
    return seqs


def unique(seqs):
    return sorted({tuple(int(t) for t in seq) for seq in seqs})


def test_sparse_path_equals_brute_force():
    """Fixed-length items, num_beams > items: exactly every item ranked by model log-prob (one
    no-cache call scores them all), then invalid beams. Two prompts, two length penalties;
    HistoryModel reads the whole cache, so it checks the cache gather by parent beam."""
    model = HistoryModel()
    rng = np.random.default_rng(0)
    vocab = 10
    items = rng.integers(0, vocab, size=(30, 3))
    items[5:9] = items[0]  # duplicates
    index = build_fixed_length_index(items, vocab)
    params = random_params(vocab, seed=1)
    prompts = [[3, 1], [7, 0]]
    num_beams = len(unique(items)) + 3
    for alpha in (0.0, 1.0):
        out = run_beams(model, params, prompts, [2, 1], index, num_beams=num_beams, length_penalty=alpha)
        for row, prompt in enumerate(([3, 1], [7])):
            assert_matches(out, row, ranked(model, params, prompt, unique(items), alpha), width=3)


def test_dense_path_equals_brute_force():
    """Variable-length items ending in EOS, num_beams > items: every item ranked by
    log_prob / length ** alpha (EOS counted), then invalid beams."""
    model = HistoryModel()
    rng = np.random.default_rng(4)
    vocab, eos = 9, 8
    seqs = random_sequences(rng, 20, 3, vocab, eos, skewed=False) + [[2, eos], [2, 5, eos]]
    index = build_variable_length_index(seqs, vocab, eos)
    params = random_params(vocab, seed=7)
    num_beams = len(unique(seqs)) + 2
    for alpha in (0.0, 1.0):
        out = run_beams(model, params, [[1, 6]], [2], index, num_beams=num_beams, length_penalty=alpha)
        assert_matches(out, 0, ranked(model, params, [1, 6], unique(seqs), alpha), width=index.depth)


def check_in_set(out, items, num_beams):
    """Every valid output is an item; min(num_beams, items) are valid; the rest are -inf."""
    allowed = set(unique(items))
    valid = np.asarray(out.valid)
    for row in range(valid.shape[0]):
        assert valid[row].sum() == min(num_beams, len(allowed))
        assert np.all(valid[row, :-1] >= valid[row, 1:])  # valid ones first
        found = [tuple(int(t) for t in out.sequences[row, b, : out.lengths[row, b]]) for b in np.flatnonzero(valid[row])]
        assert set(found) <= allowed and len(set(found)) == len(found)
        assert np.all(np.isneginf(out.scores[row, ~valid[row]]))


@settings(max_examples=4, deadline=None)
@given(
    vocab=st.sampled_from([5, 8, 12]),
    length=st.integers(1, 4),
    num_items=st.integers(1, 40),
    skewed=st.booleans(),
    extra_beams=st.sampled_from([-3, 0, 2]),
    seed=st.integers(0, 2**16),
)
def test_property_fixed_length_outputs_in_set(vocab, length, num_items, skewed, extra_beams, seed):
    rng = np.random.default_rng(seed)
    items = random_items(rng, num_items, length, vocab, skewed)
    num_beams = max(1, len(unique(items)) + extra_beams)
    out = run_beams(HistoryModel(), random_params(vocab, seed=seed), [[1, 2], [3, 0]], [2, 1],
                    build_fixed_length_index(items, vocab), num_beams=num_beams)
    check_in_set(out, items, num_beams)
    assert np.all(out.lengths[out.valid] == length)


@settings(max_examples=4, deadline=None)
@given(
    vocab=st.sampled_from([5, 8, 12]),
    max_len=st.integers(1, 3),
    num_items=st.integers(1, 25),
    skewed=st.booleans(),
    extra_beams=st.sampled_from([-3, 0, 2]),
    seed=st.integers(0, 2**16),
)
def test_property_variable_length_outputs_in_set(vocab, max_len, num_items, skewed, extra_beams, seed):
    rng = np.random.default_rng(seed)
    eos = int(rng.integers(0, vocab))
    seqs = random_sequences(rng, num_items, max_len, vocab, eos, skewed)
    num_beams = max(1, len(unique(seqs)) + extra_beams)
    out = run_beams(HistoryModel(), random_params(vocab, seed=seed), [[1, 2], [3, 0]], [2, 1],
                    build_variable_length_index(seqs, vocab, eos), num_beams=num_beams, eos_ids=(eos,))
    check_in_set(out, seqs, num_beams)


def allowed_next(items, prefix):
    return sorted({item[len(prefix)] for item in items if item[: len(prefix)] == prefix and len(item) > len(prefix)})


def test_docstring_example_constrained_greedy():
    index = build_fixed_length_index(np.array([[2, 5], [3, 4], [3, 6]]), 8)
    out, complete = run_generate(BigramModel(), counting_params(8), [[2]], [1], index)
    np.testing.assert_array_equal(out.tokens, [[3, 4]])
    np.testing.assert_array_equal(out.lengths, [2])
    assert bool(complete[0])


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "variable"])
def test_constrained_greedy_equals_numpy_masked_argmax(fixed):
    """Each step: argmax of the model's log-probs over the allowed tokens (NumPy trie walk)."""
    rng = np.random.default_rng(3)
    vocab, eos = 11, 10
    if fixed:
        items = unique(random_items(rng, 25, 3, vocab, skewed=False))
        index = build_fixed_length_index(np.array(items), vocab)
    else:
        items = unique(random_sequences(rng, 25, 3, vocab, eos, skewed=True))
        index = build_variable_length_index([list(s) for s in items], vocab, eos)
    params = random_params(vocab, seed=9)
    prompts = np.array([[1, 2, 3], [4, 0, 0], [9, 9, 0], [0, 5, 0]])
    lengths = [3, 1, 2, 2]
    out, complete = run_generate(HistoryModel(), params, prompts, lengths, index, sampler=Greedy(), pad_id=vocab + 1)
    for row in range(len(prompts)):
        context, emitted, log_probs = list(prompts[row, : lengths[row]]), (), []
        while emitted not in set(items):
            logits = np.asarray(params, np.float64)[sum(context) % vocab]
            lp = logits - np.logaddexp.reduce(logits)
            options = allowed_next(items, emitted)
            token = options[int(np.argmax(lp[options]))]
            emitted, context = emitted + (token,), context + [token]
            log_probs.append(lp[token])
        n = len(emitted)
        assert bool(complete[row]) and int(out.lengths[row]) == n
        np.testing.assert_array_equal(out.tokens[row, :n], emitted)
        np.testing.assert_array_equal(out.tokens[row, n:], vocab + 1)
        np.testing.assert_allclose(out.log_probs[row, :n], log_probs, rtol=1e-5, atol=1e-5)


def test_constrained_sampling_is_the_per_step_renormalized_distribution():
    """G-test of 4,000 draws against prod_t p(x_t | prefix) / p(allowed | prefix): the per-step
    renormalized restriction (NOT p(item) / p(set)); every draw is an item."""
    vocab = 6
    items = [(0, 1), (0, 2), (1, 3), (4, 4), (4, 5), (4, 0)]
    index = build_fixed_length_index(np.array(items), vocab)
    params = random_params(vocab, seed=12, scale=1.0)
    n = 4000
    out, complete = run_generate(BigramModel(), params, np.full((n, 1), 3), np.ones(n, int), index,
                                 sampler=Categorical((Temperature(1.0),)), key=jax.random.key(5))
    assert np.all(complete)
    drawn = [tuple(int(t) for t in row) for row in np.asarray(out.tokens)]
    counts = np.array([drawn.count(item) for item in items])
    assert counts.sum() == n, "sampled a sequence outside the set"
    table = np.exp(np.asarray(params, np.float64))
    table /= table.sum(axis=1, keepdims=True)
    expected = []
    for item in items:
        prob, last = 1.0, 3
        for depth, token in enumerate(item):
            options = allowed_next(items, item[:depth])
            prob *= table[last, token] / table[last, options].sum()
            last = token
        expected.append(prob)
    result = stats.power_divergence(counts, n * np.array(expected), lambda_="log-likelihood")
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fixed=True, eos_ids=(3,)), "fixed-length constraint has no EOS"),
        (dict(fixed=True, max_new_tokens=3), "exactly depth"),
        (dict(fixed=False, eos_ids=(2,)), "eos_id"),
        (dict(fixed=True, vocab=9), "vocab_size"),
    ],
)
def test_rejects_inconsistent_constraint(kwargs, message):
    fixed, vocab = kwargs.pop("fixed"), kwargs.pop("vocab", 6)
    index = (build_fixed_length_index(np.array([[1, 2], [3, 4]]), vocab) if fixed
             else build_variable_length_index([[1, 5], [2, 3, 5]], vocab, 5))
    with pytest.raises(ValueError, match=message):
        run_beams(BigramModel(), counting_params(6), [[1]], [1], index, num_beams=2, **kwargs)


def test_tiny_transformer_sparse_path_equals_brute_force():
    """The tiny Llama from models/ (KV cache gathered by parent beam): every item ranked by the
    no-cache full forward's log-prob, then invalid beams."""
    from models import Decoder, forward, init_cache, init_params, preset

    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(5)
    items = unique(rng.integers(0, config.vocab_size, size=(10, 2)))
    index = build_fixed_length_index(np.array(items), config.vocab_size)
    prompt = [72, 105, 33]
    cache = init_cache(config, batch=1, capacity=32)
    out = beam_search(Decoder(config), params, cache, np.array([prompt]), np.array([3]), num_beams=12,
                      constraint=index, length_penalty=0.0)
    full = np.array([prompt + list(item) for item in items], np.int32)
    log_softmax = np.asarray(jax.nn.log_softmax(forward(config, params, full), axis=-1), np.float64)
    positions = np.arange(len(prompt) - 1, full.shape[1] - 1)
    scores = [float(np.sum(log_softmax[i, positions, full[i, len(prompt):]])) for i in range(len(items))]
    expected = sorted(((s, s, item) for s, item in zip(scores, items)), key=lambda h: -h[0])
    assert_matches(out, 0, expected, width=2)
