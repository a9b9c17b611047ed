"""The batch retrieval job: validity, exact scores, devices, processes, kill/resume, refusals, bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval.end_to_end import write_queries
from retrieval.exact import exact_log_probs
from retrieval.job import JobSettings, local_mesh, read_results, run_job
from retrieval.tables import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "retrieve.py")
SETTINGS = JobSettings(k=5, num_beams=10, batch_size=8, shard_rows=16)


@pytest.fixture(scope="module")
def queries(small_run):
    """The test split as 4 Parquet query shards."""
    folder = os.path.join(small_run.root, "queries")
    if not os.path.isdir(folder):
        write_queries(small_run.prepared.split.test, small_run.prepared.catalog, folder)
    return folder


@pytest.fixture(scope="module")
def reference(small_run, queries):
    """One uninterrupted single-process run over all local devices."""
    out = os.path.join(small_run.root, "reference")
    summary = run_job(small_run.run_dir, queries, out, SETTINGS, progress=False, retriever=small_run.retriever)
    return out, summary


def _rows(out_dir):
    table = read_results(out_dir)
    return sorted(zip(table.column("user_id").to_pylist(), table.column("rank").to_pylist(),
                      table.column("item_id").to_pylist(), table.column("score").to_pylist()))


def test_outputs_allowed_outside_history_with_exact_scores(small_run, reference):
    out, summary = reference
    test = small_run.prepared.split.test
    catalog = small_run.retriever.catalog
    assert summary.invalid_outputs == 0 and summary.queries == len(test.targets)
    table = read_results(out)
    users = np.asarray(table.column("user_id").to_pylist())
    items = catalog.rows_of(np.asarray(table.column("item_id").to_pylist()))
    assert (items >= 0).all()
    row_of_user = {u: i for i, u in enumerate(test.user_ids.tolist())}
    query = np.array([row_of_user[u] for u in users])
    assert len(set(zip(users.tolist(), table.column("rank").to_pylist()))) == len(users)  # each (query, rank) once
    assert len(users) == SETTINGS.k * len(test.targets)
    for q, item in zip(query, items):
        assert item not in test.history[q]
    scores = exact_log_probs(small_run.retriever, test.history)
    np.testing.assert_allclose(np.asarray(table.column("score").to_pylist()), scores[query, items], rtol=1e-4, atol=1e-4)
    codes = np.asarray(table.column("semantic_id").to_pylist())
    assert (codes == catalog.codes[items]).all()


def test_eight_devices_equal_one(small_run, queries, reference):
    import jax
    from jax.sharding import Mesh

    assert jax.local_device_count() == 8 and local_mesh().devices.size == 8
    one = Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("data", "model"))
    out = os.path.join(small_run.root, "one_device")
    summary = run_job(small_run.run_dir, queries, out, SETTINGS, progress=False, retriever=small_run.retriever, mesh=one)
    assert summary.devices == 1 and reference[1].devices == 8
    got, want = _rows(out), _rows(reference[0])
    assert [r[:3] for r in got] == [r[:3] for r in want]
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=1e-5, atol=1e-5)


def _job_command(small_run, queries, out, *extra):
    return [sys.executable, SCRIPT, "--run", small_run.run_dir, "--queries", queries, "--out", out,
            "--k", str(SETTINGS.k), "--beams", str(SETTINGS.num_beams), "--batch-size", str(SETTINGS.batch_size),
            "--shard-rows", str(SETTINGS.shard_rows), "--no-progress", *extra]


def test_kill_and_resume_equals_uninterrupted(small_run, queries, reference):
    out = os.path.join(small_run.root, "killed")
    planned = len([n for n in os.listdir(reference[0]) if n.startswith("part-")])
    process = subprocess.Popen(_job_command(small_run, queries, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.isdir(out) and any(n.startswith("part-") and "tmp" not in n for n in os.listdir(out)):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [n for n in os.listdir(out) if n.startswith("part-") and "tmp" not in n]
    assert 1 <= len(done) < planned, f"killed after {len(done)} of {planned} shards: not mid-way"
    finished = subprocess.run(_job_command(small_run, queries, out), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f'"skipped_shards": {len(done)}' in finished.stdout
    assert _rows(out) == _rows(reference[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_exactly_the_single_process_output(small_run, queries, reference):
    out = os.path.join(small_run.root, "two_processes")
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen(
            _job_command(small_run, queries, out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                         "--process-id", str(i)),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in processes]
    for p, (stdout, stderr) in zip(processes, results):
        assert p.returncode == 0, stderr[-2000:]
    assert '"processes": 2' in results[0][0] and '"process_index": 1' in results[1][0]
    got, want = _rows(out), _rows(reference[0])
    assert len(got) == len(set((r[0], r[1]) for r in got))  # no duplicates
    assert [r[:3] for r in got] == [r[:3] for r in want]  # none missing, none extra
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=1e-5, atol=1e-5)


def test_restart_with_other_settings_or_inputs_is_refused(small_run, queries, reference, tmp_path):
    out, _ = reference
    with pytest.raises(ValueError, match="other settings"):
        run_job(small_run.run_dir, queries, out, JobSettings(k=4, num_beams=10, batch_size=8, shard_rows=16),
                progress=False, retriever=small_run.retriever)
    # the same settings resume (nothing to do)
    again = run_job(small_run.run_dir, queries, out, SETTINGS, progress=False, retriever=small_run.retriever)
    assert again.queries == 0 and again.skipped_shards > 0
    # changed inputs: one query file edited
    changed = tmp_path / "queries"
    changed.mkdir()
    for name in sorted(os.listdir(queries)):
        (changed / name).write_bytes(open(os.path.join(queries, name), "rb").read())
    write_queries(small_run.prepared.split.test, small_run.prepared.catalog, str(changed), shards=3)
    with pytest.raises(ValueError, match="other inputs"):
        run_job(small_run.run_dir, str(changed), out, SETTINGS, progress=False, retriever=small_run.retriever)
    # --overwrite replaces the old output
    fresh = tmp_path / "out"
    run_job(small_run.run_dir, queries, str(fresh), SETTINGS, progress=False, retriever=small_run.retriever)
    other = JobSettings(k=3, num_beams=10, batch_size=8, shard_rows=1000)
    run_job(small_run.run_dir, queries, str(fresh), other, overwrite=True, progress=False, retriever=small_run.retriever)
    assert set(read_results(str(fresh)).column("rank").to_pylist()) == {1, 2, 3}
    assert sorted(n for n in os.listdir(fresh) if n.startswith("part-")) == [f"part-0000{i}-00000.parquet" for i in range(4)]


def _csv(path, rows):
    path.write_text("user_id,history,region\n" + "".join(f"{u},{h},{r}\n" for u, h, r in rows))
    return str(path)


def test_bad_inputs_name_file_and_line(small_run, tmp_path):
    catalog = small_run.retriever.catalog
    ids = catalog.item_ids
    good = f"{ids[0]} {ids[1]}"
    job = dict(progress=False, retriever=small_run.retriever)
    bad_item = _csv(tmp_path / "unknown.csv", [("u1", good, "c1"), ("u2", f"{ids[2]} nope", "c1")])
    with pytest.raises(DataError, match=r"unknown\.csv, line 3, column 'history'.*'nope' is not in the catalog"):
        run_job(small_run.run_dir, bad_item, str(tmp_path / "o1"), SETTINGS, **job)
    dropped = run_job(small_run.run_dir, bad_item, str(tmp_path / "o2"),
                      JobSettings(k=5, num_beams=10, batch_size=8, unknown_items="drop"), **job)
    assert dropped.queries == 2 and dropped.invalid_outputs == 0
    malformed = tmp_path / "malformed.csv"
    malformed.write_text(f"user_id,history\nu1,{good}\nu2,{good},extra\n")
    with pytest.raises(DataError, match=r"malformed\.csv, line 3"):
        run_job(small_run.run_dir, str(malformed), str(tmp_path / "o3"), SETTINGS, **job)
    with pytest.raises(ValueError, match="allowed item set is empty"):
        run_job(small_run.run_dir, bad_item, str(tmp_path / "o4"),
                JobSettings(k=5, num_beams=10, allowed_where=("category=nothing",)), **job)
    allowed_file = tmp_path / "allowed.txt"
    allowed_file.write_text("# three items\n" + "\n".join(ids[:3]) + "\n")
    with pytest.raises(ValueError, match="k=5 is larger than the allowed item set"):
        run_job(small_run.run_dir, bad_item, str(tmp_path / "o5"),
                JobSettings(k=5, num_beams=10, allowed_ids_file=str(allowed_file)), **job)
    allowed_file.write_text(f"{ids[0]}\nghost\n")
    with pytest.raises(DataError, match=r"allowed\.txt, line 2.*'ghost'"):
        run_job(small_run.run_dir, bad_item, str(tmp_path / "o6"),
                JobSettings(k=1, num_beams=10, allowed_ids_file=str(allowed_file)), **job)
    segments = JobSettings(k=2, num_beams=10, segment_column="region", segment_attribute="category")
    bad_segment = _csv(tmp_path / "segment.csv", [("u1", good, "c1"), ("u2", good, "atlantis")])
    with pytest.raises(DataError, match=r"segment\.csv, line 3, column 'region'.*'atlantis'"):
        run_job(small_run.run_dir, bad_segment, str(tmp_path / "o7"), segments, **job)


def test_filters_segments_and_jsonl(small_run, tmp_path):
    catalog = small_run.retriever.catalog
    ids, category = catalog.item_ids, catalog.attributes["category"]
    release = catalog.attributes["release_time"]
    cutoff = float(np.median(release))
    rows = [(f"u{i}", f"{ids[i]} {ids[i + 1]}", category[i]) for i in range(10)]
    queries = _csv(tmp_path / "q.csv", rows)
    settings = JobSettings(k=3, num_beams=10, batch_size=8, output_format="jsonl", segment_column="region",
                           segment_attribute="category", allowed_where=(f"release_time>={cutoff}",))
    summary = run_job(small_run.run_dir, queries, str(tmp_path / "out"), settings, progress=False,
                      retriever=small_run.retriever)
    assert summary.invalid_outputs == 0
    assert os.listdir(tmp_path / "out").count("part-00000-00000.jsonl") == 1
    table = read_results(str(tmp_path / "out"))
    got = catalog.rows_of(np.asarray(table.column("item_id").to_pylist()))
    users = table.column("user_id").to_pylist()
    for user, item in zip(users, got):
        i = int(user[1:])
        assert category[item] == category[i] and release[item] >= cutoff and item not in (i, i + 1)


def test_cli_parses_before_acting(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import retrieve

    with pytest.raises(SystemExit) as exit_info:
        retrieve.main(["--help"])
    assert exit_info.value.code == 0 and "--allowed-where" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(ROOT, "runs", "retrieval", "never"))
    with pytest.raises(SystemExit) as exit_info:
        retrieve.main(["--run", str(tmp_path)])
    assert exit_info.value.code == 2
    parser = retrieve.build_parser()
    assert all(action.help for action in parser._actions)


def test_non_finite_parameters_are_reported_with_the_lines(small_run, tmp_path):
    import dataclasses

    import jax

    catalog = small_run.retriever.catalog
    ids = catalog.item_ids
    queries = _csv(tmp_path / "q.csv", [("u1", f"{ids[0]}", "c1"), ("u2", f"{ids[1]} {ids[2]}", "c1")])
    broken = dataclasses.replace(small_run.retriever,
                                 params=jax.tree.map(lambda p: p * np.float32(np.nan), small_run.retriever.params))
    with pytest.raises(FloatingPointError, match=r"q\.csv: .*non-finite.* at lines \[2, 3\]"):
        run_job(small_run.run_dir, queries, str(tmp_path / "out"), SETTINGS, progress=False, retriever=broken)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith("part-")]
