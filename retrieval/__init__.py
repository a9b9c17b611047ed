"""Batch generative retrieval: data tables, semantic IDs, training, search, metrics, the batch job.

It imports ``decoding/``, ``models/`` and ``constraints/``; none of them imports it. The main
entry points::

    from retrieval import (DataSettings, load_tables, prepare,           # data -> catalog + split
                           TrainSettings, train_retriever, load_retriever,
                           AllowedItems, constrained_top_k, exact_log_probs,
                           evaluate, JobSettings, run_job, run_end_to_end)
"""

from retrieval.catalog import Catalog, TokenLayout
from retrieval.end_to_end import run_end_to_end
from retrieval.evaluate import EvalSettings, evaluate, format_table
from retrieval.exact import exact_log_probs, exact_top_k
from retrieval.job import JobSettings, JobSummary, read_results, run_job
from retrieval.pipeline import DataSettings, Prepared, load_tables, prepare
from retrieval.search import AllowedItems, Retriever, TopItems, constrained_top_k, unconstrained_top_k
from retrieval.semantic_ids import SemanticIds, build_semantic_ids
from retrieval.tables import DataError, read_interactions, read_items, read_queries
from retrieval.training import TrainSettings, load_retriever, train_retriever

__all__ = [
    "AllowedItems",
    "Catalog",
    "DataError",
    "DataSettings",
    "EvalSettings",
    "JobSettings",
    "JobSummary",
    "Prepared",
    "Retriever",
    "SemanticIds",
    "TokenLayout",
    "TopItems",
    "TrainSettings",
    "build_semantic_ids",
    "constrained_top_k",
    "evaluate",
    "exact_log_probs",
    "exact_top_k",
    "format_table",
    "load_retriever",
    "load_tables",
    "prepare",
    "read_interactions",
    "read_items",
    "read_queries",
    "read_results",
    "run_end_to_end",
    "run_job",
    "train_retriever",
    "unconstrained_top_k",
]
