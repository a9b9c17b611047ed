"""A general token-level DFA (cycles allowed) behind the dense constraint protocol.

The second automaton beside :class:`constraints.TrieIndex` (:mod:`constraints.protocol`):
decoding (``generate``, the dense path of ``beam_search``, ``speculative_generate``) drives it
through ``initial_state`` / ``allowed_mask`` / ``advance`` / ``is_complete`` only.

Storage, CSR like the trie but with an explicit next-state column (cycles allowed)::

    state s (0 .. num_states - 1): edges indptr[s] : indptr[s + 1], tokens sorted increasingly,
                                    edge e leads to next_state[e]
    state 0:                        the initial state
    state done = num_states - 1:    the only complete state; no edges (absorbing)
    DEAD_STATE (-1):                dead stays dead

EOS is the only way to finish: an accepting state has the edge ``eos_id -> done`` and no other
state allows EOS. So ``is_complete(state)`` means "EOS has been emitted". Every state but
``done`` is live (some token sequence from it reaches ``done``), so a row that never leaves the
allowed mask can always still finish.

States with many edges also get a bit-packed dense row (bit ``t`` set when token ``t`` leaves
the state, plus per-word prefix counts, as the trie's dense levels,
:mod:`constraints.dense`): their mask is one gathered row and their advance one rank query; the
other states scatter / binary-search at most ``sparse_width`` edges.

Worked example, ``a(b)*`` over tokens ``["a", "b", "ab", <eos>]`` (eos_id 3), minimal (the
automaton :func:`constraints.regex.compile_regex` builds may keep equivalent states apart: it
does not minimize)::

    state 0 (start):        a -> 1, ab -> 1
    state 1 (accepting):    b -> 1, <eos> -> 2
    state 2 (done):         no edges
    indptr = [0, 2, 4, 4], tokens = [0, 2, 1, 3], next_state = [1, 1, 1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from constraints.dense import dense_row_bytes, dense_tables
from constraints.index import BITS_PER_WORD, DEAD_STATE, token_dtype, words_per_row
from constraints.ops import bitmap_rank

DEFAULT_CYCLIC_DEPTH = 64
"""``depth`` of an automaton with a cycle (unbounded matches): the default ``max_new_tokens``
of decoding. A bound, not a guarantee: a row may run out of room before emitting EOS (then its
``complete`` flag is False and its tokens are a valid prefix)."""


@struct.dataclass
class TokenDFA:
    """A token-level DFA as a CSR transition matrix; a pytree usable as a ``jax.jit`` argument.

    The arrays are traced leaves; the other fields are static metadata. Shapes: ``num_states``
    (``done`` included), ``num_edges``, ``num_dense`` states with a dense row, ``words`` =
    ceil(vocab / 32).
    """

    indptr: jax.Array  # int32 [num_states + 1]
    tokens: jax.Array  # uint8 | uint16 | int32 [num_edges]  sorted within each row
    next_state: jax.Array  # int32 [num_edges]
    accepting: jax.Array  # bool [num_states]  EOS allowed here (done is not accepting)
    dense_row: jax.Array  # int32 [num_states]  row in dense_bits, -1 for sparse states
    dense_bits: jax.Array  # uint32 [num_dense, words]
    dense_rank: jax.Array  # uint16 | int32 [num_dense, words]  set bits before each word
    vocab_size: int = struct.field(pytree_node=False)
    eos_id: int = struct.field(pytree_node=False)
    depth: int = struct.field(pytree_node=False)  # default max_new_tokens (see module docstring)
    acyclic: bool = struct.field(pytree_node=False)  # depth is exact: every match fits
    sparse_width: int = struct.field(pytree_node=False)  # widest row among sparse states
    fixed_length: bool = struct.field(pytree_node=False, default=False)

    @property
    def num_states(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def done_state(self) -> int:
        return self.num_states - 1

    @property
    def num_edges(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_dense(self) -> int:
        return self.dense_bits.shape[0]

    # -- the dense constraint protocol -------------------------------------------------------

    def initial_state(self, shape: int | Sequence[int]) -> jax.Array:  # int32 [*shape]
        return jnp.zeros(shape, dtype=jnp.int32)

    def is_complete(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [...]
        return jnp.asarray(state, jnp.int32) == self.done_state

    def _bounds(self, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        """First and one-past-last edge per state (empty for dead states)."""
        clipped = jnp.clip(state, 0, self.num_states - 1)
        start, end = self.indptr[clipped], self.indptr[clipped + 1]
        return start, jnp.where(state >= 0, end, start)

    def _edge_tokens(self, edge: jax.Array) -> jax.Array:
        return self.tokens[jnp.clip(edge, 0, max(self.num_edges - 1, 0))].astype(jnp.int32)

    def allowed_mask(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [..., vocab]
        """bool [..., vocab]; all False for dead and done states."""
        state = jnp.asarray(state, jnp.int32)
        vocab = self.vocab_size
        mask = jnp.zeros(state.shape + (vocab,), dtype=bool)
        if self.sparse_width:
            width = self.sparse_width
            start, end = self._bounds(state)
            edge = start[..., None] + jnp.arange(width, dtype=jnp.int32)
            toks = jnp.where(edge < end[..., None], self._edge_tokens(edge), vocab).reshape(-1, width)
            rows = jnp.arange(toks.shape[0])[:, None]
            flat = jnp.zeros((toks.shape[0], vocab + 1), dtype=bool).at[rows, toks].set(True)
            mask = flat[:, :vocab].reshape(state.shape + (vocab,))
        if self.num_dense:
            row = self.dense_row[jnp.clip(state, 0, self.num_states - 1)]
            words = self.dense_bits[jnp.clip(row, 0, self.num_dense - 1)]
            shifts = jnp.arange(BITS_PER_WORD, dtype=jnp.uint32)
            bits = ((words[..., None] >> shifts) & jnp.uint32(1)).reshape(state.shape + (-1,))[..., :vocab]
            mask = jnp.where(((state >= 0) & (row >= 0))[..., None], bits.astype(bool), mask)
        return mask

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:  # int32 [...], int [...] -> int32 [...]
        """The state after ``token``; ``DEAD_STATE`` when the token is not allowed (or out of
        the vocabulary), and from dead or done states."""
        state, token = jnp.broadcast_arrays(jnp.asarray(state, jnp.int32), jnp.asarray(token, jnp.int32))
        in_vocab = (token >= 0) & (token < self.vocab_size)
        token = jnp.clip(token, 0, self.vocab_size - 1)
        start, end = self._bounds(state)
        found_edge = jnp.full(state.shape, -1, jnp.int32)
        if self.sparse_width:
            lo, hi = start, end
            for _ in range(self.sparse_width.bit_length()):  # each step at least halves hi - lo
                mid = lo + (hi - lo) // 2
                active = lo < hi
                go_right = active & (self._edge_tokens(mid) < token)
                lo = jnp.where(go_right, mid + 1, lo)
                hi = jnp.where(active & ~go_right, mid, hi)
            found = (lo < end) & (self._edge_tokens(lo) == token)
            found_edge = jnp.where(found, lo, -1)
        if self.num_dense:
            row = self.dense_row[jnp.clip(state, 0, self.num_states - 1)]
            safe_row = jnp.clip(row, 0, self.num_dense - 1)
            present, before = bitmap_rank(self.dense_bits, self.dense_rank, safe_row, token)
            edge = start + before
            found_edge = jnp.where(row >= 0, jnp.where(present, edge, -1), found_edge)
        nxt = self.next_state[jnp.clip(found_edge, 0, max(self.num_edges - 1, 0))] if self.num_edges else found_edge
        ok = (state >= 0) & in_vocab & (found_edge >= 0)
        return jnp.where(ok, nxt, DEAD_STATE)


def _longest_path(num_states: int, src: np.ndarray, dst: np.ndarray) -> int | None:
    """Most edges on a path from state 0 (Kahn's order); None when the graph has a cycle."""
    indegree = np.bincount(dst, minlength=num_states)
    order = np.argsort(src, kind="stable")
    src_sorted, dst_sorted = src[order], dst[order]
    starts = np.searchsorted(src_sorted, np.arange(num_states + 1))
    longest = np.full(num_states, -1, np.int64)
    longest[0] = 0
    queue = [int(s) for s in np.flatnonzero(indegree == 0)]
    seen = 0
    while queue:
        s = queue.pop()
        seen += 1
        for d in dst_sorted[starts[s] : starts[s + 1]]:
            if longest[s] >= 0:
                longest[d] = max(longest[d], longest[s] + 1)
            indegree[d] -= 1
            if indegree[d] == 0:
                queue.append(int(d))
    return int(longest.max()) if seen == num_states else None


def build_token_dfa(
    num_states: int,
    src: np.ndarray,  # int [num_edges]  non-EOS edges between live states 0 .. num_states-1
    token: np.ndarray,  # int [num_edges]
    dst: np.ndarray,  # int [num_edges]
    accepting: np.ndarray,  # bool [num_states]
    vocab_size: int,
    eos_id: int,
    *,
    cyclic_depth: int = DEFAULT_CYCLIC_DEPTH,
    dense_min_degree: int | None = None,
) -> TokenDFA:
    """A :class:`TokenDFA` from an edge list over states ``0 .. num_states - 1`` (0 initial,
    all live) plus the EOS edges of the accepting states to a new ``done`` state.

    ``dense_min_degree``: states with at least this many edges get a dense row; default, those
    whose dense row costs fewer bytes than their sparse edges. ``depth``: the longest match,
    EOS included, when the automaton is acyclic; ``cyclic_depth`` otherwise.
    """
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id must be in [0, {vocab_size}), got {eos_id}")
    src, token, dst = (np.asarray(a, np.int64) for a in (src, token, dst))
    accepting = np.asarray(accepting, bool)
    if np.any(token == eos_id):
        raise ValueError("EOS may only appear as the edge from an accepting state to done")
    done = num_states
    acc = np.flatnonzero(accepting)
    all_src = np.concatenate([src, acc])
    all_tok = np.concatenate([token, np.full(acc.shape, eos_id)])
    all_dst = np.concatenate([dst, np.full(acc.shape, done)])
    order = np.lexsort((all_tok, all_src))
    all_src, all_tok, all_dst = all_src[order], all_tok[order], all_dst[order]
    total = num_states + 1
    indptr = np.searchsorted(all_src, np.arange(total + 1)).astype(np.int32)
    tokens = all_tok.astype(token_dtype(vocab_size))
    degree = np.diff(indptr)
    if dense_min_degree is None:
        edge_bytes = token_dtype(vocab_size).itemsize + 4
        dense_min_degree = max(1, -(-dense_row_bytes(vocab_size) // edge_bytes))
    is_dense = degree >= dense_min_degree
    dense_states = np.flatnonzero(is_dense)
    dense_row = np.full(total, -1, np.int32)
    dense_row[dense_states] = np.arange(dense_states.size, dtype=np.int32)
    # Dense rows through the trie's builder: a CSR of the dense states only.
    sub_indptr = np.concatenate([[0], np.cumsum(degree[dense_states])]).astype(np.int64)
    sub_tokens = all_tok[is_dense[all_src]]  # edges are sorted by state
    bits, rank = dense_tables(sub_indptr, sub_tokens, int(dense_states.size), vocab_size)
    longest = _longest_path(num_states, src, dst)
    depth = cyclic_depth if longest is None else longest + 1
    accepting_all = np.concatenate([accepting, [False]])
    return TokenDFA(
        indptr=jnp.asarray(indptr),
        tokens=jnp.asarray(tokens),
        next_state=jnp.asarray(all_dst.astype(np.int32)),
        accepting=jnp.asarray(accepting_all),
        dense_row=jnp.asarray(dense_row),
        dense_bits=jnp.asarray(bits.reshape(-1, words_per_row(vocab_size))),
        dense_rank=jnp.asarray(rank.reshape(-1, words_per_row(vocab_size))),
        vocab_size=int(vocab_size),
        eos_id=int(eos_id),
        depth=int(depth),
        acyclic=longest is not None,
        sparse_width=int(degree[~is_dense].max(initial=0)),
    )
