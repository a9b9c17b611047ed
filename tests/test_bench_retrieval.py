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
    argv = ["--catalogs", "3000", "--batches", "3", "--beams", "4,400,40000", "--repeats", "1", "--skip-nvidia"]
    # At 0.05 GB: 3 x 4 rows fit both caches; 3 x 400 rows fit only the shared-prefix cache (the
    # per-beam one is ~0.08 GB of KV cache x 3); 3 x 40,000 rows fit neither: that case is skipped.
    bench_retrieval.main(argv + ["--max-cache-gb", "0.05", "--json", str(path)])
    data = json.loads(path.read_text())
    assert {"environment", "settings", "catalogs", "rows", "goals", "nvidia", "wall_s"} <= set(data)
    assert data["catalogs"][0]["items"] == 3000 and data["catalogs"][0]["index_build_s"] > 0
    ran, shared_only, skipped = data["rows"]
    assert skipped["beams"] == 40000 and skipped["status"].startswith("skipped: est")
    assert (ran["items"], ran["batch"], ran["beams"], ran["status"]) == (3000, 3, 4, "ok")
    for method in harness.METHODS:
        assert {"best_s", "median_s", "qps", "compile_s", "valid_items", "returned"} <= set(ran[method])
        assert ran[method]["qps"] > 0
    for method in bench_retrieval.CONSTRAINED + ("trie, per-beam cache", "host trie"):
        assert ran[method]["returned"] == 3 * 4  # every beam is a complete item
        assert ran[method]["valid_items"] == 1.0
    assert ran["constrained + history filter"]["history_hits"] == 0
    assert ran["host_trie_matches"] is True and ran["host trie"]["host_side_ms"] > 0
    assert ran["shared_same_rows"] == 1.0 and ran["shared_common_max_diff"] < 1e-4
    assert ran["kv_gb"] < ran["kv_gb_per_beam"]
    assert {"trie/uncon", "filter/uncon", "trie/perbeam", "trie/host", "filter/host"} <= set(ran)
    assert shared_only["beams"] == 400 and shared_only["status"].startswith("ok (shared-prefix cache only")
    assert set(bench_retrieval.CONSTRAINED) <= set(shared_only) and not set(harness.PER_BEAM_METHODS) & set(shared_only)
    for method in bench_retrieval.CONSTRAINED:
        assert shared_only[method]["returned"] == 3 * 10 and shared_only[method]["valid_items"] == 1.0
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


def test_memory_estimates_and_the_nvidia_shape():
    tiny = retriever_config(1026, "tiny")
    # Per-beam: the largest grid case does not fit 6 GB; shared-prefix: it does.
    assert harness.estimate_gb(tiny, 1024, 50, harness.CAPACITY) < 6.0 < harness.estimate_gb(tiny, 1024, 200, harness.CAPACITY)
    assert harness.estimate_shared_gb(tiny, 1024, 200, harness.PROMPT_WIDTH) < 6.0
    nvidia = harness.nvidia_config()
    # One beam row of the 2,052-position cache is 8 layers x 2 x 8 heads x 2052 x 64 x 4 bytes.
    assert harness.kv_bytes_per_row(nvidia, 2052) == 8 * 2 * 8 * 2052 * 64 * 4
    # The shared-prefix cache runs the published shape in 12 GB (XLA: 8.6 GB), the per-beam one
    # (215 GB of KV cache) only batch 1 x 50 beams.
    assert harness.nvidia_shapes(nvidia, 16, 200, 2048, max_gb=12.0) == (16, 200)
    assert harness.nvidia_shapes(nvidia, 16, 200, 2048, max_gb=6.0) == (8, 200)
    assert harness.nvidia_shapes(nvidia, 16, 200, 2048, max_gb=12.0, shared=False) == (1, 50)
    assert harness.nvidia_shapes(nvidia, 16, 200, 2048, max_gb=1e4, shared=False) == (16, 200)
