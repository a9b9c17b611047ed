"""Greedy speculative decoding is token-identical to greedy ``generate`` (fake models).

The target is ``HistoryModel``: its logits depend on every visible cache entry, so a cache row
that is not rolled back exactly (a rejected draft left visible) changes the output. Few
compiles: one batch-32 setup serves every draft; batches 1 and 8 are slices of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_models import BigramModel, HistoryModel, TokenCache, random_params

from decoding.drafts import ModelDraft, PromptLookupDraft
from decoding.generate import generate
from decoding.samplers import Categorical, Greedy, Temperature
from decoding.speculative import speculative_generate

VOCAB, BATCH, WIDTH, CAPACITY, EOS = 32, 32, 20, 48, 3
TARGET = HistoryModel()
TARGET_PARAMS = random_params(VOCAB, seed=0)
DRAFT_PARAMS = {
    "same": TARGET_PARAMS,  # a perfect draft: every draft is accepted
    "perturbed": TARGET_PARAMS + random_params(VOCAB, seed=1, scale=1.0),
    "random": random_params(VOCAB, seed=2),
}


def _inputs():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 10, size=BATCH).astype(np.int32)
    prompts = rng.integers(0, VOCAB, size=(BATCH, 9)).astype(np.int32)
    limits = rng.integers(1, WIDTH + 1, size=BATCH).astype(np.int32)
    limits[:4] = WIDTH
    limits[5] = 0  # a row that produces nothing
    return prompts, lengths, limits


PROMPTS, LENGTHS, LIMITS = _inputs()


@pytest.fixture(scope="module")
def reference():
    out = generate(
        TARGET,
        TARGET_PARAMS,
        TokenCache.empty(BATCH, CAPACITY),
        PROMPTS,
        LENGTHS,
        max_new_tokens=LIMITS,
        width=WIDTH,
        eos_ids=(EOS,),
    )
    ended_by_eos = np.asarray(out.lengths) < LIMITS
    assert ended_by_eos.sum() >= 3, "the EOS id should end a few rows early"
    return jax.device_get(out)


def _speculative(draft, k, rows=slice(None), **kwargs):
    batch = len(LENGTHS[rows])
    if isinstance(draft, str):
        draft = ModelDraft(TARGET, DRAFT_PARAMS[draft], TokenCache.empty(batch, CAPACITY))
    return speculative_generate(
        TARGET,
        TARGET_PARAMS,
        TokenCache.empty(batch, CAPACITY),
        PROMPTS[rows],
        LENGTHS[rows],
        draft=draft,
        num_draft_tokens=k,
        max_new_tokens=LIMITS[rows],
        width=WIDTH,
        eos_ids=(EOS,),
        **kwargs,
    )


def _assert_same_as_reference(out, reference, rows=slice(None)):
    np.testing.assert_array_equal(np.asarray(out.tokens), reference.tokens[rows])
    np.testing.assert_array_equal(np.asarray(out.lengths), reference.lengths[rows])
    np.testing.assert_allclose(np.asarray(out.log_probs), reference.log_probs[rows], atol=1e-5)
    # The target cache holds exactly what greedy decoding leaves: prompt + new - 1 tokens.
    cache_lengths = np.asarray(out.cache.lengths)
    np.testing.assert_array_equal(cache_lengths, reference.cache.lengths[rows])
    valid = np.arange(CAPACITY)[None, :] < cache_lengths[:, None]
    np.testing.assert_array_equal(
        np.where(valid, np.asarray(out.cache.tokens), -1), np.where(valid, reference.cache.tokens[rows], -1)
    )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_model_draft_matches_generate(reference, k):
    """Good, medium and random drafts share one compile per k (the params are traced)."""
    for name in DRAFT_PARAMS:
        out = _speculative(name, k)
        _assert_same_as_reference(out, reference)
        accepted = np.asarray(out.stats.accepted)
        active = accepted >= 0
        assert (active.sum(axis=1) == np.asarray(out.stats.rounds)).all()
        # Verification's counts bound what was emitted: at most accepted + 1 tokens per round.
        bound = 1 + np.where(active, accepted, 0).sum(axis=1) + np.asarray(out.stats.rounds)
        assert (np.asarray(out.lengths) <= np.maximum(bound, 0)).all()
        if name == "same":  # the draft's cache is rolled back right, so it always agrees
            assert (accepted[active] == k).all()
        if name == "random":
            assert accepted[active].mean() < 0.5


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prompt_lookup_matches_generate(reference, k):
    _assert_same_as_reference(_speculative(PromptLookupDraft(ngram=2, vocab_size=VOCAB), k), reference)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_batch_one_and_eight_match_generate(reference, k):
    for rows in (slice(0, 1), slice(8, 16)):
        _assert_same_as_reference(_speculative("perturbed", k, rows=rows), reference, rows)
        lookup = PromptLookupDraft(ngram=1 if k == 5 else 2, vocab_size=VOCAB)
        _assert_same_as_reference(_speculative(lookup, k, rows=rows), reference, rows)


def test_ngram_longer_than_the_context_never_matches(reference):
    """An n-gram that cannot fit the context buffer finds no match (the last token is proposed),
    and the output is still greedy's."""
    _assert_same_as_reference(_speculative(PromptLookupDraft(ngram=64, vocab_size=VOCAB), 3), reference)


