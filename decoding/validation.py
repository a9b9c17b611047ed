"""Host-side input checks shared by the decoding loops: clear ValueErrors before any tracing.

Every check reads concrete values (NumPy or committed device arrays). A check that meets a
tracer skips the value test, since loops called inside an outer ``jit`` cannot see values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from decoding.samplers import KNOB_DTYPE, Greedy, MinP, Temperature, TopP

_VOCAB_MEMO: dict[tuple, int] = {}
_VOCAB_MEMO_LIMIT = 64


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array, or None when it is a tracer (no value at trace time)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def check_prompts(
    prompts: Any,  # int [batch, P]
    prompt_lengths: Any,  # int [batch]
) -> tuple[np.ndarray, np.ndarray]:  # int32 [batch, P], int32 [batch]
    """Checks shapes, dtypes and lengths; returns both as int32 NumPy arrays."""
    prompts_np = np.asarray(prompts)
    lengths_np = np.asarray(prompt_lengths)
    if prompts_np.ndim != 2:
        raise ValueError(f"prompts must be 2-D [batch, prompt_len], got shape {prompts_np.shape}")
    if prompts_np.shape[0] == 0 or prompts_np.shape[1] == 0:
        raise ValueError(f"prompts must be non-empty, got shape {prompts_np.shape}")
    if prompts_np.size and not np.issubdtype(prompts_np.dtype, np.integer):
        raise ValueError(f"prompts must hold integer token ids, got dtype {prompts_np.dtype}")
    if lengths_np.shape != (prompts_np.shape[0],):
        raise ValueError(
            f"prompt_lengths must have shape [batch] = ({prompts_np.shape[0]},), got {lengths_np.shape}"
        )
    if not np.issubdtype(lengths_np.dtype, np.integer):
        raise ValueError(f"prompt_lengths must be integers, got dtype {lengths_np.dtype}")
    if np.any(lengths_np < 1):
        row = int(np.argmin(lengths_np))
        raise ValueError(f"every prompt needs at least one token; row {row} has length {lengths_np[row]}")
    if np.any(lengths_np > prompts_np.shape[1]):
        row = int(np.argmax(lengths_np))
        raise ValueError(
            f"prompt_lengths[{row}] = {lengths_np[row]} exceeds the prompts width {prompts_np.shape[1]}"
        )
    return prompts_np.astype(np.int32), lengths_np.astype(np.int32)


def check_prompt_tokens(
    prompts: np.ndarray,  # int32 [batch, P]
    prompt_lengths: np.ndarray,  # int32 [batch]
    vocab_size: int,
) -> None:
    """Every real prompt token (positions below the row's length) must lie in [0, vocab_size)."""
    real = np.arange(prompts.shape[1])[None, :] < prompt_lengths[:, None]
    bad = real & ((prompts < 0) | (prompts >= vocab_size))
    if np.any(bad):
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"prompt token {prompts[row, col]} at row {row}, position {col} is outside the vocabulary [0, {vocab_size})"
        )


def check_token_ids(name: str, ids: tuple, vocab_size: int | None) -> tuple[int, ...]:
    """A tuple of distinct Python ints in [0, vocab_size) (``vocab_size`` None: only >= 0)."""
    if isinstance(ids, (int, np.integer)):
        raise ValueError(f"{name} must be a tuple of ints, got the single int {ids}; write ({ids},)")
    ids = tuple(ids)
    for token in ids:
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool):
            raise ValueError(f"{name} must hold Python ints, got {token!r}")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise ValueError(f"{name} holds {token}, outside the vocabulary [0, {vocab_size})")
    return tuple(int(t) for t in ids)


