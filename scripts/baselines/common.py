"""Pieces shared by the baselines: item validation and the prefix state.

Every baseline (and the STATIC dense-mask adapter) is a constraint in the library's protocol
(/work/shared/DESIGN.md, "Constraints as automata"; ``constraints.protocol.Constraint``), so
``decoding.beam_search.beam_search`` runs it on its dense path like any automaton::

    c.depth, c.fixed_length, c.eos_id, c.vocab_size   # static metadata (fixed_length True, eos_id None)
    state = c.initial_state(shape)      # a pytree; every leaf has leading shape [*shape]
    mask = c.allowed_mask(state)        # bool [*shape, vocab]
    state = c.advance(state, token)     # token: int32 [*shape]
    done = c.is_complete(state)         # bool [*shape]

The baselines handle fixed-length item sets (every item has ``depth`` tokens), the
generative-retrieval setting they are measured in. None of them has ``candidates``, so beam
search never takes its sparse path with one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from constraints import validate


def check_items(items, vocab_size: int) -> np.ndarray:
    """Validates a fixed-length item set with the library's builder checks and returns it as
    int32 [num_items, depth] (NumPy).

    Raises ValueError (naming the bad row) for a non-2-D or empty array, a non-integer dtype, a
    bad vocab size, or a token outside [0, vocab_size).
    """
    vocab_size = validate.check_vocab_size(vocab_size)
    return validate.fixed_length_rows(items, vocab_size).astype(np.int32, copy=False)


def as_shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    """A state shape as a tuple (the protocol accepts an int for one axis)."""
    return (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)


@struct.dataclass
class PrefixState:
    """The tokens emitted so far: the state of the prefix-based baselines (CPU trie, PPV).

    A row whose ``length`` exceeds the item depth has been advanced past a complete item: it is
    dead (nothing allowed, not complete).
    """

    prefix: jax.Array  # int32 [..., depth]   entries at positions >= length are 0
    length: jax.Array  # int32 [...]          tokens emitted so far

    @classmethod
    def empty(cls, shape: int | tuple[int, ...], depth: int) -> "PrefixState":
        shape = as_shape(shape)
        return cls(prefix=jnp.zeros(shape + (depth,), jnp.int32), length=jnp.zeros(shape, jnp.int32))

    def append(self, token: jax.Array) -> "PrefixState":
        """Writes ``token`` (int32 [...]) at each row's length and advances the length by one."""
        depth = self.prefix.shape[-1]
        at = jnp.arange(depth, dtype=jnp.int32) == self.length[..., None]
        prefix = jnp.where(at, jnp.asarray(token, jnp.int32)[..., None], self.prefix)
        return PrefixState(prefix=prefix, length=jnp.minimum(self.length + 1, depth + 1))
