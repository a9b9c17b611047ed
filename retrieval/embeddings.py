"""Item embeddings to quantize into semantic IDs: from item metadata, or from co-occurrence.

Which to use when:

* :func:`content_embeddings` (the pipeline default): from the items table alone. Every item
  gets an embedding, including one nobody has interacted with yet, so cold-start items get
  meaningful IDs and a new item's ID does not wait for its first users. Items alike in
  metadata share ID prefixes, which is what lets a generative retriever generalise to them.
* :func:`cooccurrence_embeddings` (collaborative): from interaction sequences alone, for a
  catalog without usable metadata and without cold-start items. It captures what metadata
  misses (which items the same users consume together), but only for items with enough
  interactions: an item that never co-occurs with another gets a zero row, so such items are
  told apart only by their collision code, and a new item has no ID until the embeddings are rebuilt.

Both reduce a sparse matrix (NumPy only: COO triplets, products by ``bincount``) to ``dim``
columns by randomized truncated SVD (Halko et al. 2011; exact when the matrix has at most
``dim + 10`` rows or columns), make each component's largest entry positive, and
L2-normalise the rows. The result is a function of the inputs and ``seed``.

Example::

    emb = content_embeddings(
        categorical={"genres": np.array(["Animation Comedy", "Animation Comedy", "Horror", "Horror Thriller"])},
        text={"title": np.array(["Toy Story", "Toy Story 2", "Scream", "Scream 2"])},
        numeric={"minutes": np.array([81.0, 92.0, 111.0, np.nan])},  # NaN: missing
        dim=2,
    )
    emb.shape                  # (4, 2), unit rows
    np.round(emb @ emb.T, 1)   # [[ 1.   1.  -0.9 -0.8]
                               #  [ 1.   1.  -0.9 -0.7]
                               #  [-0.9 -0.9  1.   0.4]
                               #  [-0.8 -0.7  0.4  1. ]]  the two "Toy Story" films together
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

from retrieval.semantic_ids import check_int_at_least

HASH_BUCKETS = 1 << 20
"""Hashed vocabulary of text features (only the buckets that occur become columns)."""

_OVERSAMPLE = 10  # extra random directions of the randomized SVD
_POWER_ITERATIONS = 4  # subspace iterations of the randomized SVD
_RELATIVE_RANK_TOLERANCE = 1e-6  # singular values below this times the largest are dropped
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits (Unicode-aware)


@dataclasses.dataclass(frozen=True)
class _Sorted:
    """Sparse entries sorted by ``keys``, for products that sum ``vals * dense[others]`` per key."""

    keys: np.ndarray  # int64 [nnz], ascending
    others: np.ndarray  # int64 [nnz]
    vals: np.ndarray  # float64 [nnz]
    starts: np.ndarray  # int64 [distinct keys], the first entry of each key
    size: int  # keys lie in [0, size)

    @classmethod
    def of(cls, keys: np.ndarray, others: np.ndarray, vals: np.ndarray, size: int) -> _Sorted:
        """From entries in any order (int64 [nnz], int64 [nnz], float64 [nnz]), nnz >= 1."""
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return cls(keys, others[order], vals[order], starts, size)

    def times(self, dense: np.ndarray) -> np.ndarray:  # float64 [*, r] -> [size, r]
        """Row ``k`` of the result: the sum of ``vals * dense[others]`` over the entries of key ``k``."""
        columns = np.ascontiguousarray(dense.T)  # one contiguous gather source per output column
        out = np.zeros((dense.shape[1], self.size))
        for j in range(dense.shape[1]):
            out[j, self.keys[self.starts]] = np.add.reduceat(self.vals * columns[j][self.others], self.starts)
        return out.T


@dataclasses.dataclass(frozen=True)
class _Sparse:
    """A sparse matrix (at least one entry) minus ``column_mean`` from every row (centring)."""

    by_row: _Sorted  # the entries keyed by row
    by_col: _Sorted  # the same entries keyed by column
    column_mean: np.ndarray  # float64 [columns], zeros for no centring

    @classmethod
    def of(
        cls,
        rows: np.ndarray,  # int64 [nnz], nnz >= 1
        cols: np.ndarray,  # int64 [nnz], no (row, col) twice
        vals: np.ndarray,  # float64 [nnz]
        column_mean: np.ndarray,  # float64 [columns]
        num_rows: int,
    ) -> _Sparse:
        by_row = _Sorted.of(rows, cols, vals, num_rows)
        return cls(by_row, _Sorted.of(cols, rows, vals, column_mean.shape[0]), column_mean)

    @property
    def shape(self) -> tuple[int, int]:
        return self.by_row.size, self.by_col.size

    def matmul(self, dense: np.ndarray) -> np.ndarray:  # float64 [columns, r] -> [rows, r]
        return self.by_row.times(dense) - self.column_mean @ dense

    def rmatmul(self, dense: np.ndarray) -> np.ndarray:  # float64 [rows, r] -> [columns, r]
        """The transpose times ``dense``."""
        return self.by_col.times(dense) - np.outer(self.column_mean, dense.sum(axis=0))


def _truncated_svd(
    matrix: _Sparse,
    rank: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:  # float64 [rows, kept], float64 [kept], kept <= rank
    """Leading left singular vectors and values (randomized range finder, power iterations).

    Singular values below ``_RELATIVE_RANK_TOLERANCE`` times the largest are dropped. Each
    vector's largest-magnitude entry is made positive (the first such entry on ties).
    """
    width = min(rank + _OVERSAMPLE, *matrix.shape)
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(matrix.matmul(rng.standard_normal((matrix.shape[1], width))))
    for _ in range(_POWER_ITERATIONS):
        back, _ = np.linalg.qr(matrix.rmatmul(basis))
        basis, _ = np.linalg.qr(matrix.matmul(back))
    small_u, values, _ = np.linalg.svd(matrix.rmatmul(basis).T, full_matrices=False)
    kept = min(rank, int(np.sum(values > _RELATIVE_RANK_TOLERANCE * values[0])))
    vectors = basis @ small_u[:, :kept]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(kept)])
    return vectors * signs, values[:kept]


def _unit_rows(
    vectors: np.ndarray,  # float64 [items, kept]
    weights: np.ndarray,  # float64 [kept]
    dim: int,
) -> np.ndarray:  # float32 [items, dim]
    """``vectors * weights`` padded with zero columns to ``dim``, rows L2-normalised."""
    out = np.zeros((vectors.shape[0], dim))
    out[:, : vectors.shape[1]] = vectors * weights
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Block:
    """One feature's columns as COO triplets (rows are items, no entry twice)."""

    rows: np.ndarray  # int64 [nnz]
    cols: np.ndarray  # int64 [nnz], in [0, width)
    vals: np.ndarray  # float64 [nnz]
    width: int


