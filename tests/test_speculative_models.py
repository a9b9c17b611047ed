"""Speculative decoding on the tiny Llama-style transformer from ``models/`` (real KV caches).

Greedy speculative output equals greedy ``generate`` with a draft that is the target itself
(every draft accepted: the two-token catch-up path) and with a different random model (mostly
rejected: the rollback path), then with prompt lookup. One compile per draft structure.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from decoding.drafts import ModelDraft, PromptLookupDraft
from decoding.generate import generate
from decoding.speculative import speculative_generate
from models import Decoder, init_cache, init_params, preset

CONFIG = preset("tiny")
BATCH, WIDTH, CAPACITY, K = 4, 10, 32, 3


@pytest.fixture(scope="module")
def setup():
    target = Decoder(CONFIG)
    params = init_params(CONFIG, jax.random.key(0))
    rng = np.random.default_rng(0)
    lengths = np.array([5, 1, 9, 3], np.int32)
    prompts = rng.integers(0, CONFIG.vocab_size, size=(BATCH, 9)).astype(np.int32)
    reference = generate(target, params, init_cache(CONFIG, BATCH, CAPACITY), prompts, lengths, max_new_tokens=WIDTH)
    return target, params, prompts, lengths, jax.device_get(reference)


def _check(setup, draft):
    target, params, prompts, lengths, reference = setup
    out = speculative_generate(
        target,
        params,
        init_cache(CONFIG, BATCH, CAPACITY),
        prompts,
        lengths,
        draft=draft,
        num_draft_tokens=K,
        max_new_tokens=WIDTH,
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), reference.tokens)
    np.testing.assert_allclose(np.asarray(out.log_probs), reference.log_probs, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), reference.cache.lengths)
    return out


def test_model_drafts_match_generate(setup):
    target, params = setup[0], setup[1]
    same = _check(setup, ModelDraft(target, params, init_cache(CONFIG, BATCH, CAPACITY)))
    accepted = np.asarray(same.stats.accepted)
    assert (accepted[accepted >= 0] == K).all()
    other = init_params(CONFIG, jax.random.key(1))
    _check(setup, ModelDraft(target, other, init_cache(CONFIG, BATCH, CAPACITY)))


def test_prompt_lookup_matches_generate(setup):
    _check(setup, PromptLookupDraft(ngram=2, vocab_size=CONFIG.vocab_size))
