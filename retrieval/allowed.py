"""Which catalog items the batch job may return: a file of item ids, or predicates on attributes.

Predicates are ``COLUMN OP VALUE`` with OP one of ``= == != >= <= > <``; several are ANDed::

    allowed_rows(catalog, where=["category=c3", "release_time>=1.5e9"])
    allowed_rows(catalog, ids_file="allowed.txt")       # one item id per line ('#' comments)

Numbers compare numerically on numeric columns; text columns take ``=`` / ``!=`` only.
"""

from __future__ import annotations

import operator
import os
import re

import numpy as np

from retrieval.catalog import Catalog
from retrieval.tables import EXTENSIONS, DataError, read_items

_PREDICATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|=|>|<)\s*(.+?)\s*$")
_OPS = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
        ">": operator.gt, "<": operator.lt}


def _predicate_mask(catalog: Catalog, predicate: str) -> np.ndarray:  # bool [items]
    match = _PREDICATE.match(predicate)
    if not match:
        raise ValueError(f"bad predicate {predicate!r}: expected COLUMN OP VALUE with OP in {sorted(_OPS)}")
    column, op, value = match.groups()
    if column not in catalog.attributes:
        raise ValueError(f"predicate {predicate!r}: the catalog has no attribute {column!r} "
                         f"(it has {sorted(catalog.attributes)})")
    values = catalog.attributes[column]
    if values.dtype.kind in "iuf":
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"predicate {predicate!r}: column {column!r} is numeric, {value!r} is not a number") from None
        return _OPS[op](values.astype(np.float64), number)
    if op not in ("=", "==", "!="):
        raise ValueError(f"predicate {predicate!r}: column {column!r} holds text; use = or !=")
    return _OPS[op](values.astype(str), value)


def _read_id_file(path: str) -> tuple[np.ndarray, np.ndarray]:  # str [ids], int64 [ids] line of each
    """Item ids of a table file (its ``item_id`` column) or of a text file (one per line)."""
    if os.path.splitext(path)[1].lower() in EXTENSIONS:
        ids = read_items(path).item_ids
        return ids, np.arange(2, len(ids) + 2)  # record i sits on line i + 2 under the header
    if not os.path.exists(path):
        raise FileNotFoundError(f"allowed-items file not found: {path}")
    with open(path, encoding="utf-8") as f:
        numbered = [(n, line.strip()) for n, line in enumerate(f, start=1)]
    kept = [(n, text) for n, text in numbered if text and not text.startswith("#")]
    return np.array([t for _, t in kept], dtype=str), np.array([n for n, _ in kept], dtype=np.int64)


def allowed_rows(catalog: Catalog, *, ids_file: str | None = None, where: list[str] | tuple[str, ...] = ()) -> np.ndarray:
    """int32 [allowed] catalog rows passing every filter (all items when none is given).

    Raises DataError naming the file and line of an id the catalog lacks, and ValueError when
    nothing is allowed.
    """
    mask = np.ones(catalog.num_items, bool)
    if ids_file is not None:
        ids, lines = _read_id_file(ids_file)
        rows = catalog.rows_of(ids)
        if (rows < 0).any():
            first = int(np.flatnonzero(rows < 0)[0])
            raise DataError(ids_file, f"item id {str(ids[first])!r} is not in the catalog", line=int(lines[first]))
        mask &= np.isin(np.arange(catalog.num_items), rows)
    for predicate in where:
        mask &= _predicate_mask(catalog, predicate)
    if not mask.any():
        raise ValueError(f"the allowed item set is empty (ids_file={ids_file!r}, where={list(where)})")
    return np.flatnonzero(mask).astype(np.int32)
