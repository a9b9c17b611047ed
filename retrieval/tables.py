"""Item, interaction and query tables from CSV, TSV, Parquet, JSONL and RecBole atomic files.

A reader first turns a file into columns of raw cells, each record tagged with where it came
from (its 1-based line in a text file, its 1-based row in a Parquet file), then converts only the
columns it needs. Every bad value is a :class:`DataError` whose message starts with the file, the
line (or row) and the column. Ids are always strings: ``242`` in a JSON or Parquet file and
``"242"`` in a CSV file are the same item.

Formats, chosen by extension:

- ``.csv`` / ``.tsv``: a header line, then one record per line (``csv`` quoting rules).
  Embeddings and query histories are space-separated strings in one cell.
- ``.jsonl``: one JSON object per line; embeddings and histories are JSON lists.
- ``.parquet``: read with pyarrow; embeddings and histories are list columns.
- ``.inter`` / ``.item`` / ``.user``: RecBole atomic files, tab-separated like TSV, header fields
  ``name:type`` with type ``token``, ``token_seq``, ``float`` or ``float_seq``; the ``:type``
  suffix is stripped from the column name. ``float`` columns become float64, the others stay
  strings (a ``token_seq`` such as a title is one string).

Example, ``items.csv`` and ``events.tsv``::

    item_id,genre,embedding          user_id  item_id  timestamp
    7,drama,0.5 1.0                  u1       9        12
    9,comedy,0.0 2.0                 u1       7        10

    items = read_items("items.csv", embedding_column="embedding")
    items.item_ids                   # ['7', '9']
    items.attributes["genre"]        # ['drama', 'comedy']
    items.embeddings                 # float32 [[0.5, 1.0], [0.0, 2.0]]
    inter = read_interactions("events.tsv", items=items)
    inter.timestamps                 # float64 [12., 10.]
    inter.lines                      # [2, 3]
    items.index_of(inter.item_ids)   # int32 [1, 0]

An event whose item is not in ``items`` would raise, e.g.
``DataError: events.tsv, line 3, column 'item_id': item id '8' is not in the item table``.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EXTENSIONS = (".csv", ".tsv", ".parquet", ".jsonl", ".inter", ".item", ".user")
"""The file extensions the readers understand (compared case-insensitively)."""

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".inter": "\t", ".item": "\t", ".user": "\t"}
_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


class DataError(ValueError):
    """A bad input file. The message starts with the file, the line (the row for Parquet) and the column.

    ``line`` is 1-based; for Parquet it is the 1-based row. ``line`` and ``column`` are None where
    the problem has no single place (an unreadable file, an empty shard directory).
    """

    def __init__(self, source: str, message: str, *, line: int | None = None, column: str | None = None):
        self.source, self.line, self.column = source, line, column
        where = [source]
        if line is not None:
            where.append(f"{_line_word(source)} {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


def _line_word(source: str) -> str:
    return "row" if source.lower().endswith(".parquet") else "line"


@dataclasses.dataclass(frozen=True)
class IdIndex:
    """Id -> row lookup over a catalog of unique string ids, by binary search.

    Example::

        index = IdIndex.build(np.array(["b", "a", "c"]))
        index.rows(np.array(["c", "x", "b"]))    # int32 [2, -1, 0]
    """

    sorted_ids: np.ndarray  # str [ids], ascending
    rows_of_sorted: np.ndarray  # int32 [ids], the catalog row of each sorted id

    @classmethod
    def build(cls, catalog: np.ndarray) -> IdIndex:  # catalog: str [ids], unique
        """The index of ``catalog``; a ValueError naming a duplicate id when the ids are not unique."""
        catalog = np.asarray(catalog, dtype=str)
        if catalog.ndim != 1:
            raise ValueError(f"a catalog of ids must be 1-D, got shape {catalog.shape}")
        order = np.argsort(catalog, kind="stable")
        sorted_ids = catalog[order]
        duplicates = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if duplicates.size:
            raise ValueError(f"duplicate id {str(sorted_ids[duplicates[0]])!r} in the catalog")
        return cls(sorted_ids, order.astype(np.int32))

    def rows(self, ids) -> np.ndarray:  # ids: str [...] -> int32 [...]
        """The catalog row of each id, -1 where the id is not in the catalog."""
        ids = np.asarray(ids, dtype=str)
        if self.sorted_ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int32)
        where = np.minimum(np.searchsorted(self.sorted_ids, ids), self.sorted_ids.size - 1)
        return np.where(self.sorted_ids[where] == ids, self.rows_of_sorted[where], -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ItemTable:
    """The item catalog: ids, attribute columns and optional content embeddings, one row per item."""

    item_ids: np.ndarray  # str [items], unique
    attributes: dict[str, np.ndarray]  # column -> [items] (str, int64 or float64)
    embeddings: np.ndarray | None  # float32 [items, dim]
    _index: IdIndex = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        num_items = self.item_ids.shape[0]
        for name, values in self.attributes.items():
            if values.shape != (num_items,):
                raise ValueError(f"attribute {name!r} has shape {values.shape}, expected ({num_items},)")
        if self.embeddings is not None and (self.embeddings.ndim != 2 or self.embeddings.shape[0] != num_items):
            raise ValueError(f"embeddings have shape {self.embeddings.shape}, expected ({num_items}, dim)")
        object.__setattr__(self, "_index", IdIndex.build(self.item_ids))

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    def rows(self, ids) -> np.ndarray:  # ids: str [...] -> int32 [...]
        """The row of each item id, -1 for ids not in the table."""
        return self._index.rows(ids)

    def index_of(self, ids) -> np.ndarray:  # ids: str [...] -> int32 [...]
        """The row of each item id; a KeyError naming the first unknown id."""
        ids = np.asarray(ids, dtype=str)
        rows = self.rows(ids)
        unknown = np.flatnonzero(rows.ravel() < 0)
        if unknown.size:
            first = str(ids.ravel()[unknown[0]])
            raise KeyError(f"{unknown.size} ids are not in the item table, the first is {first!r}")
        return rows


@dataclasses.dataclass(frozen=True)
class Interactions:
    """(user, item, time) events in file order, each remembering its line for later messages."""

    user_ids: np.ndarray  # str [events]
    item_ids: np.ndarray  # str [events]
    timestamps: np.ndarray  # float64 [events]
    source: str  # the file the events came from
    lines: np.ndarray  # int64 [events], line (Parquet: row) of each event in `source`

    def __post_init__(self):
        shapes = {a.shape for a in (self.user_ids, self.item_ids, self.timestamps, self.lines)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"{self.source}: interaction arrays must be 1-D of one length, got {sorted(shapes)}")

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def select(self, events: np.ndarray) -> Interactions:  # bool [events] or int [kept]
        """The events picked by a mask or an index array, in that order."""
        return Interactions(
            self.user_ids[events], self.item_ids[events], self.timestamps[events], self.source, self.lines[events]
        )


@dataclasses.dataclass(frozen=True)
class QueryShard:
    """One shard of batch-job queries; histories in CSR form.

    Query ``q``'s history is ``history_items[history_offsets[q]:history_offsets[q + 1]]``,
    oldest first (:meth:`history`).
    """

    source: str  # the shard's file
    user_ids: np.ndarray  # str [queries]
    history_offsets: np.ndarray  # int64 [queries + 1]
    history_items: np.ndarray  # str [total history length], item ids
    segments: np.ndarray | None  # str [queries], None when no segment column was named
    lines: np.ndarray  # int64 [queries], line (Parquet: row) of each query in `source`

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def history(self, query: int) -> np.ndarray:  # -> str [length]
        return self.history_items[self.history_offsets[query] : self.history_offsets[query + 1]]


@dataclasses.dataclass(frozen=True)
class _Table:
    """A file's records before conversion."""

    source: str
    columns: dict[str, list]  # column -> cells [records]: str in text formats; JSON/Arrow values (None: absent) else
    lines: np.ndarray  # int64 [records], line (Parquet: row) of each record
    header_line: int | None  # where a missing column is reported
    text: bool  # cells are the raw strings of a CSV/TSV/atomic file
    types: dict[str, str]  # column -> declared RecBole type (atomic files only)

    def error(self, message: str, *, record: int | None = None, column: str | None = None) -> DataError:
        line = self.header_line if record is None else int(self.lines[record])
        return DataError(self.source, message, line=line, column=column)

    def column(self, name: str) -> list:
        if name not in self.columns:
            present = ", ".join(repr(c) for c in self.columns) or "none"
            raise self.error(f"no such column (columns present: {present})", column=name)
        return self.columns[name]


