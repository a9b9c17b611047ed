"""A small trained retrieval run for the retrieval tests (built once per session in conftest)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from retrieval.pipeline import DataSettings, Prepared, load_tables, prepare
from retrieval.search import Retriever
from retrieval.training import TrainSettings, train_retriever

SMALL_DATA = DataSettings(synthetic_users=240, synthetic_items=120, levels=2, codebook_size=8, max_history=6, seed=3)
SMALL_TRAIN = TrainSettings(steps=40, batch=32, eval_every=20, eval_users=40, eval_beams=10, seed=3)


@dataclasses.dataclass(frozen=True)
class SmallRun:
    prepared: Prepared
    retriever: Retriever
    run_dir: str  # the training run folder (config.json, catalog/, params/)
    root: str  # a scratch folder for the test's own files


def train_small_run(root: str) -> SmallRun:
    prepared = prepare(*load_tables(SMALL_DATA), SMALL_DATA)
    run_dir = os.path.join(root, "model")
    result = train_retriever(prepared.split.train, prepared.split.valid, prepared.catalog, run_dir, SMALL_TRAIN,
                             max_history=SMALL_DATA.max_history, progress=False)
    return SmallRun(prepared, result.retriever, run_dir, root)


def history_rows(run: SmallRun, count: int) -> np.ndarray:
    """int32 [count, max_history] test histories (catalog rows, -1 pads)."""
    return run.prepared.split.test.history[:count]