def test_prompt_lookup_on_a_periodic_target_accepts_every_draft():
    """After t the target says cycle[t] (1 -> 2 -> 3 -> 4 -> 1); the prompt holds the cycle, so
    lookup proposes exactly the target's continuation: k + 1 tokens per round."""
    table = np.full((8, 8), -4.0, np.float32)
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 1), (0, 1), (5, 1), (6, 1), (7, 1)]:
        table[a, b] = 4.0
    k, new = 3, 13
    out = speculative_generate(
        BigramModel(),
        jnp.asarray(table),
        TokenCache.empty(1, 32),
        np.array([[1, 2, 3, 4, 1]]),
        np.array([5]),
        draft=PromptLookupDraft(ngram=2, vocab_size=8),
        num_draft_tokens=k,
        max_new_tokens=new,
    )
    assert np.asarray(out.tokens)[0].tolist() == [2, 3, 4, 1] * 3 + [2]
    accepted = np.asarray(out.stats.accepted)[0]
    assert accepted[accepted >= 0].tolist() == [3, 3, 3]  # 1 + 3 * (k + 1) = 13 tokens
    assert int(out.stats.target_calls()) == 4
    assert float(out.stats.tokens_per_call(out.lengths)[0]) == pytest.approx(13 / 4)
    assert float(out.stats.mean_accepted()[0]) == pytest.approx(3.0)


def test_prompt_lookup_proposals():
    """Most recent earlier match, periodic continuation, last token repeated without a match."""
    draft = PromptLookupDraft(ngram=2, vocab_size=10)
    prompts = jnp.array([[5, 6, 7, 8, 5, 0], [1, 2, 3, 4, 5, 0], [7, 8, 7, 8, 7, 0]])
    state = jax.jit(draft.start, static_argnums=3)(prompts, jnp.array([5, 5, 5]), jnp.array([6, 6, 8]), 10)
    # contexts: 5 6 7 8 5 6 | 1 2 3 4 5 6 | 7 8 7 8 7 8
    assert jax.jit(draft.lookup, static_argnums=1)(state, 4).tolist() == [[7, 8, 5, 6], [6, 6, 6, 6], [7, 8, 7, 8]]
    state = jax.jit(draft.commit)(state, jnp.array([[9, 9, 0], [1, 2, 0], [7, 0, 0]]), jnp.array([2, 2, 1]))
    assert state.length.tolist() == [8, 8, 7]
    assert state.context[1, :8].tolist() == [1, 2, 3, 4, 5, 6, 1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_draft_tokens": 0}, "num_draft_tokens"),
        ({"capacity": 32}, "too small"),
        ({"draft_vocab": 16}, "vocab"),
        ({"sampler": Categorical((Temperature(1.0),))}, "key"),
        ({"prompt_lengths": np.zeros(2, np.int32)}, "at least one token"),
    ],
)
def test_bad_input_raises_before_tracing(kwargs, message):
    capacity = kwargs.pop("capacity", 48)
    draft = PromptLookupDraft(ngram=2, vocab_size=kwargs.pop("draft_vocab", VOCAB))
    args = {
        "draft": draft,
        "num_draft_tokens": 3,
        "max_new_tokens": WIDTH,
        "sampler": Greedy(),
        **kwargs,
    }
    lengths = args.pop("prompt_lengths", np.array([9, 3], np.int32))
    with pytest.raises(ValueError, match=message):
        speculative_generate(TARGET, TARGET_PARAMS, TokenCache.empty(2, capacity), PROMPTS[:2], lengths, **args)
