"""Beam helpers shared by beam search and diverse beam search: flatten/unflatten beams, gather
by parent, top-k over beams x candidates, length penalty, the plain top-k selector, host-side
input checks and the sorted output.

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
import numpy as np
from flax import struct

from constraints import TrieIndex
from decoding import validation
from decoding.prefill import bucket_length, pad_prompts

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


LAYERED_API = ("depth", "max_branching", "fixed_length", "vocab_size", "initial_state", "candidates", "is_complete")
"""What the sparse beam path uses of a constraint (a fixed-length TrieIndex has all of it)."""

DENSE_API = ("depth", "fixed_length", "eos_id", "vocab_size", "initial_state", "allowed_mask", "advance", "is_complete")
"""What the dense paths (dense beam search, constrained_generate, speculative decoding) use of a
constraint: the protocol of /work/shared/DESIGN.md "Constraints as automata" (a TrieIndex and a
:class:`constraints.TokenDFA` have all of it). ``depth`` is the default output width."""


def check_constraint(index: Any, vocab_size: int, *, layered_ok: bool = False) -> None:
    """The constraint must implement :data:`DENSE_API` (a :class:`TrieIndex`, a
    :class:`constraints.TokenDFA`, ...) over the model's vocabulary (host-side); with
    ``layered_ok`` (the sparse beam path) also any fixed-length layered constraint that has
    every attribute of :data:`LAYERED_API` (e.g. :class:`constraints.ItemFilter`)."""
    dense = isinstance(index, TrieIndex) or all(hasattr(index, name) for name in DENSE_API)
    layered = layered_ok and all(hasattr(index, name) for name in LAYERED_API) and index.fixed_length
    if not dense and not layered:
        kinds = "a constraint with " + ", ".join(DENSE_API)
        if layered_ok:
            kinds += ", or a fixed-length layered constraint"
        raise ValueError(f"constraint must be {kinds} (e.g. a constraints.TrieIndex), got {type(index).__name__}")
    if index.vocab_size != vocab_size:
        raise ValueError(f"the constraint's vocab_size {index.vocab_size} differs from the model's {vocab_size}")


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
class PreparedInputs:
    """Host-checked inputs shared by :func:`beam_search` and diverse beam search."""

    prompts: jax.Array  # int32 [batch, bucket]  zero-padded to the bucket width
    prompt_lengths: jax.Array  # int32 [batch]
    eos_ids: tuple[int, ...] = struct.field(pytree_node=False)  # the tokens that end a hypothesis
    width: int = struct.field(pytree_node=False)  # output width (new tokens)


def prepare_inputs(
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    num_beams: int,
    max_new_tokens: int | None,
    eos_ids: tuple[int, ...],
    constraint: Any,
    min_bucket: int,
    sparse_ok: bool = True,
    entry: str = "beam_search",
    core: str = "",
) -> PreparedInputs:
    """Validates everything before tracing (clear errors, :func:`decoding.validation.check_call`
    first, with ``entry`` and its traceable ``core`` named) and buckets the prompt width.

    ``sparse_ok``: the caller runs a fixed-length constraint on the sparse path, so layered
    constraints other than a :class:`TrieIndex` are accepted (diverse beam search passes False).
    """
    prompts_np, lengths_np, cache_lengths = validation.check_call(entry, core, params, cache, prompts, prompt_lengths)
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    min_bucket = validation.check_int("min_bucket", min_bucket, 1, validation.INT32_MAX)
    vocab_size = validation.infer_vocab_size(model, params, cache)
    validation.check_prompt_tokens(prompts_np, lengths_np, vocab_size)
    eos_ids = validation.check_token_ids("eos_ids", eos_ids, vocab_size)
    if len(set(eos_ids)) != len(eos_ids):
        raise ValueError(f"eos_ids must be distinct, got {eos_ids}")
    if constraint is not None:
        check_constraint(constraint, vocab_size, layered_ok=sparse_ok)
        if max_new_tokens is None:
            max_new_tokens = constraint.depth
        if constraint.fixed_length:
            if eos_ids:
                raise ValueError("a fixed-length constraint has no EOS: its items are exactly depth tokens; pass eos_ids=()")
            if max_new_tokens != constraint.depth:
                raise ValueError(
                    f"a fixed-length constraint emits exactly depth={constraint.depth} tokens; "
                    f"got max_new_tokens={max_new_tokens}"
                )
        else:
            if eos_ids not in ((), (constraint.eos_id,)):
                raise ValueError(f"a variable-length constraint ends items with its eos_id {constraint.eos_id}; got eos_ids={eos_ids}")
            eos_ids = (constraint.eos_id,)
    if max_new_tokens is None:
        raise ValueError("max_new_tokens is required without a constraint")
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool):
        raise ValueError(f"max_new_tokens must be an int (the static output width), got {type(max_new_tokens).__name__}")
    limits, width = validation.check_new_tokens(max_new_tokens, None, prompts_np.shape[0])
    validation.check_capacity(
        cache_lengths, lengths_np, limits, cache.capacity, prompt_capacity=getattr(cache, "prefix_capacity", None)
    )
    bucket = bucket_length(int(lengths_np.max()), cache.capacity - int(cache_lengths.max()), min_bucket)
    return PreparedInputs(
        prompts=jnp.asarray(pad_prompts(prompts_np, lengths_np, bucket)),
        prompt_lengths=jnp.asarray(lengths_np),
        eos_ids=eos_ids,
        width=width,
    )


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


def to_output(final: dict[str, jax.Array], pad_id: jax.Array) -> BeamSearchOutput:
    """Sorts hypotheses ``[batch, beams]`` best first (stably), drops repeats of a better
    hypothesis, and blanks the invalid ones (sorted last). ``final["nonfinite"]`` (bool
    [batch], from the search core) becomes ``nonfinite``; every other entry is
    ``[batch, beams, ...]``."""
    final = dict(final)
    nonfinite = final.pop("nonfinite")
    order = jnp.argsort(-final["scores"], axis=1, stable=True)
    final = gather_beams(final, order)
    valid = first_occurrences(final["tokens"], final["lengths"], jnp.isfinite(final["scores"]))
    valid_first = jnp.argsort(~valid, axis=1, stable=True)
    final = gather_beams(final, valid_first)
    valid = jnp.take_along_axis(valid, valid_first, axis=1)
    return BeamSearchOutput(
        sequences=jnp.where(valid[..., None], final["tokens"], pad_id),
        lengths=jnp.where(valid, final["lengths"], 0),
        scores=jnp.where(valid, final["scores"], -jnp.inf),
        log_probs=jnp.where(valid, final["log_probs"], -jnp.inf),
        valid=valid,
        nonfinite=nonfinite,
    )


def per_row_alpha(length_penalty_value: Any, batch: int) -> jax.Array:
    """The length penalty exponent as float32 [batch] (a finite scalar or [batch] array)."""
    return validation.check_finite("length_penalty", length_penalty_value, batch)
