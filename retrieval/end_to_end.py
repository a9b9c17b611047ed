"""The main job end to end: data -> semantic IDs -> trained retriever -> batch job -> the table.

``run_end_to_end(workdir)`` is what ``python scripts/retrieve.py`` runs with no arguments::

    WORKDIR/model/     the retriever run folder (trained if absent, resumed if cut short)
    WORKDIR/queries/   the test split's queries as Parquet shards (user_id, history)
    WORKDIR/output/    the batch job's output shards and manifest (resumed if cut short)
    WORKDIR/results.json   the evaluation table; its constrained row scores the job's output

Every step is deterministic per seed, so a rerun reproduces the same table.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.catalog import Catalog
from retrieval.evaluate import EvalSettings, evaluate
from retrieval.job import JobSettings, read_results, run_job
from retrieval.pipeline import DataSettings, load_tables, prepare, summary
from retrieval.preprocess import Examples
from retrieval.training import TrainSettings, train_retriever


def write_queries(examples: Examples, catalog: Catalog, folder: str, shards: int = 4) -> list[str]:
    """Writes the examples' (user_id, history of item ids) as ``shards`` Parquet files."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(len(examples.targets)), shards)):
        history = [catalog.item_ids[h[h >= 0]].tolist() for h in examples.history[rows]]
        table = pa.table({"user_id": examples.user_ids[rows].astype(str), "history": pa.array(history, pa.list_(pa.string()))})
        path = os.path.join(folder, f"queries-{i:03d}.parquet")
        pq.write_table(table, path)
        paths.append(path)
    return paths


def ranked_from_output(output: pa.Table, catalog: Catalog, user_ids: np.ndarray, k: int) -> np.ndarray:
    """int32 [users, k] catalog rows from the job's output rows (rank order), -1 where missing."""
    user_row = {u: i for i, u in enumerate(user_ids.astype(str).tolist())}
    ranked = np.full((len(user_ids), k), -1, np.int32)
    users = output.column("user_id").to_pylist()
    ranks = np.asarray(output.column("rank").to_numpy()) - 1
    items = catalog.rows_of(np.asarray(output.column("item_id").to_pylist(), dtype=str))
    rows = np.array([user_row[u] for u in users], np.int64)
    keep = ranks < k
    ranked[rows[keep], ranks[keep]] = items[keep]
    return ranked


def run_end_to_end(
    workdir: str,
    data: DataSettings = DataSettings(),
    train: TrainSettings = TrainSettings(),
    job: JobSettings = JobSettings(k=20, num_beams=20),
    evaluation: EvalSettings = EvalSettings(exact_users=500),
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs every stage (see the module docstring); returns the results (also in results.json)."""
    timings: dict[str, float] = {}
    began = time.perf_counter()
    prepared = prepare(*load_tables(data), data)
    timings["data_and_semantic_ids"] = time.perf_counter() - began

    began = time.perf_counter()
    trained = train_retriever(
        prepared.split.train, prepared.split.valid, prepared.catalog, os.path.join(workdir, "model"), train,
        max_history=data.max_history, progress=progress,
    )
    timings["training"] = time.perf_counter() - began

    began = time.perf_counter()
    test = prepared.split.test
    queries = os.path.join(workdir, "queries")
    write_queries(test, prepared.catalog, queries)
    job_summary = run_job(os.path.join(workdir, "model"), queries, os.path.join(workdir, "output"), job,
                          retriever=trained.retriever, progress=progress)
    timings["batch_job"] = time.perf_counter() - began

    began = time.perf_counter()
    k_max = max(evaluation.ks)
    ranked = ranked_from_output(read_results(os.path.join(workdir, "output")), prepared.catalog, test.user_ids, k_max)
    table = evaluate(trained.retriever, test, prepared.split.train, prepared.cold_items,
                     dataclasses.replace(evaluation, num_beams=job.num_beams), constrained_items=ranked)
    timings["evaluation"] = time.perf_counter() - began
    results = {
        "dataset": data.dataset,
        "data": summary(prepared),
        "training": {"best": trained.log["best"], "evals": trained.log["evals"], "seconds": trained.log["seconds"]},
        "job": job_summary.as_dict(),
        "evaluation": table,
        "seconds": timings,
    }
    return results
