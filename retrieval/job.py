"""The batch retrieval job: top-K allowed items for every query, across devices and hosts,
resumable, each query written exactly once.

Work plan. The query input is one file or a directory of shard files (sorted by name). Input
file ``f`` belongs to process ``f % process_count``; each process reads only its own files and
cuts each into chunks of ``shard_rows`` queries. Chunk ``c`` of file ``f`` becomes the output
shard ``part-FFFFF-CCCCC.parquet`` (or ``.jsonl``). A shard is done exactly when its file exists
under that final name: it is written to a temporary name in the same folder and renamed
atomically, so a killed process loses at most the shards in flight, and a restart skips every
shard already done. No query is dropped (the last batch of a chunk is padded with dummy rows
that are cut off) and none is repeated (every chunk has one owner and one name).

Every output row is ``user_id, rank (1-based), item_id, score (the model's log-probability of
the item's ID), semantic_id (its codes)``. ``manifest.json`` records the inputs' fingerprints
(the retriever's catalog and parameters, each query file's SHA-256, the allowed items), the
settings and the planned shards; process 0 writes it at the start, and at the end adds the
shards done once all of them exist. A restart whose inputs or settings differ from the
manifest is refused unless ``overwrite``, which deletes the old outputs first.

Devices: each batch is split over the process's local devices on a ``data`` axis
(:func:`retrieval.search.constrained_top_k` with a mesh); the batch is padded to
``batch_size`` so one program compiles once. Hosts: under ``jax.distributed`` each process
runs this same function; the process index and count come from JAX.

Per-query policies (documented, never silent):

* an item id in a history that the catalog lacks: ``unknown_items="error"`` (default) raises
  a DataError naming the file and line; ``"drop"`` leaves it out of the prompt;
* histories longer than the retriever's ``max_history`` are cut to their last items for the
  prompt; the whole history is still excluded from the results;
* a query whose allowed items (its segment, minus its history) number fewer than K gets the
  ones there are (fewer rows); the summary counts such ``short_queries``;
* a query naming a segment no allowed item has: DataError naming the file and line;
* a query for which the model produced non-finite logits (``BeamSearchOutput.nonfinite``):
  FloatingPointError naming the file and lines; the shard is not written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax.sharding import Mesh
from tqdm import tqdm

from decoding.sharding import DATA, MODEL
from retrieval.allowed import allowed_rows
from retrieval.search import AllowedItems, Retriever, TopItems, constrained_top_k
from retrieval.tables import DataError, QueryShard, query_files, read_queries
from retrieval.training import load_retriever

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
FORMATS = ("parquet", "jsonl")


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """What the job computes; every field is recorded in the manifest."""

    k: int = 10
    num_beams: int = 20
    batch_size: int = 64  # queries per device call (all local devices together)
    shard_rows: int = 4096  # queries per output shard
    output_format: str = "parquet"
    exclude_history: bool = True
    allowed_ids_file: str | None = None
    allowed_where: tuple[str, ...] = ()
    segment_column: str | None = None  # query column naming the query's segment
    segment_attribute: str | None = None  # catalog attribute holding each item's segment
    user_column: str = "user_id"
    history_column: str = "history"
    unknown_items: str = "error"

    def validate(self) -> None:
        if not 1 <= self.k <= self.num_beams:
            raise ValueError(f"need 1 <= k <= num_beams, got k={self.k}, num_beams={self.num_beams}")
        if self.batch_size < 1 or self.shard_rows < 1:
            raise ValueError(f"batch_size and shard_rows must be >= 1, got {self.batch_size}, {self.shard_rows}")
        if self.output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {FORMATS}, got {self.output_format!r}")
        if self.unknown_items not in ("error", "drop"):
            raise ValueError(f"unknown_items must be 'error' or 'drop', got {self.unknown_items!r}")
        if (self.segment_column is None) != (self.segment_attribute is None):
            raise ValueError("segment_column (queries) and segment_attribute (items) go together")


@dataclasses.dataclass(frozen=True)
class JobSummary:
    queries: int  # queries this process wrote in this run
    skipped_shards: int  # shards found done from an earlier run
    written_shards: int
    seconds: float
    devices: int  # local devices on the data axis
    processes: int
    process_index: int
    invalid_outputs: int  # results outside the allowed set, in the history or off-segment: must be 0
    short_queries: int  # queries with fewer than k allowed items

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "queries_per_second": round(self.queries_per_second, 2)}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def params_sha256(params: Any) -> str:
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def shard_name(file_index: int, chunk: int, output_format: str) -> str:
    return f"part-{file_index:05d}-{chunk:05d}.{output_format}"


def local_mesh() -> Mesh:
    """A ``(data, model=1)`` mesh over this process's own devices."""
    devices = np.array(jax.local_devices()).reshape(-1, 1)
    return Mesh(devices, (DATA, MODEL))