def check_new_tokens(
    max_new_tokens: Any,  # int, or int [batch]
    width: int | None,
    batch: int,
) -> tuple[np.ndarray, int]:  # int32 [batch], static width
    """Per-row limits and the static output width.

    ``max_new_tokens`` an int: every row gets it and it is the width (``width`` must be None or
    equal); a 0-d integer array counts as an int. An array [batch]: the per-row limits; ``width``
    defaults to their maximum.
    """
    if np.ndim(max_new_tokens) == 0 and np.issubdtype(np.asarray(max_new_tokens).dtype, np.integer):
        max_new_tokens = int(np.asarray(max_new_tokens))
    if isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if width is not None and width != max_new_tokens:
            raise ValueError(
                f"width={width} differs from the scalar max_new_tokens={max_new_tokens}; "
                "pass per-row limits as an int array to decode fewer tokens than the width"
            )
        return np.full((batch,), max_new_tokens, np.int32), int(max_new_tokens)
    limits = np.asarray(max_new_tokens)
    if limits.shape != (batch,) or not np.issubdtype(limits.dtype, np.integer):
        raise ValueError(
            f"max_new_tokens must be an int or an int array of shape ({batch},), got "
            f"shape {limits.shape} dtype {limits.dtype}"
        )
    if np.any(limits < 0):
        raise ValueError(f"max_new_tokens must be >= 0 in every row, got {limits.tolist()}")
    if width is None:
        width = int(limits.max())
    if width < 1:
        raise ValueError(f"the output width must be at least 1, got {width}")
    if np.any(limits > width):
        raise ValueError(f"per-row max_new_tokens {limits.tolist()} exceed the output width {width}")
    return limits.astype(np.int32), int(width)


def check_capacity(
    cache_lengths: np.ndarray,  # int32 [batch]
    prompt_lengths: np.ndarray,  # int32 [batch]
    limits: np.ndarray,  # int32 [batch]
    capacity: int,
    *,
    unfed_tokens: int = 0,
) -> None:
    """Each row's cached tokens + prompt + the new tokens the loop writes must fit the cache.

    ``unfed_tokens``: how many of a row's last new tokens the caller's loop never feeds to the
    model (so never writes to the cache). :func:`decoding.generate.generate` never feeds its
    last token and passes 1: a row then needs prompt + max(limit - 1, 0) positions. The default
    0 asks for room for prompt + limit.
    """
    if cache_lengths.shape != prompt_lengths.shape:
        raise ValueError(
            f"the cache has batch {cache_lengths.shape[0]} but the prompts have batch {prompt_lengths.shape[0]}"
        )
    room = capacity - cache_lengths
    too_long = prompt_lengths > room
    if np.any(too_long):
        row = int(np.argmax(too_long))
        raise ValueError(
            f"prompt of row {row} has {prompt_lengths[row]} tokens but its cache row has room for only {room[row]} "
            f"(capacity {capacity}, {cache_lengths[row]} already used)"
        )
    written = np.maximum(limits - unfed_tokens, 0)
    over = prompt_lengths + written > room
    if np.any(over):
        row = int(np.argmax(over))
        fed = f" - {unfed_tokens} never fed" if unfed_tokens else ""
        raise ValueError(
            f"row {row}: prompt ({prompt_lengths[row]}) + max_new_tokens ({limits[row]}){fed} exceeds the free cache "
            f"capacity {room[row]}; allocate a larger cache or decode fewer tokens"
        )


def _bad_values(value: Any, is_bad) -> bool:
    values = concrete(value)
    return values is not None and bool(np.any(is_bad(values.astype(np.float64))))


def _knob_leaves(sampler: Any) -> list[tuple[str, Any]]:
    """``(name, value)`` of every knob field in ``sampler`` (dataclasses nested in tuples/lists)."""
    if isinstance(sampler, (tuple, list)):
        return [pair for item in sampler for pair in _knob_leaves(item)]
    if not dataclasses.is_dataclass(sampler) or isinstance(sampler, type):
        return []
    pairs = []
    for field in dataclasses.fields(sampler):
        value = getattr(sampler, field.name)
        if KNOB_DTYPE in field.metadata:
            pairs.append((f"{type(sampler).__name__}.{field.name}", value))
        else:
            pairs.extend(_knob_leaves(value))
    return pairs