def _read_table(path) -> _Table:
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), source)
    extension = os.path.splitext(source)[1].lower()
    if extension not in EXTENSIONS:
        raise DataError(source, f"unknown extension {extension!r}, expected one of {', '.join(EXTENSIONS)}")
    if extension == ".parquet":
        return _read_parquet(source)
    if extension == ".jsonl":
        return _read_jsonl(source)
    return _read_delimited(source, _DELIMITERS[extension], atomic=extension in (".inter", ".item", ".user"))


def _recbole_header(source: str, fields: list[str]) -> tuple[list[str], dict[str, str]]:
    """Column names and declared types of a RecBole header (``name:type`` fields)."""
    names, types = [], {}
    for field in fields:
        name, _, kind = field.rpartition(":")
        if not name or kind not in _RECBOLE_TYPES:
            raise DataError(
                source, f"a RecBole header field is name:type with type one of {', '.join(_RECBOLE_TYPES)}", line=1,
                column=field,
            )
        names.append(name)
        types[name] = kind
    return names, types


def _undecodable_line(source: str) -> int | None:
    """The first line of ``source`` that is not UTF-8 (text is decoded in chunks, so the reader cannot tell)."""
    with open(source, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _read_delimited(source: str, delimiter: str, *, atomic: bool) -> _Table:
    rows, lines = [], []
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(source, "empty file, expected a header line", line=1)
            names = [name.strip() for name in header]
            names, types = _recbole_header(source, names) if atomic else (names, {})
            for name in names:
                if not name or names.count(name) > 1:
                    raise DataError(source, "empty or repeated column name in the header", line=1, column=name)
            start = reader.line_num + 1
            for row in reader:
                if row:  # a blank line is no record
                    if len(row) != len(names):
                        raise DataError(source, f"{len(row)} fields, the header has {len(names)}", line=start)
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1
        except csv.Error as err:
            raise DataError(source, f"malformed line ({err})", line=reader.line_num) from err
        except UnicodeDecodeError as err:
            raise DataError(source, f"not UTF-8 text ({err.reason})", line=_undecodable_line(source)) from err
    cells = [list(column) for column in zip(*rows)] if rows else [[] for _ in names]
    return _Table(source, dict(zip(names, cells)), np.array(lines, np.int64), 1, True, types)


def _read_jsonl(source: str) -> _Table:
    records, lines = [], []
    with open(source, encoding="utf-8") as f:
        try:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as err:
                    raise DataError(source, f"bad JSON ({err.msg} at character {err.pos + 1})", line=number) from err
                if not isinstance(record, dict):
                    raise DataError(source, f"expected a JSON object, got {type(record).__name__}", line=number)
                records.append(record)
                lines.append(number)
        except UnicodeDecodeError as err:
            raise DataError(source, f"not UTF-8 text ({err.reason})", line=_undecodable_line(source)) from err
    names = dict.fromkeys(name for record in records for name in record)
    columns = {name: [record.get(name) for record in records] for name in names}
    return _Table(source, columns, np.array(lines, np.int64), lines[0] if lines else None, False, {})


def _read_parquet(source: str) -> _Table:
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError) as err:
        raise DataError(source, f"not a readable Parquet file ({err})") from err
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    return _Table(source, columns, np.arange(1, table.num_rows + 1, dtype=np.int64), None, False, {})