def _expected_manifest(retriever: Retriever, files: list[str], allowed: AllowedItems, settings: JobSettings) -> dict[str, Any]:
    """What a restart must match (the process count may change: shard names do not depend on it)."""
    return {
        "format": MANIFEST_FORMAT,
        "inputs": {
            "catalog_sha256": retriever.catalog.fingerprint(),
            "params_sha256": params_sha256(retriever.params),
            "queries": [{"file": os.path.basename(f), "sha256": file_sha256(f)} for f in files],
            "allowed_items_sha256": hashlib.sha256(allowed.rows.tobytes()).hexdigest(),
        },
        "settings": {**dataclasses.asdict(settings), "allowed_where": list(settings.allowed_where)},
    }


def _write_json_atomic(path: str, content: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=2)
    os.replace(tmp, path)


def _owner(name: str, process_count: int, num_files: int) -> int | None:
    """The process that owns output shard ``name`` in this run (0 for strays of another plan)."""
    try:
        file_index = int(name.split("-")[1])
    except (IndexError, ValueError):
        return 0
    return file_index % process_count if file_index < num_files else 0


def _check_manifest(
    out_dir: str, expected: dict[str, Any], overwrite: bool, process_index: int, process_count: int, num_files: int
) -> None:
    """Refuses a restart with other inputs or settings; with ``overwrite`` each process deletes
    the old shards it owns (so no process deletes another's fresh output) and process 0 the
    manifest and strays."""
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in expected} != expected:
            if not overwrite:
                differing = [k for k in expected if saved.get(k) != expected[k]]
                raise ValueError(
                    f"{out_dir} holds the output of a job with other {' and '.join(differing)} "
                    f"(see {path}); pass --overwrite to replace it, or choose another output folder"
                )
            for name in os.listdir(out_dir):
                if name.startswith("part-") and _owner(name, process_count, num_files) == process_index:
                    os.remove(os.path.join(out_dir, name))
            if process_index == 0:
                os.remove(path)
    if process_index == 0 and not os.path.exists(path):
        _write_json_atomic(path, expected)


def _history_rows(
    retriever: Retriever, shard: QueryShard, start: int, stop: int, settings: JobSettings
) -> tuple[np.ndarray, np.ndarray]:  # int32 [n, max_history] prompt rows, int32 [n, E] excluded rows
    """Catalog rows of each query's history: the last ``max_history`` for the prompt, all of
    them for the exclusion (width bucketed to a power of two >= max_history, to compile rarely)."""
    catalog, width = retriever.catalog, retriever.max_history
    offsets = shard.history_offsets[start : stop + 1]
    ids = shard.history_items[offsets[0] : offsets[-1]]
    rows = catalog.rows_of(ids)  # one lookup for the whole chunk
    unknown = np.flatnonzero(rows < 0)
    if unknown.size and settings.unknown_items == "error":
        query = start + int(np.searchsorted(offsets, offsets[0] + unknown[0], side="right")) - 1
        raise DataError(shard.source, f"history item id {str(ids[unknown[0]])!r} is not in the catalog "
                        f"(pass unknown_items='drop' to leave such items out)", line=int(shard.lines[query]),
                        column=settings.history_column)
    bounds = offsets - offsets[0]
    per_query = [r[r >= 0] for r in np.split(rows, bounds[1:-1])]
    n = stop - start
    prompt = np.full((n, width), -1, np.int32)
    longest = max((len(r) for r in per_query), default=0)
    excluded_width = 1 << (max(width, longest, 1) - 1).bit_length()  # the power of two >= both
    excluded = np.full((n, excluded_width), -1, np.int32)
    for i, rows in enumerate(per_query):
        recent = rows[-width:]
        prompt[i, : len(recent)] = recent
        if settings.exclude_history:
            excluded[i, : len(rows)] = rows
    return prompt, excluded


