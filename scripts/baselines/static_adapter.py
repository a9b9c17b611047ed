"""The STATIC :class:`~constraints.TrieIndex` with its dense mask only: the "STATIC (dense mask)" row.

:func:`decoding.beam_search.beam_search` takes its SPARSE path for a fixed-length constraint
with ``candidates`` (a ``TrieIndex`` itself: the "STATIC (sparse)" row), and its DENSE path
(``beams x vocab`` scores, masked) for every other constraint. This wrapper forwards the
protocol (``constraints.initial_state / allowed_mask / advance / is_complete`` and the static
metadata) but not ``candidates`` or ``max_branching``, so STATIC's trie runs through the same
dense path as every baseline. State: int32 [...] trie state ids.
"""

from __future__ import annotations

import jax
from flax import struct

import constraints


@struct.dataclass
class StaticMask:
    """A ``TrieIndex`` behind the dense protocol only (its arrays are traced, its metadata static)."""

    index: constraints.TrieIndex

    @property
    def vocab_size(self) -> int:
        return self.index.vocab_size

    @property
    def depth(self) -> int:
        return self.index.depth

    @property
    def fixed_length(self) -> bool:
        return self.index.fixed_length

    @property
    def eos_id(self) -> int | None:
        return self.index.eos_id

    def nbytes(self) -> int:
        return int(constraints.index_nbytes(self.index))

    def initial_state(self, shape: int | tuple[int, ...]) -> jax.Array:  # int32 [*shape]
        return constraints.initial_state(self.index, shape)

    def allowed_mask(self, state: jax.Array) -> jax.Array:  # state int32 [...] -> bool [..., vocab]
        return constraints.allowed_mask(self.index, state)

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:  # int32 [...], int32 [...]
        return constraints.advance(self.index, state, token)

    def is_complete(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [...]
        return constraints.is_complete(self.index, state)
