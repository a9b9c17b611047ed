"""Offline builders: item token sequences -> :class:`~constraints.index.TrieIndex` (NumPy).

Both builders sort and dedupe the rows, then walk the levels (not the items): at level ``d`` a
new state starts at every sorted row whose first ``d`` tokens differ from the previous row's.
Those starts, in row order, are the level's states in breadth-first order; each one's incoming
edge carries the row's token ``d - 1``; the first edge of a state at level ``d - 1`` is the
number of level-``d`` starts before its row. Every step is a vectorized NumPy pass over the
rows, so the cost is a sort plus ``depth`` linear passes.

Example::

    index = build_fixed_length_index(np.array([[4, 0], [1, 3], [1, 2], [1, 3]]), vocab_size=5)
    index.level_sizes    # (1, 2, 3): root, prefixes "1" and "4", three distinct items
    index.indptr         # [0, 2, 4, 5]
    index.tokens         # [1, 4, 2, 3, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from constraints import validate
from constraints.dense import choose_dense_levels, dense_tables
from constraints.index import TrieIndex, rank_dtype, words_per_row
from constraints.lexsort import sorted_unique_rows

Progress = Callable[[str, int, int], None]
"""Called after each build stage as ``progress(stage_name, stages_done, stages_total)``."""

_INT32_MAX = int(np.iinfo(np.int32).max)


def _no_progress(stage: str, done: int, total: int) -> None:
    del stage, done, total


def _first_difference(rows: np.ndarray) -> np.ndarray:  # uint [num_rows, depth] -> int [num_rows - 1]
    """int [num_rows - 1]: the first column where sorted distinct row i+1 differs from row i."""
    dtype = np.int16 if rows.shape[1] <= np.iinfo(np.int16).max else np.int32
    return np.argmax(rows[1:] != rows[:-1], axis=1).astype(dtype)


def _csr_levels(
    rows: np.ndarray,  # uint [num_items, depth], sorted, distinct
    lengths: np.ndarray | None,  # int64 [num_items], tokens per item (None: all of depth)
    report: Callable[[str], None],
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The CSR arrays of the trie of ``rows``: (indptr int32, tokens, states per level)."""
    num_items, depth = rows.shape
    diff = _first_difference(rows)
    starts = np.empty(num_items, dtype=bool)
    prev_rows = np.zeros(1, dtype=np.int64)  # the root starts at row 0
    level_sizes = [1]
    indptr_parts, token_parts = [], []
    edge_base = 0  # edges into the levels before this one
    for level in range(1, depth + 1):
        starts[0] = True
        np.less(diff, level, out=starts[1:])
        if lengths is not None:
            starts &= lengths >= level
        level_rows = np.flatnonzero(starts)
        token_parts.append(rows[level_rows, level - 1])
        indptr_parts.append((edge_base + np.searchsorted(level_rows, prev_rows)).astype(np.int32))
        edge_base += level_rows.shape[0]
        if edge_base > _INT32_MAX:
            raise ValueError(f"the index needs more than {_INT32_MAX} edges; int32 state ids cannot address it")
        level_sizes.append(level_rows.shape[0])
        prev_rows = level_rows
        report(f"level {level}/{depth}")
    indptr_parts.append(np.array([edge_base], dtype=np.int32))
    return np.concatenate(indptr_parts), np.concatenate(token_parts), tuple(level_sizes)


def _max_branching(
    indptr: np.ndarray,  # int32 [num_rows + 1]
    level_sizes: tuple[int, ...],
) -> tuple[int, ...]:
    """The widest row of each level with edges (levels 0 .. depth-1)."""
    widths = np.diff(indptr)
    out, offset = [], 0
    for size in level_sizes[:-1]:
        out.append(int(widths[offset : offset + size].max()))
        offset += size
    return tuple(out)


