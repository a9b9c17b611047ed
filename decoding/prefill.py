"""Prompt bucketing and ragged prefill, shared by every decoding loop.

A loop compiles once per prompt *width*, so prompts are padded to a bucket: the next power of
two of the longest prompt, at least ``min_bucket``, at most the room left in the cache. Every
prompt length inside one bucket reuses one compiled loop.

Worked example with the counting model (``tests/fake_models.counting_params``: after token t
the most likely token is t + 1)::

    prompts        = [[5, 6, 0, 0],     # row 0: length 2 (the zeros are padding)
                      [9, 0, 0, 0]]     # row 1: length 1
    prompt_lengths = [2, 1]
    bucket_length(2, capacity=64)  -> 16    prompts are padded to width 16
    last_logits, cache = prefill(model, params, cache, padded, prompt_lengths)
    argmax(last_logits) -> [7, 10]          logits at each row's own last prompt token
    cache.lengths       -> [2, 1]           each row advanced by its own length
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_MIN_BUCKET = 16


def bucket_length(length: int, capacity: int, min_bucket: int = DEFAULT_MIN_BUCKET) -> int:
    """The padded prompt width for a longest prompt of ``length`` tokens (all Python ints).

    The next power of two at or above ``length``, at least ``min_bucket``, capped at
    ``capacity`` (the free positions per cache row). Raises ValueError if ``length`` does not fit.

    >>> bucket_length(5, 256), bucket_length(17, 256), bucket_length(200, 256), bucket_length(3, 8)
    (16, 32, 256, 8)
    """
    if length < 1:
        raise ValueError(f"prompt length must be at least 1, got {length}")
    if length > capacity:
        raise ValueError(f"prompt length {length} exceeds the free cache capacity {capacity}")
    if min_bucket < 1:
        raise ValueError(f"min_bucket must be at least 1, got {min_bucket}")
    bucket = max(min_bucket, 1 << (length - 1).bit_length())
    return min(bucket, capacity)


def pad_prompts(
    prompts: np.ndarray,  # int [batch, P]
    prompt_lengths: np.ndarray,  # int [batch]
    width: int,
) -> np.ndarray:  # int32 [batch, width]
    """Host-side: the prompts cut or zero-padded to ``width`` columns, with every position at or
    past a row's length set to 0 (always a valid id; those positions are never attended to, and
    clearing them keeps garbage ids such as -1 away from embedding lookups)."""
    prompts = np.asarray(prompts)
    lengths = np.asarray(prompt_lengths)
    out = np.zeros((prompts.shape[0], width), np.int32)
    keep = min(width, prompts.shape[1])
    out[:, :keep] = prompts[:, :keep]
    out[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return out


def last_valid(
    values: jax.Array,  # [batch, T, ...]
    num_valid: jax.Array,  # int32 [batch], each >= 1
) -> jax.Array:  # [batch, ...]
    """Each row's entry at its last valid position ``num_valid - 1``."""
    index = (num_valid - 1).astype(jnp.int32)
    index = index.reshape(index.shape + (1,) * (values.ndim - 1))
    return jnp.take_along_axis(values, index, axis=1)[:, 0]


def prefill(
    model: Any,
    params: Any,
    cache: Any,
    prompts: jax.Array,  # int32 [batch, bucket]
    prompt_lengths: jax.Array,  # int32 [batch]
) -> tuple[jax.Array, Any]:  # float32 [batch, vocab], cache
    """Feeds a ragged, right-padded batch in one model call (traceable; call it inside jit).

    Returns the float32 logits [batch, vocab] at each row's last prompt token (the distribution
    of its first new token) and the cache with each row's length advanced by its prompt length.
    The prompt width (``bucket``) is static; everything else is traced.
    """
    num_valid = prompt_lengths.astype(jnp.int32)
    logits, cache = model(params, prompts.astype(jnp.int32), cache, num_valid)
    return last_valid(logits, num_valid).astype(jnp.float32), cache