def _count_pairs(
    rows: np.ndarray,  # int64 [pairs]
    cols: np.ndarray,  # int64 [pairs], in [0, width)
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # int64 [distinct] x 3
    """The distinct (row, col) pairs, row-major, and how often each occurs."""
    keys, counts = np.unique(rows * width + cols, return_counts=True)
    return keys // width, keys % width, counts


def _unit_block_rows(rows: np.ndarray, vals: np.ndarray, num_items: int) -> np.ndarray:  # -> float64 [nnz]
    """``vals`` divided by the L2 norm of their row (rows: int64 [nnz], vals: float64 [nnz])."""
    norms = np.sqrt(np.bincount(rows, vals * vals, minlength=num_items))
    return vals / norms[rows]


def _label_block(values: np.ndarray, num_items: int) -> _Block:  # values: str [items]
    """Multi-hot of the space-separated labels, rows L2-normalised (empty string: no labels)."""
    labels = [str(value).split() for value in values]
    flat = np.array([label for item in labels for label in item], dtype=str)
    vocabulary, label_ids = np.unique(flat, return_inverse=True)
    item_ids = np.repeat(np.arange(num_items), [len(item) for item in labels])
    rows, cols, _ = _count_pairs(item_ids, label_ids.astype(np.int64), max(1, vocabulary.shape[0]))
    return _Block(rows, cols, _unit_block_rows(rows, np.ones(rows.shape[0]), num_items), vocabulary.shape[0])


def _text_block(values: np.ndarray, num_items: int) -> _Block:  # values: str [items]
    """TF-IDF of hashed lowercase words, ``(1 + log tf) * idf``, rows L2-normalised.

    ``idf = log((1 + items) / (1 + document frequency)) + 1``. A word's bucket is the CRC-32
    of its UTF-8 bytes modulo :data:`HASH_BUCKETS` (the same in every process); the buckets
    that occur, in sorted order, are the block's columns.
    """
    words = [_WORD.findall(str(value).lower()) for value in values]
    buckets = np.fromiter((zlib.crc32(w.encode()) % HASH_BUCKETS for item in words for w in item), dtype=np.int64)
    item_ids = np.repeat(np.arange(num_items), [len(item) for item in words])
    rows, pair_buckets, tf = _count_pairs(item_ids, buckets, HASH_BUCKETS)
    used, cols = np.unique(pair_buckets, return_inverse=True)
    document_frequency = np.bincount(cols, minlength=used.shape[0])[cols]
    vals = (1.0 + np.log(tf)) * (np.log((1.0 + num_items) / (1.0 + document_frequency)) + 1.0)
    return _Block(rows, cols.astype(np.int64), _unit_block_rows(rows, vals, num_items), used.shape[0])


def _numeric_block(name: str, values: np.ndarray) -> _Block:  # values: float [items]
    """The standardized column; a missing value (NaN) becomes the mean, i.e. 0."""
    column = values.astype(np.float64)
    if np.isinf(column).any():
        raise ValueError(f"numeric feature {name!r} is infinite at item {int(np.flatnonzero(np.isinf(column))[0])}")
    present = column[~np.isnan(column)]
    if present.shape[0] == 0 or present.std() == 0:
        scaled = np.zeros_like(column)
    else:
        scaled = np.nan_to_num((column - present.mean()) / present.std(), nan=0.0)
    rows = np.flatnonzero(scaled)
    return _Block(rows, np.zeros(rows.shape[0], dtype=np.int64), scaled[rows], 1)


def _balanced_matrix(blocks: list[_Block], num_items: int, seed: int) -> _Sparse | None:
    """The column-centred blocks side by side, each scaled so its top singular value is sqrt(items).

    This is the block weighting of multiple factor analysis: every feature's leading principal
    variance is 1, so no feature alone sets the first components, however many columns it has.
    Constant features are left out; ``None`` when every feature is constant.
    """
    rows, cols, vals, means, offset = [], [], [], [], 0
    for block in blocks:
        if block.vals.shape[0] == 0:
            continue
        mean = np.bincount(block.cols, block.vals, minlength=block.width) / num_items
        _, top = _truncated_svd(_Sparse.of(block.rows, block.cols, block.vals, mean, num_items), 1, seed)
        if top.shape[0] == 0:
            continue
        scale = np.sqrt(num_items) / top[0]
        rows.append(block.rows)
        cols.append(block.cols + offset)
        vals.append(block.vals * scale)
        means.append(mean * scale)
        offset += block.width
    if not rows:
        return None
    parts = (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), np.concatenate(means))
    return _Sparse.of(*parts, num_items)


