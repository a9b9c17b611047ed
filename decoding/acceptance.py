"""Acceptance rules of speculative decoding: pure functions, vectorized over the batch.

A draft proposed ``k`` tokens ``d_1 .. d_k`` per row; the target scored the ``k + 1`` positions
that follow the last emitted token, so ``target[:, j]`` is the target's distribution for the
token after ``d_j`` (``d_0`` being the last emitted token). A rule returns, per row, how many
drafts it keeps (``num_accepted`` in ``0 .. k``) and one more token chosen from the target
(``next_token``); the row emits ``d_1 .. d_n, next_token``.

* :func:`greedy_accept`: keep the longest prefix that equals the target's argmax, then the
  target's argmax. The output is token-identical to greedy decoding of the target.
* :func:`rejection_accept` (Leviathan et al. 2023, Chen et al. 2023): keep ``d_i`` with
  probability ``min(1, p(d_i) / q(d_i))``; at the first rejection sample from
  ``max(0, p - q)`` renormalized; after accepting all ``k`` sample a bonus token from ``p``.
  The emitted tokens then follow ``p`` exactly, whatever ``q`` is. ``p`` and ``q`` are the
  processed distributions (``sampler.log_probs``) actually sampled from.

Worked example (greedy, k = 3)::

    draft_tokens        = [[7, 8, 4]]
    argmax of target    = [[7, 8, 9, 10]]   # target agrees on 7 and 8, wants 9 instead of 4
    greedy_accept(...)  -> num_accepted [2], next_token [9]     # the row emits 7 8 9

Randomness is drawn per row from a per-row key, so a row's outcome does not depend on how
the batch is split across devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from decoding.samplers import sample_rows

NEG_INF = -jnp.inf


@struct.dataclass
class Verdict:
    """What one verification keeps of each row's draft."""

    num_accepted: jax.Array  # int32 [batch]   drafts kept, 0 .. k
    next_token: jax.Array  # int32 [batch]     the target's token emitted after the kept drafts


def leading_true(flags: jax.Array) -> jax.Array:  # bool [batch, k] -> int32 [batch]
    """The number of leading True entries of each row: the index of its first False (one
    reduction, no cumulative product)."""
    k = flags.shape[-1]
    return jnp.min(jnp.where(flags, k, jnp.arange(k, dtype=jnp.int32)), axis=-1, initial=k).astype(jnp.int32)


def greedy_accept(
    draft_tokens: jax.Array,  # int32 [batch, k]
    target_logits: jax.Array,  # float32 [batch, k + 1, vocab]
) -> Verdict:
    """Longest prefix of the draft equal to the target's argmax, then the target's argmax.

    Ties go to the lowest token id, as in :class:`decoding.samplers.Greedy`. All traced.
    """
    choice = jnp.argmax(target_logits, axis=-1).astype(jnp.int32)  # [batch, k + 1]
    k = draft_tokens.shape[1]
    num_accepted = leading_true(draft_tokens == choice[:, :k])
    next_token = jnp.take_along_axis(choice, num_accepted[:, None], axis=1)[:, 0]
    return Verdict(num_accepted=num_accepted, next_token=next_token)


def acceptance_flags(
    uniforms: jax.Array,  # float32 [batch, k] in [0, 1)
    draft_tokens: jax.Array,  # int32 [batch, k]
    draft_log_probs: jax.Array,  # float32 [batch, k, vocab]
    target_log_probs: jax.Array,  # float32 [batch, k + 1, vocab] (only the first k are read)
) -> jax.Array:  # bool [batch, k]
    """Whether each draft passes its test ``u < p(d) / q(d)``, i.e. with probability
    ``min(1, p(d) / q(d))`` when ``u`` is uniform on [0, 1). A token outside the target's
    support (``p = 0``) never passes. Compared in log space, so tiny probabilities keep their
    precision."""
    k = draft_tokens.shape[1]
    index = draft_tokens[:, :, None]
    log_p = jnp.take_along_axis(target_log_probs[:, :k], index, axis=-1)[..., 0]
    log_q = jnp.take_along_axis(draft_log_probs, index, axis=-1)[..., 0]
    return (log_p > NEG_INF) & (jnp.log(uniforms) + log_q < log_p)


