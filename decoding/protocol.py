"""The model boundary: the one seam every decoding algorithm goes through.

Decoding never imports ``models/``. It accepts any callable that has the shape of
:class:`DecodeModel` and any cache pytree that has the shape of :class:`DecodeCache`.

A decode step is a pure function::

    logits, cache = model(params, tokens, cache, num_valid)
    # tokens:    int32   [batch, T]       T new tokens per row (1 = step, k+1 = verify, P = prefill)
    # num_valid: int32   [batch]          how many of the T tokens are real; the rest is padding
    # logits:    float32 [batch, T, vocab]   entries at positions >= num_valid are meaningless
    # cache:     the same pytree, with lengths advanced by num_valid

The cache contract:

* ``cache.lengths``: int32 [batch], the number of valid entries of each row. Positions of
  new tokens are derived from it. Entries at or beyond a row's length are stale: they are
  masked by attention, never read. Decoding rolls a row back (speculative rejection) simply
  by lowering its length with ``cache.replace(lengths=...)``.
* ``cache.capacity``: a Python int, the fixed number of positions per row. Writes that would
  land at or past the capacity (padding columns of a ragged call) are dropped, never clamped
  onto valid entries.
* Every array leaf of the cache has the batch as its leading axis. Decoding relies on this to
  reorder rows by parent beam, repeat rows for beams, and shard rows across devices without
  knowing the model (see :mod:`decoding.cache_rows`).
* No hidden mutable state: the cache goes in and comes out.

Optional row methods. A cache may define its own row operations; :mod:`decoding.cache_rows`
then calls them instead of mapping every leaf:

* ``cache.gather_rows(rows)`` (``rows`` int32 [new_batch], traced): new row ``i`` continues
  old row ``rows[i]``. Beam search calls it to reorder beams by parent, and the sparse path
  also for the expansion from ``batch`` to ``batch * beams`` rows (``rows[i]`` is then row
  ``i // beams``). Beam search's rows never leave their prompt: ``rows[i]`` is always a row
  of prompt ``i // beams``.
* ``cache.repeat_rows(times)`` (``times`` a static int): the expansion, every row repeated
  ``times`` times in place (rows [a, b] -> [a, a, b, b]).

Such a cache may hold leaves that lead with the prompts rather than the rows (e.g.
``models.BeamKVCache`` keeps each prompt's keys/values once, [batch, ...], and only its beams'
suffixes per row, [batch * beams, ...]); splitting every leaf's leading axis evenly over
devices still keeps each prompt's beams with it, since rows are beam-major within a prompt.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import jax

CacheT = TypeVar("CacheT", bound="DecodeCache")


@runtime_checkable
class DecodeCache(Protocol):
    """Structural type of a decode cache (see the module docstring for the contract)."""

    lengths: jax.Array  # int32 [batch]

    @property
    def capacity(self) -> int:
        """Positions per row (static)."""
        ...

    def replace(self: CacheT, **changes: Any) -> CacheT:
        """A copy with some fields replaced (``flax.struct.dataclass`` provides this)."""
        ...


@runtime_checkable
class DecodeModel(Protocol):
    """Structural type of a decode step.

    Implementations must be hashable (they are static arguments of the jitted loops): a
    frozen dataclass holding a config, or a module-level function, both work.
    """

    def __call__(
        self,
        params: Any,
        tokens: jax.Array,  # int32 [batch, T]
        cache: CacheT,
        num_valid: jax.Array,  # int32 [batch]
    ) -> tuple[jax.Array, CacheT]:  # float32 [batch, T, vocab], cache
        ...
