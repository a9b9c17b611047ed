"""Save and load a :class:`~constraints.index.TrieIndex` as one ``.npz`` file.

The file holds the four arrays plus ``meta``: a JSON string with a format name, a format
version and the static metadata. Loading checks all of it (format, version, dtypes, shapes,
the CSR invariants that ops rely on for in-range gathers) and raises a ValueError naming the
path when anything is off: a truncated or foreign file never becomes a corrupt index.
"""

from __future__ import annotations

import json
import os
import zipfile

import jax.numpy as jnp
import numpy as np

from constraints.dense import dense_tables
from constraints.index import TrieIndex, rank_dtype, token_dtype, words_per_row

FORMAT_NAME = "jax-decoding.constraints.TrieIndex"
FORMAT_VERSION = 1
_ARRAYS = ("indptr", "tokens", "dense_bits", "dense_rank")
_META_KEYS = ("vocab_size", "depth", "max_branching", "eos_id", "fixed_length", "num_items", "level_sizes", "dense_levels")


def save_index(path: str | os.PathLike, index: TrieIndex) -> None:
    """Writes ``index`` to exactly ``path`` (no suffix is added)."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    meta.update({key: getattr(index, key) for key in _META_KEYS})
    arrays = {name: np.asarray(getattr(index, name)) for name in _ARRAYS}
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def _read(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata dict and the arrays of an index file, or a ValueError naming ``path``."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"{path}: not a trie index file (a single array, not an index archive)")
        with data:
            names = set(data.files)
            if "meta" not in names or not names.issuperset(_ARRAYS):
                raise ValueError(f"{path}: not a trie index file (arrays {sorted(names)})")
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in _ARRAYS}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable trie index file ({type(err).__name__}: {err})") from err
    except ValueError as err:
        if str(err).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable trie index file ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a trie index file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: trie index format version {meta.get('format_version')!r}, this code reads version {FORMAT_VERSION}"
        )
    missing = [key for key in _META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"{path}: trie index metadata lacks {missing}")
    return meta, arrays


def _check_consistent(path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Raises a ValueError naming ``path`` when the arrays do not fit the metadata."""
    vocab, sizes, dense_levels = meta["vocab_size"], meta["level_sizes"], meta["dense_levels"]
    num_rows = sum(sizes[:-1])
    num_dense = sum(sizes[:dense_levels])
    words = words_per_row(vocab)
    expected = {
        "indptr": (np.dtype(np.int32), (num_rows + 1,)),
        "tokens": (token_dtype(vocab), (sum(sizes) - 1,)),
        "dense_bits": (np.dtype(np.uint32), (num_dense, words)),
        "dense_rank": (rank_dtype(vocab), (num_dense, words)),
    }
    for name, (dtype, shape) in expected.items():
        got = arrays[name]
        if got.dtype != dtype or got.shape != shape:
            raise ValueError(f"{path}: array {name} is {got.dtype}{list(got.shape)}, expected {dtype}{list(shape)}")
    indptr, tokens = arrays["indptr"], arrays["tokens"]
    if indptr[0] != 0 or indptr[-1] != tokens.shape[0] or (np.diff(indptr) < 0).any():
        raise ValueError(f"{path}: indptr is not a valid CSR row pointer")
    if tokens.size and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
        raise ValueError(f"{path}: an edge token lies outside the vocabulary [0, {vocab})")
    _check_derived_metadata(path, meta, indptr, tokens)
    bits, rank = dense_tables(indptr, tokens, num_dense, vocab)
    if not (np.array_equal(bits, arrays["dense_bits"]) and np.array_equal(rank, arrays["dense_rank"])):
        raise ValueError(f"{path}: the dense tables do not match the edges")


def _check_derived_metadata(path, meta: dict, indptr: np.ndarray, tokens: np.ndarray) -> None:
    """Metadata that the arrays determine must equal what they determine (else a ValueError)."""
    sizes = meta["level_sizes"]
    row_edges = np.diff(indptr.astype(np.int64))
    owner = np.repeat(np.arange(row_edges.shape[0]), row_edges)
    if ((tokens[1:] <= tokens[:-1]) & (owner[1:] == owner[:-1])).any():
        raise ValueError(f"{path}: edge tokens are not strictly increasing within a state")
    bounds = np.cumsum([0, *sizes[:-1]])
    widest = tuple(int(row_edges[a:b].max(initial=0)) for a, b in zip(bounds[:-1], bounds[1:]))
    derived = {
        "depth": len(sizes) - 1,
        "max_branching": widest,
        "num_items": int((row_edges == 0).sum()) + sizes[-1],
        "fixed_length": meta["eos_id"] is None,
    }
    for key, value in derived.items():
        stored = tuple(meta[key]) if key == "max_branching" else meta[key]
        if stored != value:
            raise ValueError(f"{path}: metadata {key}={meta[key]!r} but the arrays give {value!r}")


def load_index(path: str | os.PathLike) -> TrieIndex:
    """Reads an index written by :func:`save_index`; arrays go to the default device.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: naming ``path``, for a truncated, foreign, wrong-version or
        inconsistent file.
    """
    meta, arrays = _read(path)
    try:
        _check_consistent(path, meta, arrays)
    except (TypeError, IndexError) as err:
        raise ValueError(f"{path}: malformed trie index metadata ({err})") from err
    eos_id = meta["eos_id"]
    return TrieIndex(
        indptr=jnp.asarray(arrays["indptr"]),
        tokens=jnp.asarray(arrays["tokens"]),
        dense_bits=jnp.asarray(arrays["dense_bits"]),
        dense_rank=jnp.asarray(arrays["dense_rank"]),
        vocab_size=int(meta["vocab_size"]),
        depth=int(meta["depth"]),
        max_branching=tuple(int(k) for k in meta["max_branching"]),
        eos_id=None if eos_id is None else int(eos_id),
        fixed_length=bool(meta["fixed_length"]),
        num_items=int(meta["num_items"]),
        level_sizes=tuple(int(n) for n in meta["level_sizes"]),
        dense_levels=int(meta["dense_levels"]),
    )