def _count_items(categorical: dict, text: dict, numeric: dict) -> int:
    """The common length of every feature column, or a ValueError."""
    columns = [
        (kind, name, np.asarray(values))
        for kind, group in (("categorical", categorical), ("text", text), ("numeric", numeric))
        for name, values in group.items()
    ]
    if not columns:
        raise ValueError("content_embeddings needs at least one categorical, text or numeric feature")
    first_kind, first_name, first = columns[0]
    for kind, name, values in columns:
        if values.ndim != 1:
            raise ValueError(f"{kind} feature {name!r} must be 1-D [items], got shape {values.shape}")
        if kind == "numeric" and values.dtype.kind not in "biuf":
            raise ValueError(f"numeric feature {name!r} must hold numbers, got dtype {values.dtype}")
        if values.shape[0] != first.shape[0]:
            raise ValueError(
                f"{kind} feature {name!r} has {values.shape[0]} items but {first_kind} feature "
                f"{first_name!r} has {first.shape[0]}"
            )
    if first.shape[0] < 1:
        raise ValueError("content_embeddings needs at least one item")
    return first.shape[0]


def content_embeddings(
    categorical: dict[str, np.ndarray],
    text: dict[str, np.ndarray],
    numeric: dict[str, np.ndarray],
    *,
    dim: int = 32,
    seed: int = 0,
) -> np.ndarray:  # float32 [items, dim]
    """Item embeddings from metadata: PCA of balanced one-hot, TF-IDF and numeric features.

    Each feature (each key of the three dicts) is one block of columns:

    * categorical: multi-hot of its space-separated labels (``"Comedy Drama"``), each row
      L2-normalised so an item with many labels weighs no more than one with a single label;
    * text: TF-IDF of hashed lowercase words (runs of letters and digits), rows L2-normalised;
    * numeric: the standardized column, a NaN counting as the column mean.

    The blocks are centred and scaled as in multiple factor analysis (each block's top
    singular value is made ``sqrt(items)``), so no feature dominates; constant features drop
    out. The top ``dim`` principal components (scores, i.e. ``U * S``) are L2-normalised per
    row. Columns past the matrix's rank are 0, and so is the row of an item equal to the mean.
    Interactions play no part, so cold-start items are embedded like any other.

    Args:
      categorical: name -> str [items], labels separated by spaces ("" for none).
      text: name -> str [items].
      numeric: name -> float [items], NaN for missing.
      dim: output columns, >= 1.
      seed: seed of the randomized SVD, >= 0.

    Returns:
      float32 [items, dim], rows of norm 1 (or 0).

    Raises:
      ValueError: no features, no items, a feature not 1-D or of another length (naming it),
        a non-numeric or infinite numeric feature, bad ``dim`` or ``seed``.
    """
    num_items = _count_items(categorical, text, numeric)
    dim = check_int_at_least("dim", dim, 1)
    seed = check_int_at_least("seed", seed, 0)
    blocks = (
        [_label_block(np.asarray(values), num_items) for values in categorical.values()]
        + [_text_block(np.asarray(values), num_items) for values in text.values()]
        + [_numeric_block(name, np.asarray(values)) for name, values in numeric.items()]
    )
    matrix = _balanced_matrix(blocks, num_items, seed)
    if matrix is None:
        return np.zeros((num_items, dim), dtype=np.float32)
    vectors, values = _truncated_svd(matrix, dim, seed)
    return _unit_rows(vectors, values, dim)