def residual_log_probs(
    target_log_probs: jax.Array,  # float32 [batch, vocab]
    draft_log_probs: jax.Array,  # float32 [batch, vocab]
) -> jax.Array:  # float32 [batch, vocab]
    """log of ``max(0, p - q)`` renormalized: what to sample after a rejection.

    Where ``p - q`` has no positive mass (``p == q`` up to rounding, when a rejection has
    probability zero anyway) the row falls back to ``p``.
    """
    residual = jnp.maximum(jnp.exp(target_log_probs) - jnp.exp(draft_log_probs), 0.0)
    total = jnp.sum(residual, axis=-1, keepdims=True)
    log_residual = jnp.where(residual > 0, jnp.log(jnp.where(residual > 0, residual, 1.0)), NEG_INF)
    log_residual = log_residual - jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(total > 0, log_residual, target_log_probs)


def rejection_accept(
    keys: jax.Array,  # key [batch], one per row
    draft_tokens: jax.Array,  # int32 [batch, k]
    draft_log_probs: jax.Array,  # float32 [batch, k, vocab]  the draft's processed q
    target_log_probs: jax.Array,  # float32 [batch, k + 1, vocab]  the target's processed p
) -> Verdict:
    """Leviathan/Chen speculative sampling: the emitted tokens follow ``p`` exactly.

    ``draft_tokens[:, i]`` must have been drawn from ``exp(draft_log_probs[:, i])`` (a one-hot
    ``q`` for a deterministic draft). All traced.
    """
    batch, k = draft_tokens.shape
    split = jax.vmap(lambda key: jax.random.split(key, 2))(keys)  # key [batch, 2]
    uniforms = jax.vmap(lambda key: jax.random.uniform(key, (k,), jnp.float32))(split[:, 0])
    flags = acceptance_flags(uniforms, draft_tokens, draft_log_probs, target_log_probs)
    num_accepted = leading_true(flags)
    # Position n: the residual of a rejection, or p itself after all k were accepted (q := 0).
    rows = jnp.arange(batch)
    target_at = target_log_probs[rows, num_accepted]
    padded_q = jnp.concatenate([draft_log_probs, jnp.full_like(draft_log_probs[:, :1], NEG_INF)], axis=1)
    draft_at = padded_q[rows, num_accepted]
    next_token = sample_rows(split[:, 1], residual_log_probs(target_at, draft_at))
    return Verdict(num_accepted=num_accepted, next_token=next_token)


def emitted_tokens(
    draft_tokens: jax.Array,  # int32 [batch, k]
    verdict: Verdict,
) -> jax.Array:  # int32 [batch, k + 1]
    """The tokens a row emits this round, ``d_1 .. d_n, next_token``, then zeros (padding)."""
    k = draft_tokens.shape[1]
    slots = jnp.arange(k + 1)[None, :]
    padded = jnp.concatenate([draft_tokens, jnp.zeros_like(draft_tokens[:, :1])], axis=1)
    n = verdict.num_accepted[:, None]
    return jnp.where(slots < n, padded, jnp.where(slots == n, verdict.next_token[:, None], 0)).astype(jnp.int32)


def token_log_probs(
    logits: jax.Array,  # float32 [..., vocab]
    tokens: jax.Array,  # int32 [...]
) -> jax.Array:  # float32 [...]
    """The model's (unprocessed) log_softmax at ``tokens``: what the outputs report. Computed as
    ``jax.nn.log_softmax`` does (shift by the max, subtract the log-sum-exp), but the subtraction
    runs only at the chosen tokens, not over the whole vocabulary."""
    logits = logits.astype(jnp.float32)
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    log_total = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
    return jnp.take_along_axis(shifted, tokens[..., None], axis=-1)[..., 0] - log_total