def _describe(cell) -> str:
    return "no value" if cell is None else f"{type(cell).__name__} {repr(cell)[:60]}"


def _to_id(table: _Table, record: int, column: str, cell) -> str:
    if isinstance(cell, str):
        value = cell.strip()
    elif isinstance(cell, int) and not isinstance(cell, bool):
        value = str(cell)
    else:
        raise table.error(f"an id is a string or an integer, got {_describe(cell)}", record=record, column=column)
    if not value:
        raise table.error("empty id", record=record, column=column)
    return value


def _ids(table: _Table, column: str) -> np.ndarray:  # -> str [records]
    cells = table.column(column)
    return np.array([_to_id(table, record, column, cell) for record, cell in enumerate(cells)], dtype=str)


def _to_number(table: _Table, record: int, column: str, cell) -> float:
    if isinstance(cell, str):
        try:
            return float(cell)
        except ValueError:
            pass
    elif isinstance(cell, int | float) and not isinstance(cell, bool):
        return float(cell)
    raise table.error(f"not a number: {_describe(cell)}", record=record, column=column)


def _timestamps(table: _Table, column: str) -> np.ndarray:  # -> float64 [records]
    cells = table.column(column)
    values = np.array([_to_number(table, record, column, cell) for record, cell in enumerate(cells)], np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise table.error(f"timestamp {cells[bad[0]]!r} is not finite", record=int(bad[0]), column=column)
    return values


def _embeddings(table: _Table, column: str) -> np.ndarray:  # -> float32 [records, dim]
    rows = []
    for record, cell in enumerate(table.column(column)):
        values = cell.split() if isinstance(cell, str) and table.text else cell
        if not isinstance(values, list):
            raise table.error(f"an embedding is a list of numbers, got {_describe(cell)}", record=record, column=column)
        try:
            row = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise table.error(f"embedding values must be numbers, got {repr(cell)[:60]}", record=record, column=column)
        if row.ndim != 1 or row.size == 0:
            raise table.error(f"an embedding is a non-empty flat list of numbers, got {repr(cell)[:60]}",
                              record=record, column=column)
        if rows and row.size != rows[0].size:
            raise table.error(
                f"embedding of length {row.size}, the one on {_line_word(table.source)} {table.lines[0]} has "
                f"length {rows[0].size}", record=record, column=column,
            )
        rows.append(row)
    if not rows:
        return np.zeros((0, 0), np.float32)
    matrix = np.stack(rows).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise table.error("non-finite embedding value (NaN, inf, or beyond float32)", record=int(bad[0]), column=column)
    return matrix


def _is_float_text(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return "_" not in cell


def _text_attribute(cells: list[str], declared: str | None) -> np.ndarray:  # -> str | int64 | float64 [records]
    """A text column: its declared RecBole type, else int64 or float64 if every filled cell parses, else str."""
    filled = [cell for cell in cells if cell.strip()]
    if declared is None and filled and len(filled) == len(cells) and all(_INTEGER.fullmatch(c) for c in cells):
        try:
            return np.array([int(cell) for cell in cells], dtype=np.int64)
        except OverflowError:
            pass
    if declared == "float" or (declared is None and filled and all(_is_float_text(c) for c in filled)):
        return np.array([float(cell) if cell.strip() else np.nan for cell in cells], dtype=np.float64)
    return np.array(cells, dtype=str)


def _attribute(table: _Table, column: str) -> np.ndarray:  # -> str | int64 | float64 [records]
    """An attribute column: int64 / float64 when every present value is an integer / a number, else str.

    Absent values (empty text cells, JSON null or missing keys) are NaN in a numeric column and ""
    in a string column.
    """
    cells = table.columns[column]
    if table.text:
        declared = table.types.get(column)
        if declared == "float":
            for record, cell in enumerate(cells):
                if cell.strip() and not _is_float_text(cell):
                    raise table.error(f"not a number: {cell!r}", record=record, column=column)
        return _text_attribute(cells, declared)
    kinds = {type(cell) for cell in cells if cell is not None}
    for record, cell in enumerate(cells):
        if isinstance(cell, list | dict):
            raise table.error(f"attribute values must be scalars, got {_describe(cell)}", record=record, column=column)
    if kinds and kinds <= {int} and None not in cells:
        return np.array(cells, dtype=np.int64)
    if kinds and kinds <= {int, float}:
        return np.array([np.nan if cell is None else cell for cell in cells], dtype=np.float64)
    return np.array(["" if cell is None else str(cell) for cell in cells], dtype=str)


def _id_lists(table: _Table, column: str) -> tuple[np.ndarray, np.ndarray]:  # -> int64 [records + 1], str [total]
    """CSR item-id lists: a space-separated string per text cell, a JSON/Arrow list otherwise."""
    lists = []
    for record, cell in enumerate(table.column(column)):
        if isinstance(cell, str) and table.text:
            lists.append(cell.split())
        elif isinstance(cell, list):
            lists.append([_to_id(table, record, column, value) for value in cell])
        else:
            raise table.error(f"a history is a list of item ids, got {_describe(cell)}", record=record, column=column)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in lists], out=offsets[1:])
    return offsets, np.array([item for ids in lists for item in ids], dtype=str)