def _segments(allowed: AllowedItems, shard: QueryShard, start: int, stop: int, settings: JobSettings) -> np.ndarray | None:
    if settings.segment_column is None:
        return None
    names = shard.segments[start:stop]
    ids = allowed.segment_ids(names)
    if (ids < 0).any():
        first = int(np.flatnonzero(ids < 0)[0])
        raise DataError(shard.source, f"segment {str(names[first])!r} has no allowed item",
                        line=int(shard.lines[start + first]), column=settings.segment_column)
    return ids


def _check_results(
    top: TopItems, allowed: AllowedItems, excluded: np.ndarray, segments: np.ndarray | None, k: int
) -> tuple[int, int]:
    """(invalid results, queries with fewer than k): results must be allowed, outside the
    excluded rows and in the query's segment."""
    found = top.items >= 0
    leaf = np.where(found, allowed.leaf_of_row[np.maximum(top.items, 0)], -1)
    bad = found & (leaf < 0)
    bad |= found & (top.items[:, :, None] == np.where(excluded >= 0, excluded, -2)[:, None, :]).any(axis=2)
    if segments is not None:
        item_segment = allowed.tables.leaf_segments[np.maximum(leaf, 0)]
        bad |= found & (segments[:, None] >= 0) & (item_segment != segments[:, None])
    return int(bad.sum()), int((found.sum(axis=1) < k).sum())


