"""The evaluation table: every method on the same test split, from the same trained model.

Rows (each Recall@K and NDCG@K for K in ``ks``; every method skips the query's own history):

* ``constrained beam``: beam search constrained to the catalog (``num_beams`` beams);
* ``unconstrained beam``: plain beam search mapped back to items, with its invalid-ID rate;
* ``exact scoring``: the model's log-probability of every catalog item, top-K (the ceiling of
  beam search), and how often the beam's top-10 equals it (``beam_equals_exact@10``);
* ``most popular`` and ``co-occurrence`` baselines (:mod:`retrieval.baselines`);
* cold start: test events whose target is a held-out (never trained on) item, decoded
  constrained to the cold items vs unconstrained.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from retrieval import baselines
from retrieval.exact import exact_log_probs, exact_top_k
from retrieval.metrics import DEFAULT_KS, metric_row
from retrieval.preprocess import Examples, Sequences
from retrieval.search import AllowedItems, Retriever, constrained_top_k, unconstrained_top_k


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    num_beams: int = 20
    ks: tuple[int, ...] = DEFAULT_KS
    exact_users: int | None = None  # score every item for the first N test users (None: all)
    batch_size: int = 64


def _subset(examples: Examples, mask: np.ndarray) -> Examples:
    return Examples(
        user_ids=examples.user_ids[mask],
        history=examples.history[mask],
        history_lengths=examples.history_lengths[mask],
        targets=examples.targets[mask],
    )


def evaluate(
    retriever: Retriever,
    test: Examples,
    train: Sequences,
    cold_items: np.ndarray,
    settings: EvalSettings = EvalSettings(),
    constrained_items: np.ndarray | None = None,
) -> dict[str, Any]:
    """The table as a dict: ``{"rows": {method: metrics}, "cold_start": {...}, "counts": {...}}``.

    ``cold_items``: int [c] catalog rows held out of training (may be empty).
    ``constrained_items``: int [n, >= max(ks)] catalog rows the batch job already returned for
    the test queries (the row then scores the job's output); None runs the search here.
    """
    catalog, k_max = retriever.catalog, max(settings.ks)
    beams = max(settings.num_beams, k_max)
    rows: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}

    if constrained_items is None:
        began = time.perf_counter()
        constrained_items = constrained_top_k(
            retriever, AllowedItems.build(catalog), test.history, k=k_max, num_beams=beams, exclude=test.history,
            batch_size=settings.batch_size,
        ).items
        timings["constrained beam"] = time.perf_counter() - began
    rows["constrained beam"] = metric_row(constrained_items, test.targets, settings.ks)

    began = time.perf_counter()
    free = unconstrained_top_k(
        retriever, test.history, k=k_max, num_beams=beams, exclude=test.history, batch_size=settings.batch_size
    )
    timings["unconstrained beam"] = time.perf_counter() - began
    rows["unconstrained beam"] = metric_row(free.items, test.targets, settings.ks)
    rows["unconstrained beam"]["invalid_id_rate"] = float(free.invalid.sum() / (len(test.targets) * beams))

    scored = len(test.targets) if settings.exact_users is None else min(settings.exact_users, len(test.targets))
    began = time.perf_counter()
    scores = exact_log_probs(retriever, test.history[:scored])
    exact_items, _ = exact_top_k(scores, k_max, history=test.history[:scored])
    timings["exact scoring"] = time.perf_counter() - began
    rows["exact scoring"] = metric_row(exact_items, test.targets[:scored], settings.ks)
    same = (constrained_items[:scored, :10] == exact_items[:, :10]).all(axis=1)
    rows["exact scoring"]["beam_equals_exact@10"] = float(same.mean()) if scored else 0.0
    if scored < len(test.targets):  # the beam's recall on the same users, for a like-for-like comparison
        rows["exact scoring"]["beam_recall@10_same_users"] = metric_row(
            constrained_items[:scored], test.targets[:scored], (10,)
        )["recall@10"]

    pop = baselines.most_popular(train, catalog.num_items, test.history, k_max)
    rows["most popular"] = metric_row(pop, test.targets, settings.ks)
    co = baselines.cooccurrence(train, catalog.num_items, test.history, test.history_lengths, k_max)
    rows["co-occurrence"] = metric_row(co, test.targets, settings.ks)

    cold = {}
    cold_items = np.asarray(cold_items)
    is_cold = np.isin(test.targets, cold_items)
    if cold_items.size and is_cold.any():
        cold_test = _subset(test, is_cold)
        k_cold = min(10, cold_items.size)
        allowed = AllowedItems.build(catalog, rows=cold_items)
        within = constrained_top_k(
            retriever, allowed, cold_test.history, k=k_cold, num_beams=beams, exclude=cold_test.history,
            batch_size=settings.batch_size,
        )
        anything = unconstrained_top_k(
            retriever, cold_test.history, k=k_cold, num_beams=beams, exclude=cold_test.history,
            batch_size=settings.batch_size,
        )
        cold = {
            "events": int(is_cold.sum()),
            "cold_items": int(cold_items.size),
            "k": k_cold,
            f"constrained_to_cold recall@{k_cold}": metric_row(within.items, cold_test.targets, (k_cold,))[f"recall@{k_cold}"],
            f"unconstrained recall@{k_cold}": metric_row(anything.items, cold_test.targets, (k_cold,))[f"recall@{k_cold}"],
        }
    return {
        "rows": rows,
        "cold_start": cold,
        "counts": {"test_users": int(len(test.targets)), "exact_scored_users": int(scored), "items": catalog.num_items,
                   "num_beams": beams},
        "seconds": timings,
    }


def format_table(result: dict[str, Any], title: str) -> str:
    """The result as a Markdown table (methods x metrics), with the cold-start line under it."""
    rows = result["rows"]
    metrics = [m for m in next(iter(rows.values())) if m.startswith(("recall@", "ndcg@"))]
    lines = [f"### {title}", "", "| method | " + " | ".join(metrics) + " | notes |", "|---" * (len(metrics) + 2) + "|"]
    for method, values in rows.items():
        notes = []
        if "invalid_id_rate" in values:
            notes.append(f"invalid IDs {values['invalid_id_rate']:.2%}")
        if "beam_equals_exact@10" in values:
            notes.append(f"beam top-10 = exact top-10 for {values['beam_equals_exact@10']:.2%} of users")
        if "beam_recall@10_same_users" in values:
            notes.append(f"on the same users constrained beam has Recall@10 {values['beam_recall@10_same_users']:.4f}")
        cells = " | ".join(f"{values[m]:.4f}" for m in metrics)
        lines.append(f"| {method} | {cells} | {'; '.join(notes)} |")
    cold = result.get("cold_start") or {}
    if cold:
        k = cold["k"]
        lines += ["", f"Cold start ({cold['events']} test events whose target is one of {cold['cold_items']} items "
                  f"held out of training): Recall@{k} constrained to the cold items "
                  f"{cold[f'constrained_to_cold recall@{k}']:.4f}, unconstrained {cold[f'unconstrained recall@{k}']:.4f}."]
    counts = result["counts"]
    lines += ["", f"{counts['test_users']} test users, {counts['items']} items, {counts['num_beams']} beams; "
              f"exact scoring over {counts['exact_scored_users']} users."]
    return "\n".join(lines)
