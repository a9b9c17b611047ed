"""Host-side input checks shared by the decoding loops: clear errors before any tracing, and
the traced non-finite signal every output carries.

Every public entry point starts with :func:`check_call`: its arguments must be concrete (a
call under ``jax.jit``, ``vmap`` or ``grad`` raises :class:`TracedCallError` naming the
traceable core to call instead), its cache and params must not hold deleted arrays (a reused
donated cache raises :class:`DonatedCacheError`), and prompts, prompt lengths and the cache's
own lengths are checked (a ValueError naming the row). Integers are range-checked before any
narrowing cast to int32, and every numeric knob (temperature, top-k/p, min-p, length penalty,
diversity strength) is checked to be finite and in range. A knob that is itself a tracer skips
the value test (the loop runs inside someone's jit; values cannot be seen there).

**Non-finite policy.** Decoding does not raise on non-finite model output: a raise would
need a device-to-host sync per call and would fail a whole batch for one bad row. Instead
every output carries ``nonfinite``: bool [batch], True for a row whose decoding read
non-finite logits (NaN or +inf anywhere, or every entry -inf) at a step that fed it: its
tokens, scores and validity are then meaningless. Finite logits with some -inf entries (a
model that masks tokens) are fine. Callers (the batch retrieval job, scripts) report flagged
rows as errors. How each loop computes it:

* ``generate`` (with or without a constraint), ``speculative_generate``:
  :func:`nonfinite_emitted` over the recorded log-probabilities: any bad logit row makes the
  emitted token's log-softmax NaN or -inf, and finite logits never do (a sampler never picks
  a token of probability 0 while others have mass).
* beam search (dense and sparse paths): :func:`nonfinite_logits` at every model call, OR-ed
  per batch row over all its beams (NaN scores would otherwise rank first in top-k or make
  every beam invalid, silently).

A speculative *draft* model's non-finite logits cannot change the output (its drafts are
rejected and the target's distribution is sampled), so only the target is watched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from decoding.samplers import KNOB_DTYPE, Categorical, Greedy, MinP, Temperature, TopK, TopP

_VOCAB_MEMO: dict[tuple, int] = {}
_VOCAB_MEMO_LIMIT = 64
INT32_MAX = int(np.iinfo(np.int32).max)
INT32_MIN = int(np.iinfo(np.int32).min)


class TracedCallError(TypeError):
    """A public decoding entry point was called with traced values (under ``jax.jit``,
    ``vmap`` or ``grad``): its host-side checks need concrete values. Call the traceable core
    that the message names instead (with inputs prepared outside the trace)."""


class DonatedCacheError(ValueError):
    """The cache (or params) holds deleted arrays: most often a cache that was already donated
    to ``generate`` / ``speculative_generate``, whose buffers now back that call's ``out.cache``."""


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
    # Range-check the real tokens at full width before the int32 cast (2**32 + 72 must not
    # become 72); padding past each row's length is ignored, so it is zeroed first.
    real = np.arange(prompts_np.shape[1])[None, :] < lengths_np[:, None]
    bad = real & ((prompts_np < INT32_MIN) | (prompts_np > INT32_MAX))
    if np.any(bad):
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"prompt token {prompts_np[row, col]} at row {row}, position {col} is outside the vocabulary "
            f"(it does not even fit int32)"
        )
    return np.where(real, prompts_np, 0).astype(np.int32), lengths_np.astype(np.int32)


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
        if token < 0 or token > INT32_MAX or (vocab_size is not None and token >= vocab_size):
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
    if width is not None:
        width = check_int("width", width, 1, INT32_MAX)
    if isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if max_new_tokens > INT32_MAX:
            raise ValueError(f"max_new_tokens must fit int32 (at most {INT32_MAX}), got {max_new_tokens}")
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
    if np.any(limits > INT32_MAX):
        row = int(np.argmax(limits))
        raise ValueError(f"max_new_tokens[{row}] = {limits[row]} does not fit int32 (at most {INT32_MAX})")
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
    prompt_capacity: int | None = None,
) -> None:
    """Each row's cached tokens + prompt + the new tokens the loop writes must fit the cache.

    ``prompt_capacity``: a cache that holds prompts apart (``prefix_capacity`` of a shared-prefix
    beam cache) must also fit each prompt there, or its tail would be dropped.

    ``unfed_tokens``: how many of a row's last new tokens the caller's loop never feeds to the
    model (so never writes to the cache). :func:`decoding.generate.generate` never feeds its
    last token and passes 1: a row then needs prompt + max(limit - 1, 0) positions. The default
    0 asks for room for prompt + limit.
    """
    if cache_lengths.shape != prompt_lengths.shape:
        raise ValueError(
            f"the cache has batch {cache_lengths.shape[0]} but the prompts have batch {prompt_lengths.shape[0]}"
        )
    if prompt_capacity is not None and np.any(prompt_lengths > prompt_capacity):
        row = int(np.argmax(prompt_lengths > prompt_capacity))
        raise ValueError(
            f"prompt of row {row} has {prompt_lengths[row]} tokens but the cache holds prompts of at most "
            f"{prompt_capacity} (its prefix_capacity); make the cache with a larger prefix"
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


def _as_float64(name: str, value: Any) -> np.ndarray | None:
    """A concrete knob as float64 (None for a tracer), or a ValueError naming it."""
    values = concrete(value)
    if values is None:
        return None
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number or a numeric array, got {value!r}") from err


def _bad_values(name: str, value: Any, is_bad) -> bool:
    values = _as_float64(name, value)
    return values is not None and bool(np.any(is_bad(values)))


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


_PROCESSORS = (Temperature, TopK, TopP, MinP)


def check_sampler_type(sampler: Any) -> None:
    """``sampler`` must be a sampler (``Greedy()``, ``Categorical(processors)`` or another
    object with ``sample`` and ``log_probs``), not a logits processor or anything else; a
    ``Categorical``'s processors must be a tuple of processors."""
    if isinstance(sampler, _PROCESSORS):
        name = type(sampler).__name__
        raise ValueError(
            f"sampler is a {name}, a logits processor, not a sampler; wrap it: sampler=Categorical(({name}(...),))"
        )
    if not (callable(getattr(sampler, "sample", None)) and callable(getattr(sampler, "log_probs", None))):
        raise ValueError(
            f"sampler must be Greedy() or Categorical(processors) (a decoding.samplers.Sampler), got {sampler!r}"
        )
    if isinstance(sampler, Categorical):
        processors = sampler.processors
        if not isinstance(processors, (tuple, list)):
            raise ValueError(
                f"Categorical.processors must be a tuple of logits processors, got a {type(processors).__name__}; "
                f"write Categorical(({type(processors).__name__}(...),)) with a trailing comma"
            )
        for i, processor in enumerate(processors):
            if not callable(processor) or hasattr(processor, "sample"):
                raise ValueError(
                    f"Categorical.processors[{i}] is a {type(processor).__name__}, not a logits processor "
                    "(Temperature, TopK, TopP or MinP)"
                )


def check_sampler(sampler: Any, key: Any, batch: int | None = None) -> None:
    """A sampler (:func:`check_sampler_type`) with concrete knob values finite and in range,
    each knob a scalar or (with ``batch`` given) an array of shape [batch], and a key for
    every sampler that draws random numbers."""
    check_sampler_type(sampler)
    if key is None and not isinstance(sampler, Greedy):
        raise ValueError(f"{type(sampler).__name__} samples at random; pass key=jax.random.key(seed)")
    if batch is not None:
        for name, value in _knob_leaves(sampler):
            shape = np.shape(value)
            if shape not in ((), (batch,)):
                raise ValueError(f"{name} must be a scalar or a per-row array of shape ({batch},), got shape {shape}")
    knobs = jax.tree.leaves(sampler, is_leaf=lambda x: isinstance(x, _PROCESSORS))
    for knob in knobs:
        if isinstance(knob, Temperature) and _bad_values("Temperature.value", knob.value, lambda v: ~np.isfinite(v) | (v < 0)):
            raise ValueError(
                f"temperature must be >= 0 (0 means greedy) and finite, got {np.asarray(knob.value).tolist()}"
            )
        if isinstance(knob, TopP) and _bad_values("TopP.p", knob.p, lambda v: ~np.isfinite(v) | (v < 0) | (v > 1)):
            raise ValueError(f"top-p must be a number in [0, 1], got {np.asarray(knob.p).tolist()}")
        if isinstance(knob, MinP) and _bad_values("MinP.p", knob.p, lambda v: ~np.isfinite(v) | (v > 1)):
            raise ValueError(
                f"min-p must be finite and <= 1 (a larger value removes every token), got {np.asarray(knob.p).tolist()}"
            )
        if isinstance(knob, TopK) and _bad_values(
            "TopK.k", knob.k, lambda v: ~np.isfinite(v) | (v != np.round(v)) | (v < INT32_MIN) | (v > INT32_MAX)
        ):
            raise ValueError(f"top-k must be an integer that fits int32 (<= 0 keeps all), got {np.asarray(knob.k).tolist()}")


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as a Python int in ``[low, high]`` (a Python or NumPy integer or a 0-d integer
    array, not a bool or a float), checked before any narrowing cast."""
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0 and not isinstance(value, jax.core.Tracer):
        if np.issubdtype(np.asarray(value).dtype, np.integer):
            value = int(np.asarray(value))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def check_pad_id(pad_id: Any) -> np.ndarray:  # int32 []
    """``pad_id`` (any int that fits int32: it only fills unused slots) as an int32 scalar."""
    return np.asarray(check_int("pad_id", pad_id, INT32_MIN, INT32_MAX), np.int32)


def check_finite(name: str, value: Any, batch: int, *, minimum: float | None = None) -> jax.Array:  # float32 [batch]
    """A float knob that is a scalar or [batch], finite (and ``>= minimum``), as float32 [batch].
    A tracer skips the value test."""
    shape = np.shape(value)
    if shape not in ((), (batch,)):
        raise ValueError(f"{name} must be a scalar or shape ({batch},), got shape {shape}")
    values = _as_float64(name, value)
    if values is not None:
        bad = ~np.isfinite(values) | (False if minimum is None else values < minimum)
        if np.any(bad):
            at = "" if values.ndim == 0 else f" (row {int(np.argmax(bad))})"
            floor = "" if minimum is None else f" and >= {minimum}"
            raise ValueError(f"{name} must be finite{floor}, got {values.tolist()}{at}")
    if values is None:
        return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,))
    return np.broadcast_to(values.astype(np.float32), (batch,))


def check_vocab_size(vocab_size: Any, model_vocab: int) -> int:
    """An explicit ``vocab_size=`` may be smaller than the model's logits width (a padded
    vocabulary) but never larger: ids beyond the embedding table would be read out of range."""
    vocab_size = check_int("vocab_size", vocab_size, 1, INT32_MAX)
    if vocab_size > model_vocab:
        raise ValueError(
            f"vocab_size={vocab_size} exceeds the model's vocabulary ({model_vocab} logits per position): ids "
            f"at or above {model_vocab} would be read outside its embedding table"
        )
    return vocab_size


def _path(prefix: str, path: tuple) -> str:
    """``prefix.a.0`` for a key path (``prefix`` alone at the root)."""
    return ".".join(filter(None, [prefix, jax.tree_util.keystr(path, simple=True, separator=".")]))


def _tracer_paths(prefix: str, tree: Any) -> list[str]:
    if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
        return []
    return [
        _path(prefix, path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if isinstance(leaf, jax.core.Tracer)
    ]


def _is_deleted(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()


def _deleted_paths(prefix: str, tree: Any) -> list[str]:
    if not any(_is_deleted(leaf) for leaf in jax.tree.leaves(tree)):
        return []
    return [
        _path(prefix, path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()
    ]


def check_cache(cache: Any, batch: int, what: str = "cache") -> np.ndarray:  # int32 [batch]
    """The cache follows :class:`decoding.protocol.DecodeCache` with a concrete capacity and
    one length per prompt, each in ``[0, capacity]``; returns the lengths as int32."""
    if not hasattr(cache, "lengths") or not hasattr(cache, "capacity"):
        raise ValueError(
            f"{what} must follow decoding.protocol.DecodeCache (lengths and capacity), got {type(cache).__name__}"
        )
    capacity = cache.capacity
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"{what}.capacity must be a positive int, got {capacity!r}")
    lengths = np.asarray(cache.lengths)
    if lengths.ndim != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"the {what} has batch {lengths.shape[0] if lengths.ndim else lengths.shape} but the prompts have batch {batch}"
        )
    if not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"{what}.lengths must be integers, got dtype {lengths.dtype}")
    bad = (lengths < 0) | (lengths > capacity)
    if np.any(bad):
        row = int(np.argmax(bad))
        raise ValueError(
            f"{what}.lengths[{row}] = {lengths[row]} is outside [0, capacity {capacity}]: the cache state is "
            "corrupt; start from a fresh cache"
        )
    return lengths.astype(np.int32)


def check_live(entry: str, name: str, tree: Any) -> None:
    """No array of ``tree`` (a cache or params) has been deleted, else :class:`DonatedCacheError`."""
    deleted = _deleted_paths(name.replace(" ", "_"), tree)
    if deleted:
        hint = (
            "it was donated to an earlier generate / speculative_generate call, whose out.cache now owns its "
            "buffers: pass that out.cache (or a fresh cache) instead of the old one"
            if "cache" in name
            else "they were deleted or donated elsewhere; pass live arrays"
        )
        raise DonatedCacheError(f"{entry}: the {name} holds deleted arrays ({', '.join(deleted[:3])}): {hint}")


def check_call(
    entry: str,
    core: str,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # int32 [batch, P], int32 [batch], int32 [batch]
    """The checks every public entry point starts with, in this order:

    1. prompts, prompt lengths and the cache lengths are concrete: a tracer means the entry
       point runs under ``jax.jit`` / ``vmap`` / ``grad``, where its checks cannot see values
       (:class:`TracedCallError` naming ``core``, the traceable function to call instead);
    2. no array of ``params`` or ``cache`` has been deleted (:class:`DonatedCacheError`);
    3. :func:`check_prompts`, then :func:`check_cache`.

    Returns the prompts, prompt lengths and cache lengths as int32 NumPy arrays.
    """
    traced = _tracer_paths("prompts", prompts) + _tracer_paths("prompt_lengths", prompt_lengths)
    traced += _tracer_paths("cache.lengths", getattr(cache, "lengths", None))
    if traced:
        raise TracedCallError(
            f"{entry} was called with traced values ({', '.join(traced)}): it is a host-side entry point that "
            f"checks its inputs and cannot run under jax.jit, vmap or grad. Inside your own jit call the traceable "
            f"core instead: {core}, with prompts and settings prepared outside the trace."
        )
    check_live(entry, "cache", cache)
    check_live(entry, "params", params)
    prompts_np, lengths_np = check_prompts(prompts, prompt_lengths)
    cache_lengths = check_cache(cache, prompts_np.shape[0])
    return prompts_np, lengths_np, cache_lengths


# ---------------------------------------------------------------- the non-finite signal (traced)


def nonfinite_logits(
    log_probs: jax.Array,  # float32 [..., vocab]  log_softmax of a model's logits
) -> jax.Array:  # bool [...]
    """Whether the logits behind ``log_probs`` were bad: NaN or +inf anywhere, or every entry
    -inf. Each of these makes the whole log-softmax row NaN; finite logits with some -inf
    entries do not. Traced."""
    return jnp.any(jnp.isnan(log_probs), axis=-1)


def nonfinite_emitted(
    log_probs: jax.Array,  # float32 [batch, width]  model log-probabilities of the emitted tokens
    lengths: jax.Array,  # int32 [batch]  emitted tokens per row
) -> jax.Array:  # bool [batch]
    """Whether any emitted token of a row has a non-finite log-probability (NaN or -inf): the
    logits it was chosen from were bad (see the module docstring). Traced."""
    emitted = jnp.arange(log_probs.shape[1])[None, :] < lengths[:, None]
    return jnp.any(emitted & ~jnp.isfinite(log_probs), axis=1)


def normalize_sampler(sampler: Any) -> Any:
    """``sampler`` with every knob a NumPy array of its field's declared dtype
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
            dtype = field.metadata[KNOB_DTYPE]
            # Concrete knobs become NumPy (jit places them; no eager device op on the host path,
            # and one kind of argument: NumPy and jax arrays would each fill a jit cache entry).
            tracer = isinstance(value, jax.core.Tracer)
            changes[field.name] = jnp.asarray(value, dtype) if tracer else np.asarray(value, dtype)
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
    memoized per model and parameter shapes."""
    # The logits width depends on the model and its parameters' shapes only (not on the cache).
    leaves, treedef = jax.tree.flatten(params)
    signature = (model, treedef, tuple([(x.shape, x.dtype) if hasattr(x, "dtype") else np.shape(x) for x in leaves]))
    if signature not in _VOCAB_MEMO:
        batch = cache.lengths.shape[0]
        tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
        num_valid = jax.ShapeDtypeStruct((batch,), jnp.int32)
        logits, _ = jax.eval_shape(model, params, tokens, cache, num_valid)
        if len(_VOCAB_MEMO) >= _VOCAB_MEMO_LIMIT:
            _VOCAB_MEMO.clear()
        _VOCAB_MEMO[signature] = int(logits.shape[-1])
    return _VOCAB_MEMO[signature]
