"""scripts/bench_retrieval.py: one toy setting end to end (JSON keys, valid constrained outputs,
the host trie's top-K equal to the sparse path's, a case skipped for memory), and its goals."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import _retrieval_harness as harness  # noqa: E402
import bench_retrieval  # noqa: E402

from retrieval.training import retriever_config  # noqa: E402


def test_main_at_toy_size_writes_every_method_and_checks_outputs(tmp_path):
    path = tmp_path / "retrieval.json"
    argv = ["--catalogs", "3000", "--batches", "3", "--beams", "4,400", "--repeats", "1", "--skip-nvidia"]
    # 3 x 4 rows fit 0.05 GB; 3 x 400 rows (~0.08 GB of KV cache x 3) do not: that case is skipped.
    bench_retrieval.main(argv + ["--max-cache-gb", "0.05", "--json", str(path)])
    data = json.loads(path.read_text())
    assert {"environment", "settings", "catalogs", "rows", "goals", "nvidia", "wall_s"} <= set(data)
    assert data["catalogs"][0]["items"] == 3000 and data["catalogs"][0]["index_build_s"] > 0
    ran, skipped = data["rows"]
    assert skipped["beams"] == 400 and skipped["status"].startswith("skipped: est")
    assert (ran["items"], ran["batch"], ran["beams"], ran["status"]) == (3000, 3, 4, "ok")
    for method in harness.METHODS:
        assert {"best_s", "median_s", "qps", "compile_s", "valid_items", "returned"} <= set(ran[method])
        assert ran[method]["qps"] > 0
    for method in bench_retrieval.CONSTRAINED + ("host trie",):
        assert ran[method]["returned"] == 3 * 4  # every beam is a complete item
        assert ran[method]["valid_items"] == 1.0
    assert ran["constrained + history filter"]["history_hits"] == 0
    assert ran["host_trie_matches"] is True and ran["host trie"]["host_side_ms"] > 0
    assert {"trie/uncon", "filter/uncon", "trie/host", "filter/host"} <= set(ran)
    assert set(data["goals"]) == {"trie_vs_uncon", "trie_vs_host", "filter_vs_uncon", "filter_vs_host"}


def test_goals_report_the_worst_setting_and_every_failing_one():
    def row(batch, trie_uncon, filter_uncon, host=None):
        r = {"items": 10, "batch": batch, "beams": 10, "trie/uncon": trie_uncon, "filter/uncon": filter_uncon}
        return r if host is None else r | {"trie/host": host, "filter/host": host}

    goals = bench_retrieval.goals_of([row(64, 1.2, 0.9, host=25.0), row(256, 0.97, 1.1), {"items": 10, "status": "skipped"}])
    assert goals["trie_vs_uncon"]["met"] and goals["trie_vs_uncon"]["worst"] == pytest.approx(0.97)
    assert goals["trie_vs_uncon"]["worst_at"]["batch"] == 256
    assert not goals["filter_vs_uncon"]["met"] and goals["filter_vs_uncon"]["failing"] == [(10, 64, 10, 0.9)]
    assert goals["trie_vs_host"]["met"] and goals["trie_vs_host"]["settings"] == 1


def test_memory_estimate_skips_the_largest_grid_case_and_scales_the_nvidia_shape():
    tiny = retriever_config(1026, "tiny")
    assert harness.estimate_gb(tiny, 1024, 50, harness.CAPACITY) < 6.0 < harness.estimate_gb(tiny, 1024, 200, harness.CAPACITY)
    nvidia = harness.nvidia_config()
    # One beam row of the 2,052-position cache is 8 layers x 2 x 8 heads x 2052 x 64 x 4 bytes.
    assert harness.kv_bytes_per_row(nvidia, 2052) == 8 * 2 * 8 * 2052 * 64 * 4
    assert harness.nvidia_shapes(nvidia, 16, 200, 2048, max_gb=6.0) == (1, 10)
    assert harness.nvidia_shapes(nvidia, 16, 200, 2048, max_gb=1e4) == (16, 200)
