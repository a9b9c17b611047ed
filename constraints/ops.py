"""On-device trie ops: pure JAX over a :class:`~constraints.index.TrieIndex`, no host callbacks.

Every op takes states of any leading shape ``[...]`` (int32 state ids; ``DEAD_STATE`` = -1) and
works under ``jax.jit`` with the index as a traced argument: the index's arrays are traced,
its metadata (vocab size, depth, branching) is static and fixes the gather widths.

Example, items ``[[1, 2], [1, 3], [4, 0]]`` (see :mod:`constraints.index`)::

    s = initial_state(index, (2,))             # [0, 0]
    toks, nxt, valid = candidates(index, s, 0)  # toks [[1, 4], [1, 4]], nxt [[1, 2], [1, 2]]
    s = advance(index, s, jnp.array([1, 2]))    # [1, -1]: no item starts with 2
    allowed_mask(index, s)[0, :5]               # [F, F, T, T, F]
    s = advance(index, s, jnp.array([3, 3]))    # [4, -1]
    is_complete(index, s)                       # [True, False]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from constraints.index import BITS_PER_WORD, DEAD_STATE, TrieIndex


def initial_state(index: TrieIndex, shape: int | Sequence[int]) -> jax.Array:
    """The root state for every entry of ``shape`` (static). Returns int32 [*shape]."""
    del index  # the root is state 0 in every index
    return jnp.zeros(shape, dtype=jnp.int32)


def _row_bounds(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
) -> tuple[jax.Array, jax.Array]:  # int32 [...], int32 [...]
    """First and one-past-last edge of each state's row: int32 [...] each.

    Dead states (-1) and states past the last row (the deepest level) get an empty row.
    """
    rows = index.num_rows
    start = index.indptr[jnp.clip(state, 0, rows)]
    end = index.indptr[jnp.clip(state + 1, 0, rows)]
    return start, end


def _edge_tokens(
    index: TrieIndex,
    edge: jax.Array,  # int32 [...]
) -> jax.Array:  # int32 [...]
    """int32 tokens of edges ``edge`` (int32 [...]), clamped into range (callers mask)."""
    return index.tokens[jnp.clip(edge, 0, index.num_edges - 1)].astype(jnp.int32)


def candidates(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
    depth: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # int32 [..., K], int32 [..., K], bool [..., K]
    """The allowed next tokens of states that are ``depth`` tokens deep.

    Args:
      index: the trie (arrays traced, metadata static).
      state: int32 [...], states at depth ``depth`` (or dead, or complete: no candidates).
      depth: static Python int in ``[0, index.depth)``; fixes ``K = index.max_branching[depth]``.

    Returns:
      ``tokens`` int32 [..., K] in increasing order, ``next_state`` int32 [..., K] and
      ``valid`` bool [..., K]. Slots past a state's last edge have ``valid=False``, token -1
      and next state ``DEAD_STATE``.
    """
    if not 0 <= depth < index.depth:
        raise ValueError(f"depth must be in [0, {index.depth}) for this index, got {depth}")
    width = index.max_branching[depth]
    state = jnp.asarray(state, jnp.int32)
    start, end = _row_bounds(index, state)
    edge = start[..., None] + jnp.arange(width, dtype=jnp.int32)
    valid = edge < end[..., None]
    if width >= _WINDOW_MIN_WIDTH and width <= index.num_edges:
        row_tokens = _row_windows(index, start, width)
    else:
        row_tokens = _edge_tokens(index, edge)
    tokens = jnp.where(valid, row_tokens, -1)
    next_state = jnp.where(valid, edge + 1, DEAD_STATE)
    return tokens, next_state, valid


_WINDOW_MIN_WIDTH = 32
"""From this candidate width up, :func:`candidates` reads each row as one contiguous slice (a
gather of ``width``-long windows, copied row by row) rather than ``width`` scattered reads: on
CPU about 1.5x faster at ``width`` ~ 2048; below this width the element gather is as fast."""


def _row_windows(
    index: TrieIndex,
    start: jax.Array,  # int32 [...]
    width: int,
) -> jax.Array:  # int32 [..., width]
    """int32 tokens of edges ``start .. start + width - 1`` of each row (``width <= num_edges``).

    A window running past the last edge is read from ``num_edges - width`` instead and shifted
    back into place (only rows near the end of the array; the caller masks slots past each row).
    """
    window_start = jnp.minimum(start, index.num_edges - width)
    shift = start - window_start  # int32 [...], > 0 only for windows clamped at the end
    flat = jax.vmap(lambda s: jax.lax.dynamic_slice(index.tokens, (s,), (width,)))(window_start.reshape(-1))
    windows = flat.reshape(start.shape + (width,))
    offsets = jnp.minimum(jnp.arange(width, dtype=jnp.int32) + shift[..., None], width - 1)
    windows = jax.lax.cond(
        jnp.any(shift > 0),
        lambda w: jnp.take_along_axis(w, offsets, axis=-1),
        lambda w: w,
        windows,
    )
    return windows.astype(jnp.int32)


def _sparse_mask(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
    width: int,
) -> jax.Array:  # bool [..., vocab]
    """bool [..., vocab] from the first ``width`` edges of each row (a scatter)."""
    vocab = index.vocab_size
    start, end = _row_bounds(index, state)
    edge = start[..., None] + jnp.arange(width, dtype=jnp.int32)
    tokens = jnp.where(edge < end[..., None], _edge_tokens(index, edge), vocab).reshape(-1, width)
    rows = jnp.arange(tokens.shape[0])[:, None]
    mask = jnp.zeros((tokens.shape[0], vocab + 1), dtype=bool).at[rows, tokens].set(True)
    return mask[:, :vocab].reshape(state.shape + (vocab,))


def _dense_mask(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
) -> jax.Array:  # bool [..., vocab]
    """bool [..., vocab] unpacked from the dense bitmap rows (states clamped into the table)."""
    words = index.dense_bits[jnp.clip(state, 0, index.num_dense_states - 1)]
    shifts = jnp.arange(BITS_PER_WORD, dtype=jnp.uint32)
    bits = (words[..., None] >> shifts) & jnp.uint32(1)
    return bits.reshape(state.shape + (-1,))[..., : index.vocab_size].astype(bool)


def allowed_mask(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
) -> jax.Array:  # bool [..., vocab]
    """Which tokens each state allows: bool [..., vocab] for state int32 [...].

    ``state`` and the index's arrays are traced; the index's metadata is static. All False for
    dead and complete states. States at dense levels read their bitmap row;
    the others scatter their (at most ``index.sparse_branching()``) edge tokens.
    """
    state = jnp.asarray(state, jnp.int32)
    mask = jnp.zeros(state.shape + (index.vocab_size,), dtype=bool)
    width = index.sparse_branching()
    if width:
        mask = _sparse_mask(index, state, width)
    if index.num_dense_states:
        in_dense = (state >= 0) & (state < index.num_dense_states)
        mask = jnp.where(in_dense[..., None], _dense_mask(index, state), mask)
    return mask


def _sparse_advance(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
    token: jax.Array,  # int32 [...], in the vocabulary
    width: int,
) -> jax.Array:  # int32 [...]
    """Binary search for ``token`` in each sorted row of at most ``width`` edges."""
    start, end = _row_bounds(index, state)
    lo, hi = start, end
    for _ in range(width.bit_length()):  # each step at least halves hi - lo
        mid = lo + (hi - lo) // 2
        active = lo < hi
        go_right = active & (_edge_tokens(index, mid) < token)
        lo = jnp.where(go_right, mid + 1, lo)
        hi = jnp.where(active & ~go_right, mid, hi)
    found = (lo < end) & (_edge_tokens(index, lo) == token)
    return jnp.where(found, lo + 1, DEAD_STATE)


def bitmap_rank(
    dense_bits: jax.Array,  # uint32 [rows, words]  bit t of a row: token t allowed
    dense_rank: jax.Array,  # uint16 | int32 [rows, words]  set bits before each word
    row: jax.Array,  # int32 [...]  rows in range
    token: jax.Array,  # int32 [...]  tokens in the vocabulary
) -> tuple[jax.Array, jax.Array]:  # bool [...], int32 [...]
    """Whether bit ``token`` of bitmap row ``row`` is set, and how many set bits come before it
    (one gathered word and one popcount): the child edge is the row's first edge plus that count."""
    word_index = token // BITS_PER_WORD
    bit = (token % BITS_PER_WORD).astype(jnp.uint32)
    word = dense_bits[row, word_index]
    present = ((word >> bit) & jnp.uint32(1)) == 1
    below = jax.lax.population_count(word & ((jnp.uint32(1) << bit) - jnp.uint32(1))).astype(jnp.int32)
    return present, dense_rank[row, word_index].astype(jnp.int32) + below


