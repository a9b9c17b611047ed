"""Recall@K / NDCG@K against hand-computed values, and the baselines on a hand-made split."""

import numpy as np
import pytest

from retrieval import baselines
from retrieval.metrics import hit_ranks, metric_row, ndcg_at, recall_at
from retrieval.preprocess import Sequences


def test_docstring_example():
    ranked, targets = np.array([[3, 7, 1], [2, 5, 9]]), np.array([7, 4])
    assert recall_at(ranked, targets, 2) == 0.5
    assert ndcg_at(ranked, targets, 2) == pytest.approx((1 / np.log2(3)) / 2)


def test_hand_computed_values():
    ranked = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [9, 8, 7, 6, -1], [1, 2, 3, 4, 5]])
    targets = np.array([0, 9, -1, 5])  # ranks 0, 4, missing, 4
    assert hit_ranks(ranked, targets).tolist() == [0, 4, -1, 4]
    row = metric_row(ranked, targets, (1, 5))
    assert row["recall@1"] == 0.25 and row["recall@5"] == 0.75
    assert row["ndcg@5"] == pytest.approx((1 + 2 / np.log2(6)) / 4)
    with pytest.raises(ValueError, match="at least 6"):
        recall_at(ranked, targets, 6)


def test_baselines_on_a_hand_made_split():
    # users: [0, 1, 2], [1, 2], [3, 1, 2]   -> popularity [1, 3, 3, 1]; 2 follows 1 three times
    train = Sequences(user_ids=np.array(["a", "b", "c"]), offsets=np.array([0, 3, 5, 8]),
                      items=np.array([0, 1, 2, 1, 2, 3, 1, 2], np.int32))
    assert baselines.popularity(train, 4).tolist() == [1, 3, 3, 1]
    counts = baselines.successor_counts(train, 4)
    assert counts[1, 2] == 3 and counts[2, 1] == 0 and counts[0, 1] == 1 and counts[3, 1] == 1
    history = np.array([[1, -1], [3, 0]])
    assert baselines.most_popular(train, 4, history, 2).tolist() == [[2, 0], [1, 2]]
    co = baselines.cooccurrence(train, 4, history, np.array([1, 2]), 3)
    assert co[0].tolist() == [2, 0, 3]  # 2 follows 1; then popularity (0 and 3 tie: lower row)
    assert co[1].tolist() == [1, 2, -1]  # last item 0 -> 1; history {3, 0} excluded
