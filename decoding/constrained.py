"""Constraints applied at a decode step, and the sparse beam path.

Three ways a constraint (:mod:`constraints.protocol`) restricts a step:

* :func:`restrict` (greedy / sampled generation, speculative decoding): the logits, ``-inf``
  where the automaton's state does not allow the token; the sampler renormalizes;
* :func:`mask_log_probs` (beam search's dense path): the same on log-probabilities, which
  beam search ranks unrenormalized;
* the SPARSE path, :func:`sparse_candidates`: the ``K = max_branching[depth]`` allowed tokens
  of each beam's state of a layered (fixed-length) constraint and the model's log-probabilities
  at just those tokens, so beam search ranks ``beams x K`` candidates instead of
  ``beams x vocab``. :func:`sparse_beam_search` is that path's core of
  :func:`decoding.beam_search.beam_search`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from constraints import DEAD_STATE
from decoding import validation
from decoding.beam_helpers import (
    Hypotheses,
    flatten_beams,
    gather_beams,
    length_penalty,
    parent_rows,
    take_candidates,
    top_beams,
    unflatten_beams,
)
from decoding.cache_rows import gather_rows
from decoding.prefill import prefill

NEG_INF = -jnp.inf


def sparse_candidates(
    index: Any,  # a TrieIndex, or a layered constraint with the same candidates() method
    states: jax.Array,  # int32 [...]
    log_probs: jax.Array,  # float32 [..., vocab]
    depth: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # float32 [..., K], int32 [..., K], int32 [..., K]
    """The allowed next tokens of each state and the model's log-probabilities at them.

    ``depth`` (static) is how many tokens the states are deep; ``K = index.max_branching[depth]``.
    Returns ``(scores, tokens, next_states)``: ``scores`` is ``log_probs`` at each candidate
    token, ``-inf`` for padding slots (a state with fewer than K children, or DEAD_STATE);
    padding slots hold token 0 and next state DEAD_STATE.
    """
    tokens, next_states, valid = index.candidates(states, depth)
    tokens = jnp.where(valid, tokens, 0).astype(jnp.int32)
    scores = jnp.take_along_axis(log_probs, tokens, axis=-1)
    return (
        jnp.where(valid, scores, NEG_INF),
        tokens,
        jnp.where(valid, next_states, DEAD_STATE).astype(jnp.int32),
    )


def mask_log_probs(
    constraint: Any,
    states: Any,  # the constraint's state pytree, leaves [...]
    log_probs: jax.Array,  # float32 [..., vocab]
) -> jax.Array:  # float32 [..., vocab]
    """``log_probs`` where the automaton allows the token, ``-inf`` elsewhere (not
    renormalized): what beam search ranks."""
    return jnp.where(constraint.allowed_mask(states), log_probs, NEG_INF)


def restrict(
    constraint: Any,
    states: Any,  # the constraint's state pytree, leaves [...]
    logits: jax.Array,  # float32 [..., vocab]
) -> jax.Array:  # float32 [..., vocab]
    """What a sampler reads: the logits, ``-inf`` where the automaton does not allow the token
    (the sampler's softmax renormalizes over the allowed ones). A state that allows nothing
    (dead or complete: its row emits nothing more) is left unmasked so that no NaN appears.
    Without a constraint (:class:`constraints.protocol.Unconstrained`) the mask is a constant
    all-True ``[..., 1]`` and XLA folds the whole function away."""
    mask = constraint.allowed_mask(states)
    mask = mask | ~jnp.any(mask, axis=-1, keepdims=True)
    return jnp.where(mask, logits, NEG_INF)


def _pad_candidates(
    scores: jax.Array,  # float32 [batch, beams, K]
    tokens: jax.Array,  # int32 [batch, beams, K]
    states: jax.Array,  # int32 [batch, beams, K]
    at_least: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # the same, [batch, beams, K'] with beams * K' >= at_least
    """Pads the candidate axis with -inf slots (token 0, DEAD_STATE) so top-k can take ``at_least``."""
    missing = -(-at_least // scores.shape[1]) - scores.shape[2]
    if missing <= 0:
        return scores, tokens, states
    pad = ((0, 0), (0, 0), (0, missing))
    return (
        jnp.pad(scores, pad, constant_values=NEG_INF),
        jnp.pad(tokens, pad),
        jnp.pad(states, pad, constant_values=DEAD_STATE),
    )


def sparse_beam_search(
    model: Any,
    params: Any,
    cache: Any,
    prompts: jax.Array,  # int32 [batch, bucket]
    prompt_lengths: jax.Array,  # int32 [batch]
    index: Any,
    alpha: jax.Array,  # float32 [batch]
    pad_id: jax.Array,  # int32 []
    num_beams: int,
) -> Hypotheses:
    """Beam search over a fixed-length index on the SPARSE path (traceable; ``model`` and
    ``num_beams`` static, the rest traced).

    ``index`` is a fixed-length :class:`constraints.TrieIndex` or any layered constraint with
    its ``depth``, ``max_branching`` and ``initial_state`` / ``candidates`` / ``is_complete``
    methods (e.g. :class:`constraints.ItemFilter`, whose per-row arrays lead with ``batch``).

    ``index.depth`` steps unrolled in Python (``K = index.max_branching[d]`` differs per
    depth); each ranks ``beams x K`` candidates by summed model log-prob (depth 0: the root's
    ``K`` only, and the prefilled cache rows are repeated by the first gather). Returns the final
    beams as :class:`decoding.beam_helpers.Hypotheses` (``scores = log_probs / depth ** alpha``,
    -inf unless a complete item; ``nonfinite``: some model call of the row gave non-finite
    logits, any depth, any beam, so its beams are meaningless), which
    :func:`decoding.beam_helpers.to_output` sorts into the output.
    """
    batch = prompts.shape[0]
    first_logits, cache = prefill(model, params, cache, prompts, prompt_lengths)
    # Depth 0 starts from one beam per row (the root): K_0 candidates, not beams x K_0.
    log_probs = jax.nn.log_softmax(first_logits, axis=-1)[:, None, :]
    nonfinite = jnp.zeros((batch,), bool)
    live = jnp.zeros((batch, 1), jnp.float32)
    states = index.initial_state((batch, 1))
    tokens = jnp.full((batch, 1, index.depth), pad_id, jnp.int32)
    for depth in range(index.depth):
        if depth > 0:
            step_tokens = flatten_beams(tokens[:, :, depth - 1])[:, None]
            logits, cache = model(params, step_tokens, cache, jnp.ones((batch * num_beams,), jnp.int32))
            log_probs = unflatten_beams(jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), num_beams)
        nonfinite = nonfinite | jnp.any(validation.nonfinite_logits(log_probs), axis=1)
        scores, cand_tokens, cand_states = _pad_candidates(*sparse_candidates(index, states, log_probs, depth), num_beams)
        scores = live[..., None] + scores
        parent, column = top_beams(scores, num_beams)
        live = take_candidates(scores, parent, column)
        states = take_candidates(cand_states, parent, column)
        tokens = gather_beams(tokens, parent).at[:, :, depth].set(take_candidates(cand_tokens, parent, column))
        if depth + 1 < index.depth:
            cache = gather_rows(cache, parent_rows(parent, 1 if depth == 0 else num_beams))
    lengths = jnp.full((batch, num_beams), index.depth, jnp.int32)
    complete = jnp.isfinite(live) & index.is_complete(states)
    return Hypotheses(
        tokens=tokens,
        lengths=lengths,
        log_probs=live,
        scores=jnp.where(complete, live / length_penalty(lengths, alpha[:, None]), -jnp.inf),
        nonfinite=nonfinite,
    )