def _dense_advance(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
    token: jax.Array,  # int32 [...], in the vocabulary
) -> jax.Array:  # int32 [...]
    """Rank query in the dense bitmap row: child edge = first edge + set bits below ``token``."""
    row = jnp.clip(state, 0, index.num_dense_states - 1)
    present, before = bitmap_rank(index.dense_bits, index.dense_rank, row, token)
    return jnp.where(present, index.indptr[row] + before + 1, DEAD_STATE)


def advance(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
    token: jax.Array,  # int [...], broadcastable with state
) -> jax.Array:  # int32 [...]
    """The state reached from ``state`` by ``token``; ``DEAD_STATE`` if no item allows it.

    Args:
      index: the trie (arrays traced, metadata static).
      state: int32 [...]; dead states stay dead, complete states have no way forward.
      token: int [...] broadcastable with ``state``; ids outside the vocabulary lead to
        ``DEAD_STATE``.

    Returns:
      int32 of the broadcast shape.
    """
    state, token = jnp.broadcast_arrays(jnp.asarray(state, jnp.int32), jnp.asarray(token, jnp.int32))
    in_vocab = (token >= 0) & (token < index.vocab_size)
    token = jnp.clip(token, 0, index.vocab_size - 1)
    width = index.sparse_branching()
    next_state = jnp.full(state.shape, DEAD_STATE, dtype=jnp.int32)
    if width:
        next_state = _sparse_advance(index, state, token, width)
    if index.num_dense_states:
        in_dense = state < index.num_dense_states
        next_state = jnp.where(in_dense, _dense_advance(index, state, token), next_state)
    return jnp.where((state >= 0) & in_vocab, next_state, DEAD_STATE)


def is_complete(
    index: TrieIndex,
    state: jax.Array,  # int32 [...]
) -> jax.Array:  # bool [...]
    """bool [...]: ``state`` (int32 [...], traced) is a leaf, i.e. a whole item has been emitted.

    For a variable-length index the leaves are exactly the states right after an EOS.
    """
    state = jnp.asarray(state, jnp.int32)
    start, end = _row_bounds(index, state)
    return (state >= 0) & (state < index.num_states) & (start == end)
