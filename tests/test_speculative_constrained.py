"""Constrained speculative decoding == constrained non-speculative decoding.

Greedy: token-identical to :func:`decoding.generate.generate` with the constraint, for a fixed-length
trie with a model draft and an EOS-terminated (variable-length) trie with prompt lookup (whose
proposals the trie may forbid: verification must reject them). Sampling: the law of whole
items equals the product of per-step masked, renormalized, processed target probabilities
(what constrained sampling draws from), checked by a G-test over every item.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from fake_models import BigramModel, HistoryModel, TokenCache, random_params
from test_acceptance import g_test_pvalue

from constraints import build_fixed_length_index, build_variable_length_index
from decoding.generate import generate
from decoding.drafts import ModelDraft, PromptLookupDraft
from decoding.samplers import Categorical, Temperature, TopK
from decoding.speculative import speculative_generate

VOCAB, BATCH, CAPACITY = 32, 8, 40
TARGET = HistoryModel()
PARAMS = random_params(VOCAB, seed=0)
RNG = np.random.default_rng(0)
PROMPT_LENGTHS = RNG.integers(1, 8, size=BATCH).astype(np.int32)
PROMPTS = RNG.integers(0, VOCAB, size=(BATCH, 8)).astype(np.int32)
FIXED_ITEMS = np.concatenate([RNG.integers(0, 4, size=(60, 3)), RNG.integers(0, VOCAB, size=(60, 3))], axis=1)
EOS = 31
VARIABLE_ITEMS = [list(RNG.integers(0, 6, size=n)) + [EOS] for n in RNG.integers(1, 8, size=80)]


def _speculative(index, draft, k, width):
    return speculative_generate(
        TARGET,
        PARAMS,
        TokenCache.empty(BATCH, CAPACITY),
        PROMPTS,
        PROMPT_LENGTHS,
        draft=draft,
        num_draft_tokens=k,
        max_new_tokens=width,
        constraint=index,
    )


def _model_draft():
    return ModelDraft(TARGET, PARAMS + random_params(VOCAB, seed=1, scale=1.0), TokenCache.empty(BATCH, CAPACITY))


@pytest.mark.parametrize("kind", ["fixed", "variable"])
def test_greedy_matches_constrained_greedy_generate(kind):
    if kind == "fixed":
        index = build_fixed_length_index(FIXED_ITEMS, VOCAB)
    else:
        index = build_variable_length_index(VARIABLE_ITEMS, VOCAB, EOS)
    reference = generate(TARGET, PARAMS, TokenCache.empty(BATCH, CAPACITY), PROMPTS, PROMPT_LENGTHS, constraint=index)
    assert np.asarray(reference.complete).all()
    width = index.depth
    # Prompt lookup proposes tokens the trie may forbid; verification must reject them.
    draft, k = (_model_draft(), 3) if kind == "fixed" else (PromptLookupDraft(ngram=1, vocab_size=VOCAB), 2)
    out = _speculative(index, draft, k, width)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(reference.tokens))
    np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(reference.lengths))
    np.testing.assert_allclose(np.asarray(out.log_probs), np.asarray(reference.log_probs), atol=1e-5)
    items = {tuple(int(t) for t in row[:n]) for row, n in zip(np.asarray(out.tokens), np.asarray(out.lengths))}
    allowed = {tuple(int(t) for t in item) for item in (FIXED_ITEMS if kind == "fixed" else VARIABLE_ITEMS)}
    assert items <= allowed


def test_sampled_items_follow_the_masked_target():
    """Bigram target over 8 tokens, items of 3 tokens, 4000 rows with prompt [1]."""
    vocab, rows, first = 8, 4000, 1
    rng = np.random.default_rng(5)
    items = np.unique(rng.integers(0, vocab, size=(40, 3)), axis=0)
    index = build_fixed_length_index(items, vocab)
    params = random_params(vocab, seed=6, scale=1.5)
    sampler = Categorical((Temperature(0.8), TopK(4)))
    out = speculative_generate(
        BigramModel(),
        params,
        TokenCache.empty(rows, 8),
        np.full((rows, 1), first, np.int32),
        np.ones(rows, np.int32),
        draft=ModelDraft(BigramModel(), params + random_params(vocab, seed=7), TokenCache.empty(rows, 8)),
        num_draft_tokens=2,
        max_new_tokens=3,
        sampler=sampler,
        key=jax.random.key(0),
        constraint=index,
        min_bucket=1,
    )
    # Exact law: at each step mask the log-softmax to the trie's children, then process.
    log_softmax = np.asarray(jax.nn.log_softmax(params, axis=-1))

    masked = np.full((len(items), 3, vocab), -np.inf, np.float32)
    for i, item in enumerate(items):
        for depth in range(3):
            children = [int(other[depth]) for other in items if tuple(other[:depth]) == tuple(item[:depth])]
            previous = first if depth == 0 else item[depth - 1]
            masked[i, depth, children] = log_softmax[previous, children]
    step_probs = np.exp(np.asarray(sampler.log_probs(masked), np.float64))  # [items, 3, vocab]
    exact = np.prod(np.take_along_axis(step_probs, items[:, :, None], axis=-1)[..., 0], axis=1)
    lookup = {tuple(item): i for i, item in enumerate(items)}
    tokens = np.asarray(out.tokens)
    counts = np.zeros(len(items))
    for row in tokens:
        counts[lookup[tuple(row)]] += 1  # a KeyError here: an item outside the trie
    assert g_test_pvalue(counts, exact) > 1e-3