def _build(
    rows: np.ndarray,  # uint | int32 [num_rows, depth], validated (variable length: EOS padded)
    lengths: np.ndarray | None,  # int64 [num_rows] for variable length, else None
    vocab_size: int,
    eos_id: int | None,
    dense_budget_bytes: int | None,
    progress: Progress,
) -> TrieIndex:
    """Sorted CSR levels, dense tables and device arrays from validated, padded rows."""
    total = rows.shape[1] + 4
    done = [1]

    def report(stage: str) -> None:
        done[0] += 1
        progress(stage, done[0], total)

    progress("validate", 1, total)
    rows = sorted_unique_rows(rows, vocab_size)
    if lengths is not None:
        lengths = np.argmax(rows == eos_id, axis=1) + 1  # rows are padded with EOS
    report("sort")
    indptr, tokens, level_sizes = _csr_levels(rows, lengths, report)
    if dense_budget_bytes is None:
        dense_budget_bytes = (indptr.nbytes + tokens.nbytes) // 4
    elif dense_budget_bytes < 0:
        raise ValueError(f"dense_budget_bytes must be >= 0 or None, got {dense_budget_bytes}")
    dense_levels = choose_dense_levels(level_sizes, vocab_size, dense_budget_bytes)
    num_dense_states = sum(level_sizes[:dense_levels])
    if dense_levels:
        bits, rank = dense_tables(indptr, tokens, num_dense_states, vocab_size)
    else:
        bits = np.zeros((0, words_per_row(vocab_size)), np.uint32)
        rank = np.zeros((0, words_per_row(vocab_size)), rank_dtype(vocab_size))
    report("dense tables")
    index = TrieIndex(
        indptr=jnp.asarray(indptr),
        tokens=jnp.asarray(tokens),
        dense_bits=jnp.asarray(bits),
        dense_rank=jnp.asarray(rank),
        vocab_size=vocab_size,
        depth=rows.shape[1],
        max_branching=_max_branching(indptr, level_sizes),
        eos_id=eos_id,
        fixed_length=lengths is None,
        num_items=rows.shape[0],
        level_sizes=level_sizes,
        dense_levels=dense_levels,
    )
    report("to device")
    return index


def build_fixed_length_index(
    items,
    vocab_size: int,
    *,
    dense_budget_bytes: int | None = None,
    progress: Progress | None = None,
) -> TrieIndex:
    """Builds the trie of fixed-length items (e.g. semantic IDs).

    Args:
      items: int array-like [num_items, length]; any order, duplicates allowed.
      vocab_size: tokens must lie in ``[0, vocab_size)``.
      dense_budget_bytes: most bytes of dense bitmap rows; levels are made dense from the root
        down while they fit. ``None``: a quarter of the CSR arrays' bytes. ``0``: none.
      progress: optional ``progress(stage, done, total)`` callback (e.g. to drive tqdm).

    Returns:
      a TrieIndex with ``depth = length``, ``fixed_length=True``, ``eos_id=None``.

    Raises:
      ValueError: non-integer dtype, not 2-D, ragged rows, no items, length 0, a token outside
        the vocabulary (naming the row), bad ``vocab_size``.
    """
    vocab_size = validate.check_vocab_size(vocab_size)
    rows = validate.fixed_length_rows(items, vocab_size)
    return _build(rows, None, vocab_size, None, dense_budget_bytes, progress or _no_progress)


def build_variable_length_index(
    seqs: Sequence,
    vocab_size: int,
    eos_id: int,
    *,
    dense_budget_bytes: int | None = None,
    progress: Progress | None = None,
) -> TrieIndex:
    """Builds the trie of variable-length items, each ending in ``eos_id``.

    An item is complete once its EOS has been emitted. One item may be a prefix of another
    (``[5, EOS]`` and ``[5, 6, EOS]``): after ``5`` both EOS and ``6`` are allowed.

    Args:
      seqs: a sequence of int sequences; each ends in ``eos_id`` and holds it nowhere else.
        Any order, duplicates allowed.
      vocab_size: tokens must lie in ``[0, vocab_size)``.
      eos_id: the end-of-item token (in the vocabulary).
      dense_budget_bytes: as for :func:`build_fixed_length_index`.
      progress: as for :func:`build_fixed_length_index`.

    Returns:
      a TrieIndex with ``depth`` = the longest item (EOS included), ``fixed_length=False``.

    Raises:
      ValueError: no sequences, an empty sequence, a missing or early EOS, non-integer tokens,
        a token outside the vocabulary (each naming the row), bad ``vocab_size`` or ``eos_id``.
    """
    vocab_size = validate.check_vocab_size(vocab_size)
    rows, lengths = validate.variable_length_rows(seqs, vocab_size, eos_id)
    return _build(rows, lengths, vocab_size, int(eos_id), dense_budget_bytes, progress or _no_progress)