def check_sampler(sampler: Any, key: Any, batch: int | None = None) -> None:
    """Concrete knob values in range, each knob a scalar or (with ``batch`` given) an array of
    shape [batch], and a key for every sampler that draws random numbers."""
    if key is None and not isinstance(sampler, Greedy):
        raise ValueError(f"{type(sampler).__name__} samples at random; pass key=jax.random.key(seed)")
    if batch is not None:
        for name, value in _knob_leaves(sampler):
            shape = np.shape(value)
            if shape not in ((), (batch,)):
                raise ValueError(f"{name} must be a scalar or a per-row array of shape ({batch},), got shape {shape}")
    knobs = jax.tree.leaves(sampler, is_leaf=lambda x: isinstance(x, (Temperature, TopP, MinP)))
    for knob in knobs:
        if isinstance(knob, Temperature) and _bad_values(knob.value, lambda v: np.isnan(v) | (v < 0)):
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {np.asarray(knob.value).tolist()}")
        if isinstance(knob, TopP) and _bad_values(knob.p, lambda v: np.isnan(v) | (v < 0) | (v > 1)):
            raise ValueError(f"top-p must be a number in [0, 1], got {np.asarray(knob.p).tolist()}")
        if isinstance(knob, MinP) and _bad_values(knob.p, lambda v: np.isnan(v) | (v > 1)):
            raise ValueError(f"min-p must be <= 1 (a larger value removes every token), got {np.asarray(knob.p).tolist()}")


def normalize_sampler(sampler: Any) -> Any:
    """``sampler`` with every knob a jnp array of its field's declared dtype
    (:func:`decoding.samplers.knob`: float32, or int32 for integer knobs such as ``TopK.k``).

    Python ints and floats, NumPy scalars and weakly typed arrays otherwise reach ``jit`` with
    different dtypes or weak types and each compile a new loop; after this only the sampler's
    structure and the knobs' shapes (scalar or [batch]) select the compiled variant. Shapes
    and values are kept; tracers pass through cast.
    """
    if isinstance(sampler, (tuple, list)):
        return type(sampler)(normalize_sampler(item) for item in sampler)
    if not dataclasses.is_dataclass(sampler) or isinstance(sampler, type):
        return sampler
    changes = {}
    for field in dataclasses.fields(sampler):
        value = getattr(sampler, field.name)
        if KNOB_DTYPE in field.metadata:
            changes[field.name] = jnp.asarray(value, field.metadata[KNOB_DTYPE])
        else:
            changes[field.name] = normalize_sampler(value)
    return dataclasses.replace(sampler, **changes)


def normalize_key(key: Any) -> Any:
    """A typed PRNG key: a raw ``uint32`` key (``jax.random.PRNGKey``) is wrapped with
    ``jax.random.wrap_key_data`` (default implementation; same random bits), so raw and typed
    keys share one compiled loop. Typed keys and None pass through."""
    if key is None or jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        return key
    raw = jnp.asarray(key)
    if raw.dtype != jnp.uint32:
        raise ValueError(f"key must be a jax.random.key or a raw uint32 PRNGKey, got dtype {raw.dtype}")
    try:
        return jax.random.wrap_key_data(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"key of shape {raw.shape} is not a PRNG key of the default implementation: {error}") from None


def infer_vocab_size(model: Any, params: Any, cache: Any) -> int:
    """The vocabulary size from one abstract model call (``jax.eval_shape``: no compile, no FLOPs),
    memoized per model and argument shapes."""
    leaves, treedef = jax.tree.flatten((params, cache))
    signature = (model, treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
    if signature not in _VOCAB_MEMO:
        batch = cache.lengths.shape[0]
        tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
        num_valid = jax.ShapeDtypeStruct((batch,), jnp.int32)
        logits, _ = jax.eval_shape(model, params, tokens, cache, num_valid)
        if len(_VOCAB_MEMO) >= _VOCAB_MEMO_LIMIT:
            _VOCAB_MEMO.clear()
        _VOCAB_MEMO[signature] = int(logits.shape[-1])
    return _VOCAB_MEMO[signature]
