"""Dense bitmap rows for the first levels of a trie (offline, NumPy).

Each state of a dense level gets ``words = ceil(vocab / 32)`` uint32 words whose bit ``t`` is set
when token ``t`` leaves the state, plus, per word, the number of set bits in the words before it.
The child reached by token ``t`` is then the state's first edge plus the set bits below ``t``
(a rank query: one gathered word, one popcount), whatever the branching.
"""

from __future__ import annotations

import numpy as np

from constraints.index import BITS_PER_WORD, rank_dtype, words_per_row


def dense_row_bytes(vocab_size: int) -> int:
    """Bytes one dense state costs (bitmap words and prefix counts)."""
    return words_per_row(vocab_size) * (4 + rank_dtype(vocab_size).itemsize)


def choose_dense_levels(level_sizes: tuple[int, ...], vocab_size: int, budget_bytes: int) -> int:
    """How many levels, from the root down, fit in ``budget_bytes`` of dense rows.

    Only levels with edges (all but the deepest) can be dense.
    """
    row_bytes = dense_row_bytes(vocab_size)
    levels, used = 0, 0
    while levels < len(level_sizes) - 1 and used + level_sizes[levels] * row_bytes <= budget_bytes:
        used += level_sizes[levels] * row_bytes
        levels += 1
    return levels


def dense_tables(
    indptr: np.ndarray,  # int32 [num_rows + 1]
    tokens: np.ndarray,  # uint [num_edges]
    num_dense_states: int,
    vocab_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bitmaps and prefix counts of the first ``num_dense_states`` states.

    Returns:
      ``bits``: uint32 [num_dense_states, words]; ``rank``: uint16 | int32 [num_dense_states, words].
    """
    words = words_per_row(vocab_size)
    row_edges = np.diff(indptr[: num_dense_states + 1].astype(np.int64))
    state_of_edge = np.repeat(np.arange(num_dense_states, dtype=np.int64), row_edges)
    edge_tokens = tokens[: int(indptr[num_dense_states])].astype(np.int64)
    word_index = state_of_edge * words + edge_tokens // BITS_PER_WORD
    bit_value = np.left_shift(1, edge_tokens % BITS_PER_WORD).astype(np.float64)
    # Each (state, token) pair occurs once, so summing distinct powers of two is a bitwise OR;
    # the sums stay below 2**32, exact in float64.
    summed = np.bincount(word_index, weights=bit_value, minlength=num_dense_states * words)
    bits = summed.astype(np.uint32).reshape(num_dense_states, words)
    counts = np.bitwise_count(bits).astype(np.int64)
    rank = (np.cumsum(counts, axis=1) - counts).astype(rank_dtype(vocab_size))
    return bits, rank
