"""The STATIC :class:`~constraints.TrieIndex` behind the baselines' mask interface.

A thin wrapper over ``constraints.initial_state / allowed_mask / advance / is_complete``, so the
benchmark's dense beam loop treats STATIC exactly like every baseline. State: int32 [...]
trie state ids.
"""

from __future__ import annotations

import jax
from flax import struct

import constraints


@struct.dataclass
class StaticMask:
    """Mask interface over a STATIC ``TrieIndex`` (its arrays are traced, its metadata static)."""

    index: constraints.TrieIndex

    @property
    def vocab_size(self) -> int:
        return self.index.vocab_size

    @property
    def depth(self) -> int:
        return self.index.depth

    def nbytes(self) -> int:
        return int(constraints.index_nbytes(self.index))

    def initial_state(self, shape: tuple[int, ...]) -> jax.Array:  # int32 [*shape]
        return constraints.initial_state(self.index, tuple(shape))

    def allowed_mask(self, state: jax.Array) -> jax.Array:  # state int32 [...] -> bool [..., vocab]
        return constraints.allowed_mask(self.index, state)

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:  # int32 [...], int32 [...]
        return constraints.advance(self.index, state, token)

    def is_complete(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [...]
        return constraints.is_complete(self.index, state)
