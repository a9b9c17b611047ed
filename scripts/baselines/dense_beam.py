"""One small jitted constrained beam loop over the mask interface (the benchmark's harness).

Every mask-based method (the baselines, and STATIC through
:class:`~baselines.static_adapter.StaticMask`) runs through this same loop, so
their costs compare fairly; ``constraint=None`` is the unconstrained loop. Each step scores
``beams x vocab`` continuations (the DENSE path: log-softmax, mask, top-k), gathers the
constraint state by parent beam and advances it.

The logits come from ``logits_fn(params, step, tokens)`` (float32 [batch, beams, vocab]), so a
cheap stand-in for a model (a fixed random function of (step, beam)) isolates the constraint's
cost.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class BeamCarry:
    """The loop carry."""

    scores: jax.Array  # float32 [batch, beams]   summed log-probs; -inf for beams with no valid path
    tokens: jax.Array  # int32 [batch, beams, steps]   tokens chosen so far (0 beyond the step)
    state: Any  # constraint state pytree, every leaf [batch, beams, ...]; None unconstrained


@struct.dataclass
class BeamResult:
    """The final beams, best first."""

    tokens: jax.Array  # int32 [batch, beams, steps]
    scores: jax.Array  # float32 [batch, beams]
    complete: jax.Array  # bool [batch, beams]   finite score and the constraint says complete


def _take_beams(tree: Any, parent: jax.Array) -> Any:
    """Leaves [batch, beams, ...] reordered by parent (int32 [batch, beams])."""
    rows = jnp.arange(parent.shape[0])[:, None]
    return jax.tree.map(lambda leaf: leaf[rows, parent], tree)


@functools.partial(jax.jit, static_argnames=("logits_fn", "batch", "beams", "steps"))
def dense_beam_search(
    logits_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    constraint: Any,
    *,
    batch: int,
    beams: int,
    steps: int,
) -> BeamResult:
    """Beam search of ``steps`` tokens under ``constraint``'s masks (or none).

    Args:
      logits_fn: ``(params, step int32 [], tokens int32 [batch, beams, steps]) -> float32
        [batch, beams, vocab]``; hashable. Static.
      params: whatever ``logits_fn`` reads. Traced.
      constraint: an object with the mask interface (a pytree: its arrays traced, its metadata
        static), or None for the unconstrained loop.
      batch, beams, steps: static sizes. Each batch row starts from one live beam.
    """
    scores = jnp.full((batch, beams), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    state = None if constraint is None else constraint.initial_state((batch, beams))
    carry = BeamCarry(scores=scores, tokens=jnp.zeros((batch, beams, steps), jnp.int32), state=state)

    def step(t: jax.Array, carry: BeamCarry) -> BeamCarry:
        log_probs = jax.nn.log_softmax(logits_fn(params, t, carry.tokens).astype(jnp.float32), axis=-1)
        if constraint is not None:
            log_probs = jnp.where(constraint.allowed_mask(carry.state), log_probs, -jnp.inf)
        vocab = log_probs.shape[-1]
        candidates = (carry.scores[..., None] + log_probs).reshape(batch, beams * vocab)
        new_scores, flat = jax.lax.top_k(candidates, beams)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        tokens = _take_beams(carry.tokens, parent).at[:, :, t].set(token)
        state = carry.state
        if constraint is not None:
            state = constraint.advance(_take_beams(state, parent), token)
        return BeamCarry(scores=new_scores, tokens=tokens, state=state)

    carry = jax.lax.fori_loop(0, steps, step, carry)
    complete = jnp.isfinite(carry.scores)
    if constraint is not None:
        complete = complete & constraint.is_complete(carry.state)
    return BeamResult(tokens=carry.tokens, scores=carry.scores, complete=complete)
