"""The trie index: a prefix tree of item token sequences flattened into a CSR matrix.

States are numbered breadth first: the root is state 0, then the states one token deep in
lexicographic order of their prefix, then those two tokens deep, and so on. In that order the
edges leaving the states of one level, read row after row, reach exactly the states of the
next level in order, so the edge with global index ``e`` always leads to state ``e + 1``:
the next-state column of the CSR matrix is implicit and costs no memory.

Worked example, items ``[[1, 2], [1, 3], [4, 0]]`` over a vocabulary of 5::

    state 0 (root):  edges 0..1   tokens [1, 4]   -> states 1, 2
    state 1 ("1"):   edges 2..3   tokens [2, 3]   -> states 3, 4
    state 2 ("4"):   edge  4      token  [0]      -> state 5
    states 3, 4, 5:  leaves (complete items), no edges

    indptr = [0, 2, 4, 5]        (rows of the states that may have edges: levels 0 .. depth-1)
    tokens = [1, 4, 2, 3, 0]

The states of the deepest level are always leaves, so ``indptr`` stops before them; a state
beyond the last row of ``indptr`` has an empty row.

Dense levels: for the first ``dense_levels`` levels the index may also hold one bitmap row per
state (bit ``t`` set when token ``t`` is allowed) and, per 32-bit word, the number of set bits
before it. With these, advancing a state or building its vocabulary mask is O(1) gathers even
at the root, where the branching can be the whole vocabulary.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import struct

DEAD_STATE = -1
"""The state reached by a token that no item allows at that point. Dead stays dead."""

BITS_PER_WORD = 32


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id in ``[0, vocab_size)``."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def rank_dtype(vocab_size: int) -> np.dtype:
    """The dtype of the dense per-word prefix counts (each is at most ``vocab_size - 1``)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def words_per_row(vocab_size: int) -> int:
    """32-bit words in one dense bitmap row."""
    return -(-vocab_size // BITS_PER_WORD)


@struct.dataclass
class TrieIndex:
    """A trie of items as a CSR transition matrix; a pytree usable as a ``jax.jit`` argument.

    The arrays are traced leaves. Every other field is static metadata: a different value
    (another index) compiles a new program, as its array shapes would anyway.

    In the shape comments below, ``num_rows`` = states of levels ``0 .. depth-1``,
    ``num_edges`` = states - 1, ``num_dense_states`` = states of levels ``0 .. dense_levels-1``
    and ``words`` = ceil(vocab / 32).
    """

    indptr: jax.Array  # int32 [num_rows + 1]  edges of state s are indptr[s] : indptr[s+1]
    tokens: jax.Array  # uint8 | uint16 | int32 [num_edges]  token of edge e; edge e leads to state e + 1
    dense_bits: jax.Array  # uint32 [num_dense_states, words]  bit t of a row: token t allowed
    dense_rank: jax.Array  # uint16 | int32 [num_dense_states, words]  set bits before each word
    vocab_size: int = struct.field(pytree_node=False)
    depth: int = struct.field(pytree_node=False)  # most tokens in an item, EOS included
    max_branching: tuple[int, ...] = struct.field(pytree_node=False)  # widest row per depth 0..depth-1
    eos_id: int | None = struct.field(pytree_node=False)  # None for a fixed-length index
    fixed_length: bool = struct.field(pytree_node=False)
    num_items: int = struct.field(pytree_node=False)  # distinct items
    level_sizes: tuple[int, ...] = struct.field(pytree_node=False)  # states per level 0..depth
    dense_levels: int = struct.field(pytree_node=False)  # levels with bitmap rows

    @property
    def num_states(self) -> int:
        """All states, the root and the leaves included."""
        return sum(self.level_sizes)

    @property
    def num_edges(self) -> int:
        return self.num_states - 1

    @property
    def num_rows(self) -> int:
        """States with a row in ``indptr`` (every level but the deepest)."""
        return self.indptr.shape[0] - 1

    @property
    def num_dense_states(self) -> int:
        return self.dense_bits.shape[0]

    def sparse_branching(self) -> int:
        """The widest row among states outside the dense levels (0 when every level is dense)."""
        return max(self.max_branching[self.dense_levels :], default=0)

    # The constraint protocol as methods (the ops of :mod:`constraints.ops`), so decoding's
    # sparse path can take any layered constraint with the same methods (e.g.
    # :class:`constraints.item_filter.ItemFilter`) and its dense paths any automaton with
    # initial_state / allowed_mask / advance / is_complete (e.g. :class:`constraints.dfa.TokenDFA`).

    def initial_state(self, shape: int | tuple[int, ...]) -> jax.Array:  # int32 [*shape]
        from constraints import ops  # ops imports this module

        return ops.initial_state(self, shape)

    def allowed_mask(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [..., vocab]
        from constraints import ops

        return ops.allowed_mask(self, state)

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:  # int32 [...], int [...] -> int32 [...]
        from constraints import ops

        return ops.advance(self, state, token)

    def candidates(
        self,
        state: jax.Array,  # int32 [...]
        depth: int,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:  # int32 [..., K], int32 [..., K], bool [..., K]
        from constraints import ops

        return ops.candidates(self, state, depth)

    def is_complete(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [...]
        from constraints import ops

        return ops.is_complete(self, state)
