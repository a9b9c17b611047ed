"""Input checks for the builders: every bad input is a ValueError that names the offending row.

The checks are vectorized; only the error paths (which stop the build anyway) look at rows
one by one to name the first bad one.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence

import numpy as np

from constraints.index import token_dtype


def check_vocab_size(vocab_size) -> int:
    """``vocab_size`` as a Python int, or a ValueError when it is not an integer >= 1."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    if vocab_size > np.iinfo(np.int32).max:
        raise ValueError(f"vocab_size must fit in int32, got {vocab_size}")
    return int(vocab_size)


def _is_integer_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "iu"


def _first_bad_row(bad: np.ndarray) -> int:  # bool [rows]
    """The index of the first True of ``bad``."""
    return int(np.flatnonzero(bad)[0])


def fixed_length_rows(items, vocab_size: int) -> np.ndarray:
    """Checks a fixed-length item array and returns it as the smallest token dtype.

    Args:
      items: int array-like [num_items, length], any order, duplicates allowed.
      vocab_size: every token must lie in ``[0, vocab_size)``.

    Returns:
      uint8 | uint16 | int32 [num_items, length] (see :func:`constraints.index.token_dtype`).
    """
    if isinstance(items, np.ndarray):
        array = items
    else:
        rows = list(items)
        lengths = [len(row) if isinstance(row, Sequence | np.ndarray) else -1 for row in rows]
        if any(length != lengths[0] for length in lengths):
            bad = next(i for i, length in enumerate(lengths) if length != lengths[0])
            raise ValueError(
                f"items row {bad} has {lengths[bad]} tokens but row 0 has {lengths[0]}: fixed-length "
                "items must form a rectangular array (use build_variable_length_index for ragged "
                "sequences that end in EOS)"
            )
        array = np.asarray(rows)
    if array.ndim != 2:
        raise ValueError(f"items must be a 2-D int array [num_items, length], got shape {array.shape}")
    if not _is_integer_dtype(array.dtype):
        raise ValueError(f"items must have an integer dtype, got {array.dtype}")
    num_items, length = array.shape
    if num_items == 0:
        raise ValueError("items is empty: an index needs at least one item")
    if length == 0:
        raise ValueError("items have length 0: every item needs at least one token")
    if array.min() < 0 or array.max() >= vocab_size:
        bad_cells = (array < 0) | (array >= vocab_size)
        row = _first_bad_row(bad_cells.any(axis=1))
        col = int(np.flatnonzero(bad_cells[row])[0])
        raise ValueError(
            f"items row {row} has token {int(array[row, col])} at position {col}, "
            f"outside the vocabulary [0, {vocab_size})"
        )
    return array.astype(token_dtype(vocab_size), copy=False)


def _non_integer_row(seqs: Sequence) -> int:
    """The first sequence that is not made of integers (error path only)."""
    for i, seq in enumerate(seqs):
        if not _is_integer_dtype(np.asarray(seq).dtype):
            return i
    return 0


def variable_length_rows(seqs: Sequence, vocab_size: int, eos_id) -> tuple[np.ndarray, np.ndarray]:
    """Checks sequences that each end in ``eos_id`` and pads them with ``eos_id``.

    Args:
      seqs: a sequence of int sequences (lists, tuples or 1-D arrays). Each must end in
        ``eos_id`` and hold it nowhere else; every token must lie in ``[0, vocab_size)``.
      vocab_size: vocabulary size.
      eos_id: the end-of-item token.

    Returns:
      ``rows``: uint8 | uint16 | int32 [num_seqs, max_len], each row padded with ``eos_id``;
      ``lengths``: int64 [num_seqs], tokens per sequence with the EOS.
    """
    if isinstance(eos_id, bool) or not isinstance(eos_id, numbers.Integral) or not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id must be an integer in [0, {vocab_size}), got {eos_id!r}")
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        seqs = list(seqs)
    seqs = list(seqs)
    if not seqs:
        raise ValueError("seqs is empty: an index needs at least one item")
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    if (lengths == 0).any():
        row = _first_bad_row(lengths == 0)
        raise ValueError(f"seqs row {row} is empty: every sequence must end in eos_id={eos_id}")
    flat = np.asarray(list(itertools.chain.from_iterable(seqs)))
    if not _is_integer_dtype(flat.dtype):
        raise ValueError(f"seqs row {_non_integer_row(seqs)} holds non-integer tokens (dtype {flat.dtype})")
    ends = np.cumsum(lengths)
    row_of = np.repeat(np.arange(len(seqs)), lengths)
    bad = (flat < 0) | (flat >= vocab_size)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"seqs row {row_of[pos]} has token {int(flat[pos])}, outside the vocabulary [0, {vocab_size})"
        )
    last = flat[ends - 1]
    if (last != eos_id).any():
        row = _first_bad_row(last != eos_id)
        raise ValueError(f"seqs row {row} does not end in eos_id={eos_id} (ends in {int(last[row])})")
    is_eos = flat == eos_id
    is_eos[ends - 1] = False
    if is_eos.any():
        pos = int(np.flatnonzero(is_eos)[0])
        raise ValueError(f"seqs row {row_of[pos]} has eos_id={eos_id} before its end (EOS may only come last)")
    max_len = int(lengths.max())
    rows = np.full((len(seqs), max_len), eos_id, dtype=token_dtype(vocab_size))
    starts = ends - lengths
    cols = np.arange(flat.shape[0]) - np.repeat(starts, lengths)
    rows[row_of, cols] = flat
    return rows, lengths
