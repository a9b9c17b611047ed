"""Row operations on any cache that follows the protocol (batch is every leaf's leading axis).

A cache that defines its own ``gather_rows(rows)`` / ``repeat_rows(times)`` methods (the
optional part of :mod:`decoding.protocol`'s contract, e.g. a beam cache sharing each prompt's
keys/values across its beams) gets them called instead of the leaf-wise default.
"""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp

PyTree = TypeVar("PyTree")


def gather_rows(tree: PyTree, rows: jax.Array) -> PyTree:
    """Takes rows ``rows`` (int32 [new_batch]) from every leaf of ``tree``.

    Used to reorder beams by their parent: ``rows[i]`` is the old row that new row ``i``
    continues. Calls ``tree.gather_rows(rows)`` when the tree defines it.
    """
    own = getattr(tree, "gather_rows", None)
    if callable(own):
        return own(rows)
    return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=0), tree)


def repeat_rows(tree: PyTree, times: int) -> PyTree:
    """Repeats every row ``times`` times in place: rows [a, b] -> [a, a, b, b] for times=2.

    ``times`` is static. Used to expand a prefilled batch into ``batch * beams`` rows. Calls
    ``tree.repeat_rows(times)`` when the tree defines it.
    """
    own = getattr(tree, "repeat_rows", None)
    if callable(own):
        return own(times)
    return jax.tree.map(lambda leaf: jnp.repeat(leaf, times, axis=0), tree)


def set_lengths(cache: PyTree, lengths: jax.Array) -> PyTree:
    """The cache with ``lengths`` (int32 [batch]) as its per-row valid lengths."""
    return cache.replace(lengths=lengths.astype(jnp.int32))
