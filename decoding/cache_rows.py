"""Row operations on any cache that follows the protocol (batch is every leaf's leading axis)."""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp

PyTree = TypeVar("PyTree")


def gather_rows(tree: PyTree, rows: jax.Array) -> PyTree:
    """Takes rows ``rows`` (int32 [new_batch]) from every leaf of ``tree``.

    Used to reorder beams by their parent: ``rows[i]`` is the old row that new row ``i``
    continues.
    """
    return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=0), tree)


def repeat_rows(tree: PyTree, times: int) -> PyTree:
    """Repeats every row ``times`` times in place: rows [a, b] -> [a, a, b, b] for times=2.

    ``times`` is static. Used to expand a prefilled batch into ``batch * beams`` rows.
    """
    return jax.tree.map(lambda leaf: jnp.repeat(leaf, times, axis=0), tree)


def set_lengths(cache: PyTree, lengths: jax.Array) -> PyTree:
    """The cache with ``lengths`` (int32 [batch]) as its per-row valid lengths."""
    return cache.replace(lengths=lengths.astype(jnp.int32))