def _check_sequences(offsets, items, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [users + 1], items int64 [events]) after the checks, or a ValueError."""
    offsets, items = np.asarray(offsets), np.asarray(items)
    if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets.dtype.kind not in "iu":
        raise ValueError(f"sequences_offsets must be a 1-D int array [users + 1], got {offsets.dtype} {offsets.shape}")
    if items.ndim != 1 or (items.dtype.kind not in "iu" and items.shape[0] > 0):
        raise ValueError(f"sequence_items must be a 1-D int array [events], got {items.dtype} {items.shape}")
    if offsets[0] != 0 or offsets[-1] != items.shape[0]:
        raise ValueError(
            f"sequences_offsets must run from 0 to len(sequence_items) = {items.shape[0]}, "
            f"got {offsets[0]} .. {offsets[-1]}"
        )
    falls = np.diff(offsets) < 0
    if falls.any():
        bad = int(np.flatnonzero(falls)[0])
        raise ValueError(f"sequences_offsets must not decrease; user {bad} ends before it starts")
    outside = (items < 0) | (items >= num_items)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise ValueError(f"sequence_items[{bad}] = {items[bad]} lies outside [0, num_items = {num_items})")
    return offsets.astype(np.int64), items.astype(np.int64)


def cooccurrence_embeddings(
    sequences_offsets: np.ndarray,  # int64 [users + 1]
    sequence_items: np.ndarray,  # int32 [events]
    num_items: int,
    *,
    window: int = 5,
    dim: int = 32,
    seed: int = 0,
) -> np.ndarray:  # float32 [items, dim]
    """Item embeddings from interactions: truncated SVD of positive PMI co-occurrence.

    Two events of one user at most ``window`` positions apart are one co-occurrence of their
    items, counted both ways (an item next to itself does not count). With ``c(a, b)`` those
    counts, ``c(a)`` their row sums and ``T`` the total,
    ``PPMI(a, b) = max(0, log(c(a, b) T / (c(a) c(b))))``. Of its top ``dim`` singular triplets
    the embeddings are ``(U + V) sqrt(S)``, rows L2-normalised (item plus context vectors, as
    Levy, Goldberg and Dagan 2015 advise). The matrix is symmetric, so a triplet of a negative
    eigenvalue has ``V = -U`` and cancels: two items seen only with each other get the same
    row, not orthogonal ones as with ``U`` alone. An item with no positive PMI (e.g. never near
    another item) gets a zero row.

    Args:
      sequences_offsets: int [users + 1]; user ``u``'s events are
        ``sequence_items[offsets[u]:offsets[u + 1]]``, in time order.
      sequence_items: int [events], in ``[0, num_items)``.
      num_items: rows of the output, >= 1.
      window: largest distance in positions between co-occurring events, >= 1.
      dim: output columns, >= 1.
      seed: seed of the randomized SVD, >= 0.

    Returns:
      float32 [num_items, dim], rows of norm 1 or 0.

    Raises:
      ValueError: offsets not rising from 0 to the number of events, an item outside
        ``[0, num_items)`` (naming the event), bad ``num_items``, ``window``, ``dim`` or ``seed``.
    """
    num_items = check_int_at_least("num_items", num_items, 1)
    window = check_int_at_least("window", window, 1)
    dim = check_int_at_least("dim", dim, 1)
    seed = check_int_at_least("seed", seed, 0)
    offsets, items = _check_sequences(sequences_offsets, sequence_items, num_items)
    user = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))  # int64 [events]
    keys, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for distance in range(1, window + 1):
        first, second = items[:-distance], items[distance:]
        pair = (user[:-distance] == user[distance:]) & (first != second)
        lo, hi = np.minimum(first[pair], second[pair]), np.maximum(first[pair], second[pair])
        keys, inverse = np.unique(np.concatenate([keys, lo * num_items + hi]), return_inverse=True)
        counts = np.bincount(inverse, np.concatenate([counts, np.ones(lo.shape[0], dtype=np.int64)])).astype(np.int64)
    rows = np.concatenate([keys // num_items, keys % num_items])
    cols = np.concatenate([keys % num_items, keys // num_items])
    both = np.concatenate([counts, counts]).astype(np.float64)
    marginal = np.bincount(rows, both, minlength=num_items)
    pmi = np.log(both * both.sum() / (marginal[rows] * marginal[cols]))
    positive = pmi > 0
    if not positive.any():
        return np.zeros((num_items, dim), dtype=np.float32)
    matrix = _Sparse.of(rows[positive], cols[positive], pmi[positive], np.zeros(num_items), num_items)
    left, values = _truncated_svd(matrix, dim, seed)
    both_sides = left + matrix.rmatmul(left) / values  # U + V: a negative eigenvalue's pair cancels
    both_sides[np.bincount(rows[positive], minlength=num_items) == 0] = 0.0
    return _unit_rows(both_sides, np.sqrt(values), dim)
