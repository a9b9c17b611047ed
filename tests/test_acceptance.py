"""The acceptance rules of speculative decoding against exact probabilities and NumPy oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.acceptance import (
    Verdict,
    acceptance_flags,
    emitted_tokens,
    greedy_accept,
    rejection_accept,
    residual_log_probs,
    sample_rows,
)


def g_test_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """G-test of observed ``counts`` against the exact cell probabilities ``probs``.

    Cells of probability 0 must be empty (asserted): they are impossible outcomes.
    """
    counts, probs = counts.ravel().astype(np.float64), probs.ravel().astype(np.float64)
    assert counts[probs == 0].sum() == 0, "an outcome of probability 0 occurred"
    live = probs > 0
    expected = probs[live] / probs[live].sum() * counts.sum()
    observed = counts[live]
    nonzero = observed > 0
    g = 2.0 * np.sum(observed[nonzero] * np.log(observed[nonzero] / expected[nonzero]))
    dof = int(live.sum()) - 1
    return float(jax.scipy.special.gammaincc(dof / 2.0, g / 2.0)) if dof > 0 else 1.0


_greedy = jax.jit(greedy_accept)
_rejection = jax.jit(rejection_accept)
_sample = jax.jit(sample_rows)


def _log(p: np.ndarray) -> jnp.ndarray:
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(p), jnp.float32)


def test_greedy_accept_worked_example():
    draft = jnp.array([[7, 8, 4]])
    logits = jax.nn.one_hot(jnp.array([[7, 8, 9, 10]]), 16) * 5.0
    verdict = greedy_accept(draft, logits)
    assert verdict.num_accepted.tolist() == [2]
    assert verdict.next_token.tolist() == [9]
    assert emitted_tokens(draft, verdict).tolist() == [[7, 8, 9, 0]]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 5))
def test_greedy_accept_matches_a_python_loop(seed, k):
    rng = np.random.default_rng(seed)
    batch, vocab = 6, 4  # a small vocabulary makes agreement (and ties) frequent
    logits = rng.integers(0, 3, size=(batch, k + 1, vocab)).astype(np.float32)
    choice = logits.argmax(-1)
    draft = np.where(rng.random((batch, k)) < 0.7, choice[:, :k], rng.integers(0, vocab, (batch, k)))
    verdict = _greedy(jnp.asarray(draft), jnp.asarray(logits))
    emitted = np.asarray(emitted_tokens(jnp.asarray(draft), verdict))
    for b in range(batch):
        n = 0
        while n < k and draft[b, n] == choice[b, n]:
            n += 1
        assert int(verdict.num_accepted[b]) == n
        assert int(verdict.next_token[b]) == choice[b, n]
        expected = list(draft[b, :n]) + [choice[b, n]] + [0] * (k - n)
        assert emitted[b].tolist() == expected


def test_acceptance_flags_threshold_is_min_one_p_over_q():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    q = np.array([0.25, 0.6, 0.1, 0.05])
    draft = jnp.array([[0], [1], [1], [2], [3], [3]])
    # token 0: ratio 2 (always); token 1: ratio 0.5; token 2: ratio 2; token 3: p = 0 (never).
    uniforms = jnp.array([[0.999], [0.49], [0.51], [0.999], [0.0], [0.5]], jnp.float32)
    target = jnp.broadcast_to(_log(p), (6, 2, 4))
    drafts_q = jnp.broadcast_to(_log(q), (6, 1, 4))
    flags = acceptance_flags(uniforms, draft, drafts_q, target)
    assert flags[:, 0].tolist() == [True, True, False, True, False, False]


def test_residual_log_probs_matches_numpy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=5)
    q = rng.dirichlet(np.ones(7), size=5)
    q[0] = p[0]  # equal rows fall back to p
    q[1] = np.eye(7)[2]  # one-hot draft: p without token 2
    got = np.exp(np.asarray(residual_log_probs(_log(p), _log(q))))
    expected = np.maximum(p - q, 0.0)
    expected[0] = p[0]
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[1, 2] == 0.0


def test_sample_rows_is_per_row_and_follows_the_distribution():
    probs = np.array([0.1, 0.0, 0.6, 0.3])
    keys = jax.random.split(jax.random.key(3), 20000)
    tokens = np.asarray(_sample(keys, jnp.broadcast_to(_log(probs), (20000, 4))))
    assert g_test_pvalue(np.bincount(tokens, minlength=4), probs) > 1e-3
    # A row's draw depends on its own key only.
    again = sample_rows(keys[5:9], jnp.broadcast_to(_log(probs), (4, 4)))
    np.testing.assert_array_equal(np.asarray(again), tokens[5:9])


CASES = {
    "generic": (np.array([0.1, 0.4, 0.3, 0.2, 0.0]), np.array([0.3, 0.1, 0.2, 0.1, 0.3])),
    "equal": (np.array([0.1, 0.4, 0.3, 0.2, 0.0]), np.array([0.1, 0.4, 0.3, 0.2, 0.0])),
    "disjoint": (np.array([0.5, 0.5, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.2, 0.3, 0.5])),
    "one_hot_draft": (np.array([0.1, 0.4, 0.3, 0.2, 0.0]), np.array([0.0, 0.0, 0.0, 1.0, 0.0])),
    "top_k_target": (np.array([0.0, 0.6, 0.0, 0.4, 0.0]), np.array([0.2, 0.2, 0.2, 0.2, 0.2])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejection_accept_emits_the_target_distribution(case):
    """k = 2, batch 40000. The first emitted token follows p0 exactly, acceptance happens with
    probability sum(min(p0, q0)), and given that d_1 was accepted the second emitted token
    follows p1[d_1] (a target that depends on d_1): a G-test on the joint of the pair."""
    p0, q0 = CASES[case]
    vocab, batch, k = p0.size, 40000, 2
    rng = np.random.default_rng(11)
    p1 = rng.dirichlet(np.ones(vocab), size=vocab)  # p1[x]: the target after draft token x
    p1[:, 4] = 0.0  # token 4 impossible at the second position
    p1 /= p1.sum(-1, keepdims=True)
    q1 = rng.dirichlet(np.ones(vocab))
    d1 = rng.choice(vocab, size=batch, p=q0)
    d2 = rng.choice(vocab, size=batch, p=q1)
    target = jnp.stack([jnp.broadcast_to(_log(p0), (batch, vocab)), _log(p1)[d1], _log(p1)[d1]], axis=1)
    draft_q = jnp.broadcast_to(jnp.stack([_log(q0), _log(q1)]), (batch, k, vocab))
    draft = jnp.asarray(np.stack([d1, d2], axis=1), jnp.int32)
    verdict = _rejection(jax.random.split(jax.random.key(0), batch), draft, draft_q, target)
    emitted = np.asarray(emitted_tokens(draft, verdict))
    n = np.asarray(verdict.num_accepted)

    assert g_test_pvalue(np.bincount(emitted[:, 0], minlength=vocab), p0) > 1e-3
    accept_rate = np.minimum(p0, q0).sum()
    assert abs((n >= 1).mean() - accept_rate) < 4.5 * np.sqrt(accept_rate * (1 - accept_rate) / batch) + 1e-9
    if case == "equal":
        assert (n >= 1).all()  # p1[d1] and q1 differ, so the second draft may fail
    if case == "disjoint":
        assert (n == 0).all()
    if accept_rate > 0:
        kept = n >= 1
        pairs = np.zeros((vocab, vocab))
        np.add.at(pairs, (emitted[kept, 0], emitted[kept, 1]), 1)
        joint = np.minimum(p0, q0)[:, None] * p1
        assert g_test_pvalue(pairs, joint) > 1e-3


def test_rejection_accept_after_full_acceptance_samples_a_bonus_from_p():
    """The draft equals the target at both positions: everything is accepted and the bonus
    token follows the last target distribution."""
    vocab, batch = 5, 40000
    p0, p1 = np.eye(vocab)[1], np.eye(vocab)[3]
    bonus = np.array([0.5, 0.0, 0.25, 0.25, 0.0])
    target = jnp.broadcast_to(jnp.stack([_log(p0), _log(p1), _log(bonus)]), (batch, 3, vocab))
    draft = jnp.broadcast_to(jnp.array([1, 3], jnp.int32), (batch, 2))
    verdict = _rejection(jax.random.split(jax.random.key(1), batch), draft, target[:, :2], target)
    assert isinstance(verdict, Verdict)
    assert np.asarray(verdict.num_accepted).tolist() == [2] * batch
    assert g_test_pvalue(np.bincount(np.asarray(verdict.next_token), minlength=vocab), bonus) > 1e-3
