"""Save and load a :class:`~constraints.index.TrieIndex` as one ``.npz`` file.

The file holds the four arrays plus ``meta``: a JSON string with a format name, a format
version, the static metadata and (format 2) a SHA-256 checksum of every metadata field and
every array. Loading checks all of it and raises a ValueError naming the path and the field
or array when anything is off, so a truncated, foreign or edited file never becomes a corrupt
index (which beam search would search silently, finding fewer items or none):

1. the format name and version, and that every metadata field is present and of its type;
2. the arrays against the metadata: dtypes and shapes, the CSR invariants that ops rely on for
   in-range gathers, and every field the arrays determine (``level_sizes``, ``depth``,
   ``max_branching``, ``num_items``, ``dense_levels``, ``fixed_length``, ``eos_id``: the token
   of every edge into a leaf, ``vocab_size``: above every edge token);
3. the checksums (what no structural check can see, e.g. a ``vocab_size`` edited within the
   same token dtype, or arrays and metadata edited together consistently).

Format 1 files (no checksums, written before this version) still load, with checks 1 and 2.

A :class:`~constraints.dfa.TokenDFA` (e.g. a compiled regular expression) has its own format,
:func:`save_dfa` / :func:`load_dfa`: the same archive, format name/version and checksums; the
load rebuilds the automaton from its edges and compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

from constraints.dense import dense_tables
from constraints.index import TrieIndex, rank_dtype, token_dtype, words_per_row

FORMAT_NAME = "jax-decoding.constraints.TrieIndex"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no checksums
_ARRAYS = ("indptr", "tokens", "dense_bits", "dense_rank")
_META_KEYS = ("vocab_size", "depth", "max_branching", "eos_id", "fixed_length", "num_items", "level_sizes", "dense_levels")
_REBUILD = "rebuild it (scripts/build_index.py, or constraints.build_*_index then save_index)"


def _field_checksum(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _array_checksum(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save_index(path: str | os.PathLike, index: TrieIndex) -> None:
    """Writes ``index`` to exactly ``path`` (no suffix is added), with checksums."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    meta.update({key: getattr(index, key) for key in _META_KEYS})
    meta = json.loads(json.dumps(meta))  # tuples as lists: the values a load reads back
    arrays = {name: np.asarray(getattr(index, name)) for name in _ARRAYS}
    meta["checksums"] = {key: _field_checksum(meta[key]) for key in _META_KEYS}
    meta["checksums"].update({name: _array_checksum(array) for name, array in arrays.items()})
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def _read_archive(path: str | os.PathLike, what: str, required: tuple[str, ...]) -> tuple[Any, dict[str, np.ndarray]]:
    """The parsed ``meta`` JSON and the ``required`` arrays of an ``.npz`` archive; a ValueError
    naming ``path`` and ``what`` (e.g. "trie index") when it is not such an archive."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"{path}: not a {what} file (a single array, not an archive)")
        with data:
            names = set(data.files)
            if "meta" not in names or not names.issuperset(required):
                raise ValueError(f"{path}: not a {what} file (arrays {sorted(names)})")
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in required}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} file ({type(err).__name__}: {err})") from err
    except ValueError as err:
        if str(err).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable {what} file ({err})") from err
    return meta, arrays


def _read(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata dict and the arrays of an index file, or a ValueError naming ``path``."""
    meta, arrays = _read_archive(path, "trie index", _ARRAYS)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a trie index file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if not _is_int(meta.get("format_version")) or meta["format_version"] not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: trie index format version {meta.get('format_version')!r}, this code reads versions "
            f"{list(READABLE_VERSIONS)}; {_REBUILD} with this version"
        )
    missing = [key for key in _META_KEYS if key not in meta]
    if meta["format_version"] >= 2 and not isinstance(meta.get("checksums"), dict):
        missing.append("checksums")
    if missing:
        raise ValueError(f"{path}: trie index metadata lacks {missing}")
    return meta, arrays


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(path, meta: dict) -> None:
    """Each metadata field has its type and basic range (else a ValueError naming it)."""

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"{path}: metadata {key}={meta[key]!r} is not {expected}")

    if not _is_int(meta["vocab_size"]) or not 1 <= meta["vocab_size"] <= np.iinfo(np.int32).max:
        raise bad("vocab_size", "an int in [1, 2**31 - 1]")
    for key in ("level_sizes", "max_branching"):
        value = meta[key]
        if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 1 for v in value):
            raise bad(key, "a non-empty list of positive ints")
    if len(meta["level_sizes"]) < 2:
        raise bad("level_sizes", "a list of at least 2 levels (root and items)")
    for key in ("depth", "num_items"):
        if not _is_int(meta[key]) or meta[key] < 1:
            raise bad(key, "a positive int")
    if not _is_int(meta["dense_levels"]) or not 0 <= meta["dense_levels"] <= len(meta["level_sizes"]) - 1:
        raise bad("dense_levels", f"an int in [0, {len(meta['level_sizes']) - 1}] (the levels with rows)")
    if not isinstance(meta["fixed_length"], bool):
        raise bad("fixed_length", "a bool")
    eos = meta["eos_id"]
    if eos is not None and (not _is_int(eos) or not 0 <= eos < meta["vocab_size"]):
        raise bad("eos_id", f"None or an id in the vocabulary [0, vocab_size={meta['vocab_size']})")
    if meta["fixed_length"] != (eos is None):
        raise ValueError(
            f"{path}: metadata fixed_length={meta['fixed_length']!r} contradicts eos_id={eos!r} (a fixed-length "
            "index has eos_id None, a variable-length one an EOS id)"
        )


