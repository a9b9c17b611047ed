"""One input preparation for every public entry point: host-side checks, then the arrays the
jitted programs take.

:func:`prepare` runs in NumPy only (no eager device op: ``jax.jit`` places the NumPy arrays
itself), so a public call adds little over its compiled program. It checks, in this order:
the call itself (:func:`decoding.validation.check_call`: not under ``jit``, no donated
buffers, well-formed prompts and cache lengths), the constraint against the model's
vocabulary, the output width and per-row limits, EOS ids (distinct, consistent with the
constraint), the sampler and key, the cache room, the prompt tokens; then it pads the prompts
to their bucket.

The rules every entry point now shares (they used to drift):

* ``vocab_size=``: default the model's logits width (one abstract evaluation, memoized);
  a smaller value (a padded vocabulary) is allowed, a larger one is not.
* the bucket: the next power of two of the longest prompt, at least ``min_bucket``, at most
  the free room of the fullest cache row (never below the longest prompt).
* EOS ids are distinct ints in the vocabulary; a fixed-length constraint takes none; a
  variable-length one ends items with its own ``eos_id`` (``()`` means the same).
* ``key``: one PRNG key (row ``b`` then uses ``split(key, batch)[b]``) or one key per row
  (shape [batch]): a row's sample depends only on its own key, never on its batchmates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import struct

from constraints.protocol import DENSE_MEMBERS, Unconstrained, has_members, is_layered, is_unconstrained
from decoding import validation
from decoding.prefill import bucket_length, pad_prompts
from decoding.samplers import Greedy


@struct.dataclass
class CallInputs:
    """The checked per-call inputs of a jitted decoding program (a new value never recompiles;
    shapes, the sampler's structure and ``width`` do)."""

    prompts: Any  # int32 [batch, bucket]  right-padded with 0 to the bucket
    prompt_lengths: Any  # int32 [batch]
    limits: Any  # int32 [batch]  per-row max new tokens, each in [0, width]
    eos_ids: Any  # int32 [num_eos]  tokens that end a row (num_eos static)
    pad_id: Any  # int32 []  fills outputs after each row's end
    sampler: Any  # a decoding.samplers sampler; knobs float32/int32 [] or [batch]
    key: Any  # key [] (split per row inside) or key [batch] (one per row)
    width: int = struct.field(pytree_node=False)  # output width (new tokens); static

    def row_keys(self) -> jax.Array:  # key [batch]
        """One PRNG key per row (traced)."""
        if self.key.ndim == 1:
            return self.key
        return jax.random.split(self.key, self.prompts.shape[0])


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` returns: the jit arguments and host copies for extra checks."""

    inputs: CallInputs
    constraint: Any  # the checked constraint (the Unconstrained null object when none)
    vocab_size: int
    cache_lengths: np.ndarray  # int32 [batch]
    host_prompt_lengths: np.ndarray  # int32 [batch]
    host_limits: np.ndarray  # int32 [batch]


_DEFAULT_KEY: list = []


def _default_key() -> jax.Array:
    """A fixed key for greedy calls (never used to draw), made once per process."""
    if not _DEFAULT_KEY:
        _DEFAULT_KEY.append(jax.random.key(0))
    return _DEFAULT_KEY[0]


def check_constraint(constraint: Any, vocab_size: int, *, layered_ok: bool = False) -> Any:
    """The constraint (None becomes :class:`constraints.protocol.Unconstrained`) must follow
    :class:`constraints.protocol.Constraint`, or with ``layered_ok`` (beam search's sparse
    path) be a fixed-length :class:`constraints.protocol.LayeredConstraint`, over the model's
    vocabulary."""
    if constraint is None:
        return Unconstrained()
    if is_unconstrained(constraint):
        return constraint
    if not has_members(constraint, DENSE_MEMBERS) and not (layered_ok and is_layered(constraint)):
        kinds = "a constraint with " + ", ".join(DENSE_MEMBERS)
        if layered_ok:
            kinds += ", or a fixed-length layered constraint (max_branching, candidates)"
        raise ValueError(f"constraint must be {kinds} (e.g. a constraints.TrieIndex), got {type(constraint).__name__}")
    if constraint.vocab_size != vocab_size:
        raise ValueError(f"the constraint's vocab_size {constraint.vocab_size} differs from the model's {vocab_size}")
    return constraint


def check_eos_ids(eos_ids: Any, constraint: Any, vocab_size: int) -> tuple[int, ...]:
    """Distinct ids in the vocabulary, consistent with the constraint (see the module docstring)."""
    eos_ids = validation.check_token_ids("eos_ids", eos_ids, vocab_size)
    if len(set(eos_ids)) != len(eos_ids):
        raise ValueError(f"eos_ids must be distinct, got {eos_ids}")
    if is_unconstrained(constraint):
        return eos_ids
    if constraint.fixed_length:
        if eos_ids:
            raise ValueError("a fixed-length constraint has no EOS: its items are exactly depth tokens; pass eos_ids=()")
        return ()
    if eos_ids not in ((), (constraint.eos_id,)):
        raise ValueError(f"a variable-length constraint ends items with its eos_id {constraint.eos_id}; got eos_ids={eos_ids}")
    return (constraint.eos_id,)


def check_key(key: Any, sampler: Any, batch: int) -> Any:
    """A typed key of shape [] or [batch] (raw uint32 keys wrapped), or the default key for a
    sampler that draws nothing."""
    validation.check_sampler(sampler, key, batch)
    if key is None:
        return _default_key()
    key = validation.normalize_key(key)
    if key.shape not in ((), (batch,)):
        raise ValueError(f"key must be one PRNG key or one per row (shape ({batch},)), got shape {key.shape}")
    return key


def prepare(
    entry: str,
    core: str,
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    max_new_tokens: Any,
    width: int | None = None,
    eos_ids: Any = (),
    constraint: Any = None,
    sampler: Any = None,
    key: Any = None,
    pad_id: Any = 0,
    vocab_size: Any = None,
    min_bucket: Any,
    unfed_tokens: int = 0,
    static_width: bool = False,
    layered_ok: bool = False,
    other_caches: tuple = (),
) -> Prepared:
    """Checks one call of ``entry`` (its traceable ``core`` named in errors) and builds its
    :class:`CallInputs`.

    ``max_new_tokens`` None takes ``constraint.depth``. ``static_width`` (beam search): it must
    be an int, and a fixed-length constraint's ``depth`` exactly. ``unfed_tokens``: trailing
    new tokens the loop never feeds (see :func:`decoding.validation.check_capacity`).
    ``layered_ok``: a layered-only constraint is accepted (beam search's sparse path).
    ``other_caches``: further caches whose free room also caps the bucket (a draft model's).
    """
    prompts_np, lengths_np, cache_lengths = validation.check_call(entry, core, params, cache, prompts, prompt_lengths)
    batch = prompts_np.shape[0]
    model_vocab = validation.infer_vocab_size(model, params, cache)
    vocab = model_vocab if vocab_size is None else validation.check_vocab_size(vocab_size, model_vocab)
    constraint = check_constraint(constraint, vocab, layered_ok=layered_ok)
    if max_new_tokens is None:
        if is_unconstrained(constraint):
            raise ValueError("max_new_tokens is required without a constraint")
        max_new_tokens = constraint.depth
    if static_width:
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool):
            raise ValueError(
                f"max_new_tokens must be an int (the static output width), got {type(max_new_tokens).__name__}"
            )
        if not is_unconstrained(constraint) and constraint.fixed_length and max_new_tokens != constraint.depth:
            raise ValueError(
                f"a fixed-length constraint emits exactly depth={constraint.depth} tokens; "
                f"got max_new_tokens={max_new_tokens}"
            )
    eos = check_eos_ids(eos_ids, constraint, vocab)
    limits, width = validation.check_new_tokens(max_new_tokens, width, batch)
    sampler = Greedy() if sampler is None else sampler
    key = check_key(key, sampler, batch)
    sampler = validation.normalize_sampler(sampler)
    pad = validation.check_pad_id(pad_id)
    min_bucket = validation.check_int("min_bucket", min_bucket, 1, validation.INT32_MAX)
    validation.check_capacity(
        cache_lengths,
        lengths_np,
        limits,
        cache.capacity,
        unfed_tokens=unfed_tokens,
        prompt_capacity=getattr(cache, "prefix_capacity", None),
    )
    validation.check_prompt_tokens(prompts_np, lengths_np, vocab)

    # Padding columns past the fullest row's room would be written past its capacity; cap the
    # bucket there, but never below the longest prompt (rows with less cached all fit it).
    longest = int(lengths_np.max())
    room = cache.capacity - int(cache_lengths.max())
    for other in other_caches:
        validation.check_live(entry, "draft cache", other)
        room = min(room, other.capacity - int(np.max(np.asarray(other.lengths))))
    bucket = bucket_length(longest, max(room, longest), min_bucket)
    inputs = CallInputs(
        prompts=pad_prompts(prompts_np, lengths_np, bucket),
        prompt_lengths=lengths_np,
        limits=limits,
        eos_ids=np.asarray(eos, np.int32).reshape(len(eos)),
        pad_id=pad,
        sampler=sampler,
        key=key,
        width=width,
    )
    return Prepared(inputs, constraint, vocab, cache_lengths, lengths_np, limits)
