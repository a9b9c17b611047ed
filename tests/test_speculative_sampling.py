"""Sampled speculative decoding follows the target's processed distribution exactly.

4000 rows share one prompt; a bigram target makes the exact law of the first three emitted
tokens a product of processed next-token tables, so a G-test checks the joint of the triple
(the first token comes from the prefill, the next two from one or two verification rounds).
Adversarial draft/target pairs: equal, disjoint supports, one-hot (prompt lookup), top-p.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from fake_models import BigramModel, TokenCache, random_params
from test_acceptance import g_test_pvalue

from decoding.drafts import ModelDraft, PromptLookupDraft
from decoding.samplers import Categorical, Temperature, TopK, TopP
from decoding.speculative import speculative_generate

VOCAB, ROWS, K, NEW, FIRST = 8, 4000, 2, 3, 2
TARGET = BigramModel()
PARAMS = random_params(VOCAB, seed=3, scale=1.5)
TOP_K = Categorical((Temperature(0.9), TopK(3)))
TOP_P = Categorical((TopP(0.8),))


def _run(draft, sampler, seed=0):
    return speculative_generate(
        TARGET,
        PARAMS,
        TokenCache.empty(ROWS, 8),
        np.full((ROWS, 1), FIRST, np.int32),
        np.ones(ROWS, np.int32),
        draft=draft,
        num_draft_tokens=K,
        max_new_tokens=NEW,
        sampler=sampler,
        key=jax.random.key(seed),
        min_bucket=1,
    )


def _model_draft(params):
    return ModelDraft(BigramModel(), params, TokenCache.empty(ROWS, 8))


def _assert_triples_follow_target(out, sampler):
    table = np.exp(np.asarray(sampler.log_probs(PARAMS), np.float64))  # processed p(next | token)
    exact = table[FIRST][:, None, None] * table[:, :, None] * table[None, :, :]
    tokens = np.asarray(out.tokens)
    assert (np.asarray(out.lengths) == NEW).all()
    counts = np.zeros((VOCAB,) * 3)
    np.add.at(counts, (tokens[:, 0], tokens[:, 1], tokens[:, 2]), 1)
    assert g_test_pvalue(counts, exact) > 1e-3


@pytest.fixture(scope="module")
def equal_draft_out():
    return _run(_model_draft(PARAMS), TOP_K)


def test_equal_draft_is_always_accepted(equal_draft_out):
    _assert_triples_follow_target(equal_draft_out, TOP_K)
    assert (np.asarray(equal_draft_out.stats.accepted)[:, 0] == K).all()
    assert (np.asarray(equal_draft_out.stats.rounds) == 1).all()


def test_same_key_same_tokens(equal_draft_out):
    again = _run(_model_draft(PARAMS), TOP_K)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(equal_draft_out.tokens))
    other = _run(_model_draft(PARAMS), TOP_K, seed=1)
    assert not np.array_equal(np.asarray(other.tokens), np.asarray(equal_draft_out.tokens))


def test_disjoint_draft_is_never_accepted():
    """The draft's top 3 are the target's bottom 3: every draft is rejected and every token
    comes from the residual, which is then p itself."""
    out = _run(_model_draft(-PARAMS), TOP_K)
    _assert_triples_follow_target(out, TOP_K)
    accepted = np.asarray(out.stats.accepted)
    assert (accepted[accepted >= 0] == 0).all()


def test_one_hot_lookup_draft():
    _assert_triples_follow_target(_run(PromptLookupDraft(ngram=1, vocab_size=VOCAB), TOP_K), TOP_K)


def test_top_p_with_a_perturbed_draft():
    draft = _model_draft(PARAMS + random_params(VOCAB, seed=4, scale=1.0))
    out = _run(draft, TOP_P)
    _assert_triples_follow_target(out, TOP_P)
    accepted = np.asarray(out.stats.accepted)
    assert 0 < accepted[accepted >= 0].mean() < K  # some, not all, drafts survive


def test_log_probs_are_the_target_log_softmax(equal_draft_out):
    table = np.asarray(jax.nn.log_softmax(PARAMS, axis=-1))
    tokens = np.asarray(equal_draft_out.tokens)
    previous = np.concatenate([np.full((ROWS, 1), FIRST), tokens[:, :-1]], axis=1)
    np.testing.assert_allclose(np.asarray(equal_draft_out.log_probs), table[previous, tokens], atol=1e-5)
