"""Beam helpers shared by beam search and diverse beam search: flatten/unflatten beams, gather
by parent, top-k over beams x candidates, length penalty, the plain top-k selector, and the
sorted output.

Layout conventions: beam state is ``[rows, beams, ...]``; the model cache holds the same beams
flattened as ``rows * beams`` cache rows, beam ``j`` of row ``r`` at cache row ``r * beams + j``.

Worked example (2 beams, 3 candidates each)::

    scores = [[[-1.0, -0.5, -9.0],      # beam 0
               [-0.7, -9.0, -0.2]]]     # beam 1
    parent, column = top_beams(scores, 2)
    parent -> [[1, 0]]; column -> [[2, 1]]      scores -0.2 (beam 1, col 2), -0.5 (beam 0, col 1)
    parent_rows(parent, 2) -> [1, 0]            cache rows to gather for the new beams
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar

import jax
import jax.numpy as jnp
from flax import struct

from decoding import validation

PyTree = TypeVar("PyTree")


def flatten_beams(x: jax.Array) -> jax.Array:
    """``[rows, beams, ...]`` -> ``[rows * beams, ...]``."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unflatten_beams(x: jax.Array, num_beams: int) -> jax.Array:
    """``[rows * beams, ...]`` -> ``[rows, beams, ...]`` (``num_beams`` static)."""
    return x.reshape((x.shape[0] // num_beams, num_beams) + x.shape[1:])


def gather_beams(tree: PyTree, parent: jax.Array) -> PyTree:
    """Takes beams by parent from every leaf ``[rows, beams, ...]`` of ``tree``.

    ``parent``: int32 [rows, new_beams]; leaf ``x`` becomes ``x[r, parent[r, j]]`` at ``[r, j]``.
    """

    def take(leaf: jax.Array) -> jax.Array:
        index = parent.reshape(parent.shape + (1,) * (leaf.ndim - 2))
        return jnp.take_along_axis(leaf, index, axis=1)

    return jax.tree.map(take, tree)


def parent_rows(
    parent: jax.Array,  # int32 [rows, new_beams]
    old_beams: int,
) -> jax.Array:  # int32 [rows * new_beams]
    """The flat cache rows (of a ``rows * old_beams`` cache) that the new beams continue."""
    base = jnp.arange(parent.shape[0], dtype=jnp.int32)[:, None] * old_beams
    return (base + parent.astype(jnp.int32)).reshape(-1)


def top_beams(
    scores: jax.Array,  # float32 [rows, beams, candidates]
    k: int,
) -> tuple[jax.Array, jax.Array]:  # int32 [rows, k], int32 [rows, k]
    """The ``k`` best (beam, candidate) pairs of each row, best first, as ``(parent, column)``.

    Ties go to the lower flat index ``beam * candidates + candidate``. ``k`` is static and must
    not exceed ``beams * candidates``.
    """
    num_candidates = scores.shape[2]
    _, flat = jax.lax.top_k(scores.reshape(scores.shape[0], -1), k)
    return (flat // num_candidates).astype(jnp.int32), (flat % num_candidates).astype(jnp.int32)


def take_candidates(
    values: jax.Array,  # [rows, beams, candidates]
    parent: jax.Array,  # int32 [rows, k]
    column: jax.Array,  # int32 [rows, k]
) -> jax.Array:  # [rows, k]
    """``values[r, parent[r, j], column[r, j]]`` for every ``(r, j)``."""
    flat = values.reshape(values.shape[0], -1)
    return jnp.take_along_axis(flat, parent * values.shape[2] + column, axis=1)


def length_penalty(
    lengths: jax.Array,  # int32 [...], each >= 1
    alpha: jax.Array,  # float32, broadcastable to lengths
) -> jax.Array:  # float32 [...]
    """The divisor ``lengths ** alpha`` of a hypothesis' summed log-probability.

    ``alpha = 0`` ranks by the raw sum; ``alpha = 1`` by the mean per-token log-probability.
    ``lengths`` counts the new tokens, a final EOS included.
    """
    return jnp.power(lengths.astype(jnp.float32), jnp.asarray(alpha, jnp.float32))


class BeamSelector(Protocol):
    """Chooses the next live beams of each loop row from dense candidate scores.

    ``num_groups`` (static) splits the beams of a batch row into groups that each occupy one
    loop row: loop rows are ``batch * num_groups``, consecutive per batch row.
    """

    num_groups: int

    def select(
        self,
        scores: jax.Array,  # float32 [rows, beams, vocab]  summed log-probs of each continuation
    ) -> tuple[jax.Array, jax.Array]:  # parent int32 [rows, beams], token int32 [rows, beams]
        ...


@struct.dataclass
class TopBeams:
    """Ordinary beam search: the best ``beams`` (beam, token) pairs by summed log-probability."""

    num_groups: ClassVar[int] = 1

    def select(self, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
        return top_beams(scores, scores.shape[1])


@struct.dataclass
class BeamSearchOutput:
    """What :func:`beam_search` returns; beams sorted best first by ``scores``."""

    sequences: jax.Array  # int32 [batch, beams, width]  new tokens, pad_id after each end
    lengths: jax.Array  # int32 [batch, beams]  new tokens, EOS included; 0 when invalid
    scores: jax.Array  # float32 [batch, beams]  log_probs / lengths ** length_penalty; -inf when invalid
    log_probs: jax.Array  # float32 [batch, beams]  summed model log-probs; -inf when invalid
    valid: jax.Array  # bool [batch, beams]  a real hypothesis (complete item / EOS / max length)
    # bool [batch]  some model call of the row's search gave non-finite logits (NaN, +inf, or
    # all -inf) for one of its beams: its hypotheses, scores and valid flags are meaningless
    # (NaN scores rank first in top-k, or leave every beam invalid); report the row as an
    # error (decoding.validation, "Non-finite policy").
    nonfinite: jax.Array


@struct.dataclass
class Hypotheses:
    """A search core's final hypotheses, not yet sorted (what :func:`to_output` takes)."""

    tokens: jax.Array  # int32 [batch, beams, width]  new tokens, pad_id after each end
    lengths: jax.Array  # int32 [batch, beams]  new tokens, EOS included
    log_probs: jax.Array  # float32 [batch, beams]  summed model log-probs; -inf for empty slots
    scores: jax.Array  # float32 [batch, beams]  log_probs / lengths ** alpha; -inf unless valid
    nonfinite: jax.Array  # bool [batch]  some model call of the row gave non-finite logits


def first_occurrences(
    tokens: jax.Array,  # int32 [batch, beams, width]
    lengths: jax.Array,  # int32 [batch, beams]
    valid: jax.Array,  # bool [batch, beams]
) -> jax.Array:  # bool [batch, beams]
    """``valid`` minus every hypothesis that repeats an earlier valid one (same length, same
    tokens up to it). Diverse beam search's groups can reach the same sequence; a top-K list
    names each item once."""
    inside = jnp.arange(tokens.shape[-1]) < lengths[..., None]
    seen = jnp.where(inside, tokens, -1)
    same = jnp.all(seen[:, :, None, :] == seen[:, None, :, :], axis=-1)
    same &= lengths[:, :, None] == lengths[:, None, :]
    beams = tokens.shape[1]
    earlier = jnp.arange(beams)[None, :] < jnp.arange(beams)[:, None]  # [i, j]: j before i
    return valid & ~jnp.any(same & earlier[None] & valid[:, None, :], axis=-1)


def to_output(final: Hypotheses, pad_id: jax.Array) -> BeamSearchOutput:
    """Sorts hypotheses ``[batch, beams]`` best first (stably), drops repeats of a better
    hypothesis, and blanks the invalid ones (sorted last); ``nonfinite`` passes through."""
    beams = (final.tokens, final.lengths, final.log_probs, final.scores)
    order = jnp.argsort(-final.scores, axis=1, stable=True)
    tokens, lengths, log_probs, scores = gather_beams(beams, order)
    valid = first_occurrences(tokens, lengths, jnp.isfinite(scores))
    valid_first = jnp.argsort(~valid, axis=1, stable=True)
    tokens, lengths, log_probs, scores = gather_beams((tokens, lengths, log_probs, scores), valid_first)
    valid = jnp.take_along_axis(valid, valid_first, axis=1)
    return BeamSearchOutput(
        sequences=jnp.where(valid[..., None], tokens, pad_id),
        lengths=jnp.where(valid, lengths, 0),
        scores=jnp.where(valid, scores, -jnp.inf),
        log_probs=jnp.where(valid, log_probs, -jnp.inf),
        valid=valid,
        nonfinite=final.nonfinite,
    )


def per_row_alpha(length_penalty_value: Any, batch: int) -> jax.Array:
    """The length penalty exponent as float32 [batch] (a finite scalar or [batch] array)."""
    return validation.check_finite("length_penalty", length_penalty_value, batch)
