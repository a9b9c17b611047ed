"""scripts/bench_speculative.py: the goals it reports are computed from the right rows."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import bench_speculative  # noqa: E402


def _row(batch, method, k, tok_per_s, speedup=1.0):
    return {"batch": batch, "method": method, "k": k, "tok_per_s": tok_per_s, "speedup": speedup, "identical": True}


def test_goals_pick_the_best_batch1_case_and_compare_batch8_at_the_same_and_at_the_best_k():
    rows = [
        _row(1, "greedy", 0, 100.0),
        _row(1, "spec-lookup", 2, 180.0, 1.8),
        _row(1, "spec-lookup", 4, 210.0, 2.1),
        _row(1, "spec-model", 2, 150.0, 1.5),
        _row(1, "spec-model", 4, 140.0, 1.4),
        _row(8, "greedy", 0, 400.0),
        _row(8, "spec-lookup", 2, 700.0),
        _row(8, "spec-lookup", 4, 630.0),
        _row(8, "spec-model", 2, 300.0),
        _row(8, "spec-model", 4, 420.0),
    ]
    goals = bench_speculative.goals_of(rows, k=4)
    assert goals["batch1_best_speedup"] == {"method": "spec-lookup", "k": 4, "value": 2.1, "goal": 2.0, "identical": True}
    assert goals["greedy_batch8_over_batch1"]["value"] == pytest.approx(4.0)
    assert goals["spec-lookup_batch8_over_batch1"]["value"] == pytest.approx(630 / 210)
    assert goals["spec-model_batch8_over_batch1"]["value"] == pytest.approx(420 / 140)
    best = goals["spec-lookup_batch8_over_batch1_best_k"]
    assert (best["k_batch1"], best["k_batch8"], best["value"]) == (4, 2, pytest.approx(700 / 210))
    best = goals["spec-model_batch8_over_batch1_best_k"]
    assert (best["k_batch1"], best["k_batch8"], best["value"]) == (2, 4, pytest.approx(420 / 150))


def test_goals_skip_what_was_not_measured():
    rows = [_row(1, "greedy", 0, 100.0), _row(1, "spec-lookup", 4, 150.0, 1.5)]
    goals = bench_speculative.goals_of(rows, k=4)
    assert set(goals) == {"batch1_best_speedup"}
    # No sweep (one k everywhere): the best-k comparison would repeat the same-k one, so it is left out.
    rows += [_row(8, "greedy", 0, 300.0), _row(8, "spec-lookup", 4, 450.0)]
    goals = bench_speculative.goals_of(rows, k=4)
    assert set(goals) == {"batch1_best_speedup", "greedy_batch8_over_batch1", "spec-lookup_batch8_over_batch1"}