def _write_shard(path: str, shard: QueryShard, start: int, top: TopItems, retriever: Retriever, output_format: str) -> int:
    """Writes one output shard atomically; returns its number of rows."""
    query, rank = np.nonzero(top.items >= 0)
    items = top.items[query, rank]
    codes = retriever.catalog.codes[items]
    columns = {
        "user_id": shard.user_ids[start + query].astype(str),
        "rank": (rank + 1).astype(np.int32),
        "item_id": retriever.catalog.item_ids[items].astype(str),
        "score": top.log_probs[query, rank].astype(np.float32),
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    if output_format == "parquet":
        table = pa.table({**columns, "semantic_id": pa.array(codes.tolist(), type=pa.list_(pa.int32()))})
        pq.write_table(table, tmp)
    else:
        with open(tmp, "w") as f:
            for i in range(len(items)):
                row = {name: values[i].item() for name, values in columns.items()}
                row["semantic_id"] = codes[i].tolist()
                f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return len(items)


def run_job(
    run_dir: str,
    queries: str,
    out_dir: str,
    settings: JobSettings = JobSettings(),
    *,
    overwrite: bool = False,
    progress: bool = True,
    wait_seconds: float = 3600.0,
    retriever: Retriever | None = None,
    mesh: Mesh | None = None,
) -> JobSummary:
    """Runs this process's share of the job (see the module docstring) and returns its summary.

    ``retriever``: the loaded run (default: :func:`retrieval.training.load_retriever` of
    ``run_dir``). ``mesh``: a ``(data, model)`` mesh of this process's devices (default: all
    of them, :func:`local_mesh`).

    Process 0 also waits (up to ``wait_seconds``) for every planned shard and then records the
    shards done in the manifest; it raises TimeoutError naming the missing shards otherwise.
    """
    settings.validate()
    began = time.perf_counter()
    retriever = load_retriever(run_dir) if retriever is None else retriever
    catalog = retriever.catalog
    files = query_files(queries)
    segment_values = None
    if settings.segment_attribute is not None:
        if settings.segment_attribute not in catalog.attributes:
            raise ValueError(f"the catalog has no attribute {settings.segment_attribute!r} "
                             f"(it has {sorted(catalog.attributes)})")
        segment_values = catalog.attributes[settings.segment_attribute]
    rows = allowed_rows(catalog, ids_file=settings.allowed_ids_file, where=settings.allowed_where)
    if settings.k > len(rows):
        raise ValueError(f"k={settings.k} is larger than the allowed item set ({len(rows)} items)")
    allowed = AllowedItems.build(catalog, rows=rows, segment_values=segment_values)
    process_index, process_count = jax.process_index(), jax.process_count()
    os.makedirs(out_dir, exist_ok=True)
    expected = _expected_manifest(retriever, files, allowed, settings)
    _check_manifest(out_dir, expected, overwrite, process_index, process_count, len(files))

    mesh = local_mesh() if mesh is None else mesh
    devices = mesh.devices.size
    batch_size = -(-settings.batch_size // devices) * devices
    mine = [(f, path) for f, path in enumerate(files) if f % process_count == process_index]
    queries_done = written = skipped = invalid = short = 0
    bar = tqdm(desc=f"retrieval job (process {process_index})", unit="query", disable=not progress)
    for file_index, path in mine:
        shard = read_queries(
            path, user_column=settings.user_column, history_column=settings.history_column,
            segment_column=settings.segment_column,
        )[0]
        for chunk, start in enumerate(range(0, len(shard), settings.shard_rows)):
            target = os.path.join(out_dir, shard_name(file_index, chunk, settings.output_format))
            stop = min(start + settings.shard_rows, len(shard))
            if os.path.exists(target):
                skipped += 1
                continue
            prompt, excluded = _history_rows(retriever, shard, start, stop, settings)
            segments = _segments(allowed, shard, start, stop, settings)
            top = constrained_top_k(
                retriever, allowed, prompt, k=settings.k, num_beams=settings.num_beams, exclude=excluded,
                segments=segments, batch_size=batch_size, mesh=mesh,
            )
            if top.nonfinite.any():
                lines = shard.lines[start:stop][top.nonfinite]
                raise FloatingPointError(
                    f"{shard.source}: the model produced non-finite logits (NaN or inf) for {len(lines)} queries, "
                    f"at lines {lines[:10].tolist()}; their results would be meaningless, so shard "
                    f"{os.path.basename(target)} was not written (check the retriever's parameters)"
                )
            bad, few = _check_results(top, allowed, excluded, segments, settings.k)
            invalid, short = invalid + bad, short + few
            _write_shard(target, shard, start, top, retriever, settings.output_format)
            queries_done += stop - start
            written += 1
            bar.update(stop - start)
    bar.close()
    summary = JobSummary(queries_done, skipped, written, time.perf_counter() - began, devices, process_count,
                         process_index, invalid, short)
    if process_index == 0:
        _finish_manifest(out_dir, files, settings, expected, wait_seconds)
    return summary


def planned_shards(files: list[str], settings: JobSettings) -> list[str]:
    """Every output shard name of the job (reads only each file's row count)."""
    names = []
    for f, path in enumerate(files):
        count = len(read_queries(path, user_column=settings.user_column, history_column=settings.history_column)[0])
        names += [shard_name(f, c, settings.output_format) for c in range(-(-count // settings.shard_rows))]
    return names


def _finish_manifest(out_dir: str, files: list[str], settings: JobSettings, expected: dict[str, Any], wait: float) -> None:
    names = planned_shards(files, settings)
    deadline = time.monotonic() + wait
    while True:
        missing = [n for n in names if not os.path.exists(os.path.join(out_dir, n))]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} shards are still missing after {wait:.0f} s (first: {missing[0]}); "
                               "rerun the job to finish them")
        time.sleep(0.5)
    _write_json_atomic(os.path.join(out_dir, MANIFEST), {**expected, "shards_done": names, "processes": jax.process_count()})


def read_results(out_dir: str) -> pa.Table:
    """Every output row of a finished job as one table, ordered by shard name and row."""
    names = sorted(n for n in os.listdir(out_dir) if n.startswith("part-") and "tmp" not in n)
    tables = []
    for name in names:
        path = os.path.join(out_dir, name)
        if name.endswith(".parquet"):
            tables.append(pq.read_table(path))
        else:
            with open(path) as f:
                records = [json.loads(line) for line in f]
            tables.append(pa.Table.from_pylist(records, schema=_JSONL_SCHEMA) if records else _JSONL_SCHEMA.empty_table())
    return pa.concat_tables(tables) if tables else _JSONL_SCHEMA.empty_table()


_JSONL_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32()),
    ("semantic_id", pa.list_(pa.int32())),
])
