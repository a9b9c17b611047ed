"""Lexicographic sort and dedupe of token rows, vectorized over the rows.

Rows are packed into 64-bit integer keys, as many tokens per key as fit. When one key holds a
whole row, a single ``argsort`` sorts them. Otherwise the rows are sorted by their first key,
then refined chunk by chunk: each refinement sorts ``(rank of the prefix so far, next chunk)``
packed into one 64-bit key, where the rank (the prefix's position among the distinct prefixes)
needs only ``bit_length(num_rows)`` bits. Once every prefix is distinct the order is final and
the remaining chunks are skipped.
"""

from __future__ import annotations

import numpy as np

_KEY_BITS = 64


def _pack(
    columns: np.ndarray,  # uint | int32 [rows, k], tokens >= 0
    bits: int,
) -> np.ndarray:  # uint64 [rows]
    """Packs uint [rows, k] tokens of ``bits`` bits each into uint64 [rows], first token highest."""
    key = columns[:, 0].astype(np.uint64)
    shift = np.uint64(bits)
    for j in range(1, columns.shape[1]):
        key <<= shift
        np.bitwise_or(key, columns[:, j], out=key, dtype=np.uint64, casting="unsafe")  # tokens are >= 0
    return key


def _new_group(sorted_keys: np.ndarray) -> np.ndarray:  # uint64 [rows] -> bool [rows]
    """bool [rows]: True where a sorted key differs from the one before (and at row 0)."""
    starts = np.empty(sorted_keys.shape[0], dtype=bool)
    starts[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    return starts


def sorted_unique_rows(
    rows: np.ndarray,  # uint | int32 [num_rows, length]
    vocab_size: int,
) -> np.ndarray:  # the same dtype [num_distinct, length]
    """The distinct rows of ``rows`` in lexicographic order.

    Args:
      rows: unsigned or non-negative int [num_rows, length], tokens in ``[0, vocab_size)``.
      vocab_size: bounds the tokens, which sets how many bits each token takes in a key.

    Returns:
      the same dtype, [num_distinct, length].
    """
    num_rows, length = rows.shape
    bits = max(1, (vocab_size - 1).bit_length())
    rank_bits = max(1, num_rows.bit_length())
    first = max(1, min(length, _KEY_BITS // bits))
    later = max(1, (_KEY_BITS - rank_bits) // bits)

    key = _pack(rows[:, :first], bits)
    order = np.argsort(key)
    key = key[order]
    starts = _new_group(key)
    for lo in range(first, length, later):
        if starts.all():
            break
        chunk = np.take(rows[:, lo : lo + later], order, axis=0)
        rank = np.cumsum(starts, dtype=np.uint64) - np.uint64(1)
        key = (rank << np.uint64(bits * chunk.shape[1])) | _pack(chunk, bits)
        refine = np.argsort(key)
        order = order[refine]
        key = key[refine]
        starts = _new_group(key)
    return np.take(rows, order[starts], axis=0)
