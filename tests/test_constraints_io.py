"""Save/load round trips, rejection of bad files, the memory report and the build_index CLI."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import zipfile

import numpy as np
import pytest

from constraints import (
    FORMAT_VERSION,
    build_fixed_length_index,
    build_variable_length_index,
    index_nbytes,
    load_index,
    memory_report,
    save_index,
)

ARRAYS = ("indptr", "tokens", "dense_bits", "dense_rank")
SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "build_index.py"


def _assert_same_index(a, b) -> None:
    for name in ARRAYS:
        got, want = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    strip = dict.fromkeys(ARRAYS)
    assert a.replace(**strip) == b.replace(**strip)


@pytest.fixture(scope="module")
def indexes():
    rng = np.random.default_rng(3)
    fixed = build_fixed_length_index(rng.integers(0, 300, size=(200, 4)), 300, dense_budget_bytes=1 << 20)
    variable = build_variable_length_index([[3, 1, 2], [2], [3, 2], [0, 0, 0, 2]], 4, eos_id=2)
    return {"fixed": fixed, "variable": variable}


@pytest.mark.parametrize("kind", ["fixed", "variable"])
def test_round_trip(tmp_path, indexes, kind):
    path = tmp_path / "index.bin"  # written exactly there, no suffix added
    save_index(path, indexes[kind])
    assert path.exists() and not (tmp_path / "index.bin.npz").exists()
    _assert_same_index(load_index(path), indexes[kind])
    _assert_same_index(load_index(str(path)), indexes[kind])


def test_truncated_file_is_rejected(tmp_path, indexes):
    path = tmp_path / "index.npz"
    save_index(path, indexes["fixed"])
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 10):
        path.write_bytes(data[:keep])
        with pytest.raises(ValueError, match=str(path)):
            load_index(path)


def test_foreign_files_are_rejected(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an index\n")
    other_npz = tmp_path / "other.npz"
    np.savez(other_npz, weights=np.zeros(3))
    foreign_meta = tmp_path / "foreign.npz"
    np.savez(foreign_meta, meta=np.array(json.dumps({"format": "something else"})), **{n: np.zeros(1) for n in ARRAYS})
    bare_npy = tmp_path / "items.npy"
    np.save(bare_npy, np.arange(3))
    for path in (text, other_npz, foreign_meta, bare_npy):
        with pytest.raises(ValueError, match=str(path)):
            load_index(path)
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing.npz")


def _rewrite(path: pathlib.Path, edit) -> None:
    """Loads the raw arrays of an index file, applies ``edit(meta, arrays)`` and writes them back."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {name: data[name] for name in ARRAYS}
    edit(meta, arrays)
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def test_wrong_version_and_tampered_files_are_rejected(tmp_path, indexes):
    path = tmp_path / "index.npz"
    cases = [
        (lambda m, a: m.update(format_version=FORMAT_VERSION + 1), "version"),
        (lambda m, a: m.pop("level_sizes"), "lacks"),
        (lambda m, a: a.update(tokens=a["tokens"][:-1]), "array tokens"),
        (lambda m, a: a.update(indptr=a["indptr"].astype(np.int64)), "array indptr"),
        (lambda m, a: a["indptr"].__setitem__(1, 10**6), "indptr"),
        (lambda m, a: a["tokens"].__setitem__(0, 299 + 1), "vocabulary"),
        (lambda m, a: m.update(level_sizes="oops"), "metadata"),
        # Metadata the arrays determine, edited so it lies (it would silently change results):
        (lambda m, a: m.update(max_branching=[1] * len(m["max_branching"])), "max_branching"),
        (lambda m, a: m.update(num_items=m["num_items"] + 1), "num_items"),
        (lambda m, a: m.update(depth=m["depth"] + 1), "depth"),
        (lambda m, a: m.update(eos_id=0), "fixed_length"),
        (lambda m, a: a["tokens"].__setitem__(slice(0, 2), a["tokens"][1::-1].copy()), "increasing"),
        (lambda m, a: a["dense_bits"].__setitem__((0, 0), a["dense_bits"][0, 0] ^ 1), "dense tables"),
    ]
    for edit, message in cases:
        save_index(path, indexes["fixed"])
        _rewrite(path, edit)
        with pytest.raises(ValueError, match=message) as err:
            load_index(path)
        assert str(path) in str(err.value)


def test_memory_report(indexes):
    index = indexes["fixed"]
    report = memory_report(index)
    expected = sum(np.asarray(getattr(index, name)).nbytes for name in ARRAYS)
    assert index_nbytes(index) == report.total_bytes == expected
    assert report.bytes_by_array["tokens"] == index.num_edges * 2  # uint16 tokens for a 300-token vocabulary
    assert report.mb_per_million_items == pytest.approx(expected / 1e6 / (index.num_items / 1e6))
    assert f"{report.num_items:,}" in report.format()


def _load_script():
    spec = importlib.util.spec_from_file_location("build_index_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_index_script(tmp_path, capsys):
    script = _load_script()
    items = np.random.default_rng(5).integers(0, 50, size=(300, 3)).astype(np.int32)
    np.save(tmp_path / "items.npy", items)
    stats_path = tmp_path / "stats.json"
    stats = script.main(
        [str(tmp_path / "items.npy"), "--vocab-size", "50", "--out", str(tmp_path / "a.npz"), "--json", str(stats_path), "--no-progress"]
    )
    _assert_same_index(load_index(tmp_path / "a.npz"), build_fixed_length_index(items, 50))
    assert json.loads(stats_path.read_text())["items"] == stats["items"] == len({tuple(r) for r in items.tolist()})
    assert "mb_per_1m_items" in capsys.readouterr().out

    (tmp_path / "seqs.txt").write_text("4 5 1\n\n1\n4 1\n4 5 1\n")
    script.main([str(tmp_path / "seqs.txt"), "--vocab-size", "6", "--eos-id", "1", "--out", str(tmp_path / "b.npz"), "--no-progress"])
    _assert_same_index(load_index(tmp_path / "b.npz"), build_variable_length_index([[4, 5, 1], [1], [4, 1]], 6, 1))

    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "seqs.txt"), "--vocab-size", "6", "--out", str(tmp_path / "c.npz")])
    (tmp_path / "bad.txt").write_text("4 5 1\n4 9 1\n")
    with pytest.raises(SystemExit, match="row 1 has token 9"):
        script.main([str(tmp_path / "bad.txt"), "--vocab-size", "6", "--eos-id", "1", "--out", str(tmp_path / "d.npz")])
    assert zipfile.is_zipfile(tmp_path / "b.npz")