def _check_unique(table: _Table, column: str, ids: np.ndarray) -> None:  # ids: str [records]
    """A DataError at the first record whose id an earlier record already has."""
    order = np.argsort(ids, kind="stable")
    repeats = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if repeats.size:
        record = int(order[repeats + 1].min())  # stable sort: the later record of each equal pair
        first = int(np.flatnonzero(ids == ids[record])[0])
        raise table.error(
            f"duplicate item id {str(ids[record])!r} (also on {_line_word(table.source)} {table.lines[first]})",
            record=record, column=column,
        )


def read_items(path, *, id_column: str = "item_id", embedding_column: str | None = None) -> ItemTable:
    """The item table of one file; every column but the id and the embedding becomes an attribute.

    Attribute types: a RecBole ``float`` column is float64 and its other types stay str; in other
    formats a column is int64 when every value is an integer, float64 when every present value
    is a number, str otherwise.

    Raises:
      DataError: a malformed record, a missing or empty id, a duplicate id, embeddings of
        different lengths or with non-finite values, an unknown extension.
      FileNotFoundError: no such file.
    """
    table = _read_table(path)
    item_ids = _ids(table, id_column)
    _check_unique(table, id_column, item_ids)
    embeddings = None if embedding_column is None else _embeddings(table, embedding_column)
    attributes = {
        name: _attribute(table, name) for name in table.columns if name not in (id_column, embedding_column)
    }
    return ItemTable(item_ids, attributes, embeddings)


