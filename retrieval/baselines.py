"""Non-neural baselines on the same split: most-popular, and last-item co-occurrence.

* most-popular: the items with the most training events, the same list for every query;
* co-occurrence: ``count[a, b]`` = how often ``b`` directly follows ``a`` in a training
  sequence; a query ranks items by ``count[last history item]``, ties and the rest of the
  list filled by popularity.

Both skip the query's own history items (as the constrained search does by default).
"""

from __future__ import annotations

import numpy as np

from retrieval.preprocess import Sequences


def popularity(train: Sequences, num_items: int) -> np.ndarray:
    """int64 [num_items]: training events per item."""
    return np.bincount(train.items, minlength=num_items)


def _top_excluding(
    scores: np.ndarray,  # float64 [n, items]
    history: np.ndarray,  # int [n, max_history], -1 pads
    k: int,
) -> np.ndarray:  # int32 [n, k]
    scores = scores.copy()
    q, h = np.nonzero(history >= 0)
    scores[q, history[q, h]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(scores, order, axis=1)), order, -1).astype(np.int32)


def most_popular(train: Sequences, num_items: int, history: np.ndarray, k: int) -> np.ndarray:
    """int32 [n, k] the most popular items not in each history (ties: lower row first)."""
    pop = popularity(train, num_items).astype(np.float64)
    return _top_excluding(np.broadcast_to(pop, (len(history), num_items)), np.asarray(history), k)


def successor_counts(train: Sequences, num_items: int) -> np.ndarray:
    """int64 [num_items, num_items]: ``[a, b]`` = times ``b`` directly follows ``a`` in training."""
    starts = np.zeros(len(train.items), bool)
    starts[train.offsets[:-1][train.offsets[:-1] < len(train.items)]] = True
    follows = ~starts[1:]  # event i + 1 continues the same user's sequence as event i
    pairs = train.items[:-1][follows].astype(np.int64) * num_items + train.items[1:][follows]
    return np.bincount(pairs, minlength=num_items * num_items).reshape(num_items, num_items)


def cooccurrence(
    train: Sequences, num_items: int, history: np.ndarray, history_lengths: np.ndarray, k: int
) -> np.ndarray:
    """int32 [n, k] items ranked by how often they followed the query's last item (popularity breaks ties)."""
    history = np.asarray(history)
    counts = successor_counts(train, num_items).astype(np.float64)
    pop = popularity(train, num_items).astype(np.float64)
    last = history[np.arange(len(history)), np.maximum(np.asarray(history_lengths) - 1, 0)]
    scores = np.where(last[:, None] >= 0, counts[np.maximum(last, 0)], 0.0)
    scores = scores + pop[None, :] / (pop.max() + 1.0)  # < 1: only breaks ties between counts
    return _top_excluding(scores, history, k)
