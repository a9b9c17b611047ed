"""Ranking metrics with one held-out target per query (leave-one-out evaluation).

With ``ranked[q]`` the top items of query ``q`` (best first, -1 where fewer were found) and
``targets[q]`` its held-out item::

    Recall@K = mean_q [target in ranked[q, :K]]
    NDCG@K   = mean_q 1 / log2(rank_q + 2)   if the target sits at 0-based rank_q < K, else 0

(one relevant item, so the ideal DCG is 1). Example: ranked ``[[3, 7, 1], [2, 5, 9]]``, targets
``[7, 4]``: Recall@2 = 0.5, NDCG@2 = (1 / log2(3)) / 2 = 0.3155.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (5, 10, 20)


def hit_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int64 [n]: the 0-based rank of each target in its row of ``ranked`` (int [n, K]), -1 if absent."""
    ranked, targets = np.asarray(ranked), np.asarray(targets)
    if ranked.ndim != 2 or targets.shape != (ranked.shape[0],):
        raise ValueError(f"ranked must be [n, K] and targets [n], got {ranked.shape} and {targets.shape}")
    hits = (ranked == targets[:, None]) & (targets[:, None] >= 0)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def recall_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Recall@k: the fraction of queries whose target is among the first ``k`` of ``ranked``."""
    if k > np.shape(ranked)[1]:
        raise ValueError(f"Recall@{k} needs at least {k} ranked items per query, got {np.shape(ranked)[1]}")
    ranks = hit_ranks(ranked, targets)
    return float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else 0.0


def ndcg_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item per query."""
    if k > np.shape(ranked)[1]:
        raise ValueError(f"NDCG@{k} needs at least {k} ranked items per query, got {np.shape(ranked)[1]}")
    ranks = hit_ranks(ranked, targets)
    gains = np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return float(gains.mean()) if len(gains) else 0.0


def metric_row(ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """``{"recall@5": ..., "ndcg@5": ..., ...}`` for each k in ``ks``."""
    row = {}
    for k in ks:
        row[f"recall@{k}"] = recall_at(ranked, targets, k)
        row[f"ndcg@{k}"] = ndcg_at(ranked, targets, k)
    return row