def read_interactions(
    path,
    *,
    user_column: str = "user_id",
    item_column: str = "item_id",
    time_column: str = "timestamp",
    items: ItemTable | None = None,
) -> Interactions:
    """The events of one file, in file order; other columns are ignored.

    Args:
      path: a file with one of :data:`EXTENSIONS`.
      items: when given, every event's item must be in this table.

    Raises:
      DataError: a malformed record, a missing column, an empty user or item id, a timestamp that
        is not a finite number, an item not in ``items``, an unknown extension.
      FileNotFoundError: no such file.
    """
    table = _read_table(path)
    for name in (user_column, item_column, time_column):
        table.column(name)
    user_ids = _ids(table, user_column)
    item_ids = _ids(table, item_column)
    timestamps = _timestamps(table, time_column)
    if items is not None:
        unknown = np.flatnonzero(items.rows(item_ids) < 0)
        if unknown.size:
            raise table.error(
                f"item id {str(item_ids[unknown[0]])!r} is not in the item table "
                f"({unknown.size} events have unknown items)",
                record=int(unknown[0]), column=item_column,
            )
    return Interactions(user_ids, item_ids, timestamps, table.source, table.lines)


def _read_query_shard(path: str, user_column: str, history_column: str, segment_column: str | None) -> QueryShard:
    table = _read_table(path)
    for name in (user_column, history_column) + ((segment_column,) if segment_column else ()):
        table.column(name)
    user_ids = _ids(table, user_column)
    offsets, items = _id_lists(table, history_column)
    segments = None if segment_column is None else _ids(table, segment_column)
    return QueryShard(table.source, user_ids, offsets, items, segments, table.lines)


def query_files(path) -> list[str]:
    """The query shard files of ``path``: the file itself, or a directory's files with one of
    :data:`EXTENSIONS` (names starting with "." skipped) in sorted name order.

    Raises DataError for a directory without shards and FileNotFoundError for a missing path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(
            name for name in os.listdir(path)
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS
        )
        if not names:
            raise DataError(path, f"no query shard files ({', '.join(EXTENSIONS)}) in this directory")
        return [os.path.join(path, name) for name in names]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no query file or directory at {path}")
    return [path]


def read_queries(
    path,
    *,
    user_column: str = "user_id",
    history_column: str = "history",
    segment_column: str | None = None,
) -> list[QueryShard]:
    """The query shards of one file or of a directory of shard files (:func:`query_files`).

    A history is a space-separated string of item ids in CSV/TSV (empty: no history) and a list
    of ids (ints or strings) in JSONL/Parquet, oldest first.

    Raises:
      DataError: a directory without shards, a malformed record, a missing column, an empty user,
        item or segment id, a history that is not a list.
      FileNotFoundError: no such file or directory.
    """
    return [_read_query_shard(file, user_column, history_column, segment_column) for file in query_files(path)]