def _check_consistent(path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Raises a ValueError naming ``path`` (and the array or field) when the arrays do not fit
    the metadata."""
    vocab, sizes, dense_levels = meta["vocab_size"], meta["level_sizes"], meta["dense_levels"]
    num_rows = sum(sizes[:-1])
    num_dense = sum(sizes[:dense_levels])
    words = words_per_row(vocab)
    expected = {
        "indptr": (np.dtype(np.int32), (num_rows + 1,), "level_sizes"),
        "tokens": (token_dtype(vocab), (sum(sizes) - 1,), "level_sizes, vocab_size"),
        "dense_bits": (np.dtype(np.uint32), (num_dense, words), "dense_levels, level_sizes, vocab_size"),
        "dense_rank": (rank_dtype(vocab), (num_dense, words), "dense_levels, level_sizes, vocab_size"),
    }
    for name, (dtype, shape, fields) in expected.items():
        got = arrays[name]
        if got.dtype != dtype or got.shape != shape:
            raise ValueError(
                f"{path}: array {name} is {got.dtype}{list(got.shape)}, expected {dtype}{list(shape)} from the "
                f"metadata ({fields})"
            )
    indptr, tokens = arrays["indptr"], arrays["tokens"]
    if indptr[0] != 0 or indptr[-1] != tokens.shape[0] or (np.diff(indptr) < 0).any():
        raise ValueError(f"{path}: array indptr is not a valid CSR row pointer")
    if tokens.size and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
        raise ValueError(
            f"{path}: an edge token ({int(tokens.max())}) lies outside the vocabulary [0, vocab_size={vocab})"
        )
    _check_derived_metadata(path, meta, indptr, tokens)
    bits, rank = dense_tables(indptr, tokens, num_dense, vocab)
    if not (np.array_equal(bits, arrays["dense_bits"]) and np.array_equal(rank, arrays["dense_rank"])):
        raise ValueError(f"{path}: the dense tables (arrays dense_bits, dense_rank) do not match the edges")


def _check_derived_metadata(path, meta: dict, indptr: np.ndarray, tokens: np.ndarray) -> None:
    """Metadata that the arrays determine must equal what they determine (else a ValueError)."""
    sizes = meta["level_sizes"]
    row_edges = np.diff(indptr.astype(np.int64))
    owner = np.repeat(np.arange(row_edges.shape[0]), row_edges)
    if ((tokens[1:] <= tokens[:-1]) & (owner[1:] == owner[:-1])).any():
        raise ValueError(f"{path}: array tokens: edge tokens are not strictly increasing within a state")
    # Breadth-first numbering: level d + 1 holds exactly the edges leaving level d's rows.
    derived_sizes, start = [1], 0
    for _ in range(len(sizes) - 1):
        stop = start + derived_sizes[-1]
        if stop >= indptr.shape[0]:
            break
        derived_sizes.append(int(indptr[stop] - indptr[start]))
        start = stop
    if derived_sizes != sizes:
        raise ValueError(f"{path}: metadata level_sizes={sizes!r} but the edges give {derived_sizes!r}")
    bounds = np.cumsum([0, *sizes[:-1]])
    widest = tuple(int(row_edges[a:b].max(initial=0)) for a, b in zip(bounds[:-1], bounds[1:]))
    derived = {
        "depth": len(sizes) - 1,
        "max_branching": widest,
        "num_items": int((row_edges == 0).sum()) + sizes[-1],
    }
    for key, value in derived.items():
        stored = tuple(meta[key]) if key == "max_branching" else meta[key]
        if stored != value:
            raise ValueError(f"{path}: metadata {key}={meta[key]!r} but the arrays give {value!r}")
    # Items end at leaves: every leaf of a fixed-length index lies at the deepest level; in a
    # variable-length one the edges into leaves are exactly the edges labelled eos_id.
    is_leaf = np.ones(sum(sizes), bool)
    is_leaf[: row_edges.shape[0]] = row_edges == 0
    into_leaf = is_leaf[1:]  # edge e leads to state e + 1
    eos = meta["eos_id"]
    if eos is None:
        if into_leaf[: tokens.shape[0] - sizes[-1]].any():
            raise ValueError(
                f"{path}: metadata fixed_length=True (eos_id None) but some items end before depth {len(sizes) - 1}"
            )
    elif not np.array_equal(tokens == eos, into_leaf):
        edge = int(np.flatnonzero((tokens == eos) != into_leaf)[0])
        raise ValueError(
            f"{path}: metadata eos_id={eos} but edge {edge} (token {int(tokens[edge])}) "
            f"{'ends' if into_leaf[edge] else 'does not end'} an item"
        )


def _check_checksums(path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Every metadata field and array must match the checksum ``save_index`` wrote."""
    stored = meta["checksums"]
    for key in _META_KEYS:
        if stored.get(key) != _field_checksum(meta[key]):
            raise ValueError(
                f"{path}: metadata {key}={meta[key]!r} does not match its checksum: the file was edited or corrupted "
                f"after save_index wrote it; {_REBUILD}"
            )
    for name in _ARRAYS:
        if stored.get(name) != _array_checksum(arrays[name]):
            raise ValueError(
                f"{path}: array {name} does not match its checksum: the file was edited or corrupted after "
                f"save_index wrote it; {_REBUILD}"
            )


def load_index(path: str | os.PathLike) -> TrieIndex:
    """Reads an index written by :func:`save_index`; arrays go to the default device.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: naming ``path`` and the field or array, for a truncated, foreign,
        wrong-version, inconsistent or edited file (see the module docstring).
    """
    meta, arrays = _read(path)
    _check_types(path, meta)
    _check_consistent(path, meta, arrays)
    if meta["format_version"] >= 2:
        _check_checksums(path, meta, arrays)
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


# -- TokenDFA (constraints.dfa) ---------------------------------------------------------------

DFA_FORMAT_NAME = "jax-decoding.constraints.TokenDFA"
DFA_FORMAT_VERSION = 1
_DFA_ARRAYS = ("indptr", "tokens", "next_state", "accepting", "dense_row", "dense_bits", "dense_rank")
_DFA_META_KEYS = ("vocab_size", "eos_id", "depth", "acyclic", "sparse_width")


def save_dfa(path: str | os.PathLike, dfa) -> None:
    """Writes a :class:`constraints.dfa.TokenDFA` to exactly ``path`` (an ``.npz`` archive with
    a format name and version and a SHA-256 checksum of every metadata field and array)."""
    meta = {"format": DFA_FORMAT_NAME, "format_version": DFA_FORMAT_VERSION}
    meta.update({key: getattr(dfa, key) for key in _DFA_META_KEYS})
    arrays = {name: np.asarray(getattr(dfa, name)) for name in _DFA_ARRAYS}
    meta["checksums"] = {key: _field_checksum(meta[key]) for key in _DFA_META_KEYS}
    meta["checksums"].update({name: _array_checksum(array) for name, array in arrays.items()})
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load_dfa(path: str | os.PathLike):
    """Reads a :class:`constraints.dfa.TokenDFA` written by :func:`save_dfa`.

    Checks, each failure a ValueError naming ``path``: the format name and version, the
    metadata types, the checksums, then the automaton itself: it is rebuilt from its edge list
    (:func:`constraints.dfa.build_token_dfa`, which also validates the EOS edges) and must equal
    the stored arrays and metadata, every state must be reachable from the start and able to
    reach ``done``.
    """
    from constraints.dfa import build_token_dfa

    meta, arrays = _read_archive(path, "TokenDFA", _DFA_ARRAYS)
    if not isinstance(meta, dict) or meta.get("format") != DFA_FORMAT_NAME:
        raise ValueError(f"{path}: not a TokenDFA file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("format_version") != DFA_FORMAT_VERSION:
        raise ValueError(f"{path}: TokenDFA format version {meta.get('format_version')!r}, this code reads {DFA_FORMAT_VERSION}")
    missing = [key for key in (*_DFA_META_KEYS, "checksums") if key not in meta]
    if missing:
        raise ValueError(f"{path}: TokenDFA metadata lacks {missing}")
    for key in ("vocab_size", "eos_id", "depth", "sparse_width"):
        if not _is_int(meta[key]) or meta[key] < 0:
            raise ValueError(f"{path}: metadata {key}={meta[key]!r} is not a non-negative int")
    if not isinstance(meta["acyclic"], bool):
        raise ValueError(f"{path}: metadata acyclic={meta['acyclic']!r} is not a bool")
    stored = meta["checksums"] if isinstance(meta["checksums"], dict) else {}
    for key in _DFA_META_KEYS:
        if stored.get(key) != _field_checksum(meta[key]):
            raise ValueError(f"{path}: metadata {key}={meta[key]!r} does not match its checksum (edited or corrupted)")
    for name in _DFA_ARRAYS:
        if stored.get(name) != _array_checksum(arrays[name]):
            raise ValueError(f"{path}: array {name} does not match its checksum (edited or corrupted)")
    indptr, tokens, nxt = (arrays[n].astype(np.int64) for n in ("indptr", "tokens", "next_state"))
    accepting, dense_row = arrays["accepting"], arrays["dense_row"]
    total = indptr.shape[0] - 1
    if (
        total < 2
        or indptr[0] != 0
        or indptr[-1] != tokens.shape[0]
        or (np.diff(indptr) < 0).any()
        or nxt.shape != tokens.shape
        or accepting.shape != (total,)
        or accepting.dtype != np.bool_
        or dense_row.shape != (total,)
        or (nxt.size and (nxt.min() < 0 or nxt.max() >= total))
    ):
        raise ValueError(f"{path}: arrays indptr / next_state / accepting / dense_row are not a valid CSR automaton")
    src = np.repeat(np.arange(total), np.diff(indptr))
    eos = tokens == meta["eos_id"]
    done = total - 1
    if not np.array_equal(eos, nxt == done) or not np.array_equal(np.sort(src[eos]), np.flatnonzero(accepting)):
        raise ValueError(f"{path}: the EOS edges are not exactly accepting state -> done")
    dense_degrees = np.diff(indptr)[dense_row >= 0]
    try:
        rebuilt = build_token_dfa(
            done,
            src[~eos],
            tokens[~eos],
            nxt[~eos],
            accepting[:done],
            meta["vocab_size"],
            meta["eos_id"],
            cyclic_depth=meta["depth"],
            dense_min_degree=int(dense_degrees.min()) if dense_degrees.size else int(np.diff(indptr).max()) + 1,
        )
    except ValueError as err:
        raise ValueError(f"{path}: not a valid TokenDFA ({err})") from err
    for name in _DFA_ARRAYS:
        if not np.array_equal(np.asarray(getattr(rebuilt, name)), arrays[name]) or (
            np.asarray(getattr(rebuilt, name)).dtype != arrays[name].dtype
        ):
            raise ValueError(f"{path}: array {name} does not match the automaton's edges")
    for key in _DFA_META_KEYS:
        if getattr(rebuilt, key) != meta[key]:
            raise ValueError(f"{path}: metadata {key}={meta[key]!r} but the edges give {getattr(rebuilt, key)!r}")
    from constraints.regex import _reach

    start = np.zeros(total, bool)
    start[0] = True
    end = np.zeros(total, bool)
    end[done] = True
    if not (_reach(total, src, nxt, start).all() and _reach(total, nxt, src, end).all()):
        raise ValueError(f"{path}: some state is unreachable from the start or cannot reach done")
    return rebuilt
