"""Pieces shared by the baselines: item validation, sorted-trie statistics and the prefix state.

Every baseline (and the STATIC adapter) exposes one *mask interface*, so a benchmark plugs any
of them into the same constrained decode loop::

    state = method.initial_state(shape)      # a pytree; every leaf has leading shape [*shape]
    mask = method.allowed_mask(state)        # bool [*shape, vocab]
    state = method.advance(state, token)     # token: int32 [*shape]
    done = method.is_complete(state)         # bool [*shape]

The baselines handle fixed-length item sets (every item has ``depth`` tokens), the
generative-retrieval setting they are measured in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def check_items(items, vocab_size: int) -> np.ndarray:
    """Validates a fixed-length item set and returns it as int32 [num_items, depth] (NumPy).

    Raises ValueError for a non-2-D or empty array, a non-integer dtype, a non-positive vocab
    size, or a token outside [0, vocab_size).
    """
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    items = np.asarray(items)
    if items.ndim != 2 or items.shape[0] == 0 or items.shape[1] == 0:
        raise ValueError(f"items must be a non-empty int array [num_items, depth], got shape {items.shape}")
    if not np.issubdtype(items.dtype, np.integer):
        raise ValueError(f"items must hold integers, got dtype {items.dtype}")
    low, high = int(items.min()), int(items.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"item tokens must lie in [0, {vocab_size}), got values in [{low}, {high}]")
    return items.astype(np.int32, copy=False)


def sort_unique(items: np.ndarray) -> np.ndarray:
    """Items int32 [num_items, depth] sorted lexicographically with duplicates removed."""
    order = np.lexsort(items.T[::-1])
    ordered = items[order]
    if len(ordered) > 1:
        keep = np.ones(len(ordered), bool)
        keep[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
        ordered = ordered[keep]
    return ordered


def first_difference(ordered: np.ndarray) -> np.ndarray:
    """int32 [num_items]: the first column where sorted item i differs from item i - 1 (0 for i = 0)."""
    num_items, depth = ordered.shape
    first = np.zeros(num_items, np.int32)
    if num_items > 1:
        differs = ordered[1:] != ordered[:-1]  # bool [num_items - 1, depth]
        first[1:] = np.argmax(differs, axis=1)
    return first


def max_branching(ordered: np.ndarray) -> tuple[int, ...]:
    """The largest number of distinct next tokens after any prefix, per depth (sorted unique items)."""
    first = first_difference(ordered)
    result = []
    for d in range(ordered.shape[1]):
        # Item 0 starts every group (its first difference is 0).
        parent_starts = np.flatnonzero(first <= d - 1) if d > 0 else np.array([0])
        child_starts = (first <= d).astype(np.int64)
        result.append(int(np.add.reduceat(child_starts, parent_starts).max()))
    return tuple(result)


@struct.dataclass
class PrefixState:
    """The tokens emitted so far: the state of the prefix-based baselines (CPU trie, PPV).

    A row whose ``length`` exceeds the item depth has been advanced past a complete item: it is
    dead (nothing allowed, not complete).
    """

    prefix: jax.Array  # int32 [..., depth]   entries at positions >= length are 0
    length: jax.Array  # int32 [...]          tokens emitted so far

    @classmethod
    def empty(cls, shape: tuple[int, ...], depth: int) -> "PrefixState":
        return cls(prefix=jnp.zeros(tuple(shape) + (depth,), jnp.int32), length=jnp.zeros(tuple(shape), jnp.int32))

    def append(self, token: jax.Array) -> "PrefixState":
        """Writes ``token`` (int32 [...]) at each row's length and advances the length by one."""
        depth = self.prefix.shape[-1]
        at = jnp.arange(depth, dtype=jnp.int32) == self.length[..., None]
        prefix = jnp.where(at, jnp.asarray(token, jnp.int32)[..., None], self.prefix)
        return PrefixState(prefix=prefix, length=jnp.minimum(self.length + 1, depth + 1))
