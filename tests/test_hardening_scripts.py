"""The scripts parse their arguments before doing anything, every option has help text, and
bad input files or values are refused with a message naming them (issue 11)."""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

import numpy as np
import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the bench scripts import their harness modules by name

CHECKED = ("build_index", "make_colab", "train_lm", "bench_constraints", "bench_decode", "bench_speculative",
           "demo_decode")


def _load(name: str):
    return importlib.import_module(name)


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


@pytest.mark.parametrize("name", CHECKED)
def test_parses_first_and_every_option_has_help(name, monkeypatch):
    """``main`` reaches ``parse_args`` first (nothing is read or written before it: the patched
    parser stops it there), and every option of the parser has help text."""
    module = _load(name)

    def stop(parser, *args, **kwargs):
        raise _Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed) as parsed:
        module.main([])
    missing = [action.option_strings or action.dest for action in parsed.value.parser._actions if not action.help]
    assert not missing, f"scripts/{name}.py: options without help text: {missing}"


def test_make_colab_help_does_not_rewrite_the_notebook(tmp_path, capsys):
    notebook = SCRIPTS.parent / "colab" / "quickstart.ipynb"
    before = (notebook.read_bytes(), notebook.stat().st_mtime_ns)
    make_colab = _load("make_colab")
    with pytest.raises(SystemExit) as exit_info:
        make_colab.main(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
    assert (notebook.read_bytes(), notebook.stat().st_mtime_ns) == before
    make_colab.main(["--out", str(tmp_path / "nb.ipynb")])
    assert (tmp_path / "nb.ipynb").read_bytes() == notebook.read_bytes()


def test_build_index_names_a_binary_or_corrupt_input(tmp_path):
    build_index = _load("build_index")
    binary = tmp_path / "items.txt"
    binary.write_bytes(b"1 2 3\n\x89PNG\x00\xff\xfe\n")
    with pytest.raises(SystemExit, match=rf"{binary}:2: not a text file of token ids"):
        build_index.main([str(binary), "--vocab-size", "8", "--eos-id", "3", "--out", str(tmp_path / "a.npz")])
    corrupt = tmp_path / "items.npy"
    np.save(corrupt, np.arange(12).reshape(4, 3))
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    with pytest.raises(SystemExit, match=rf"{corrupt}: cannot read the items"):
        build_index.main([str(corrupt), "--vocab-size", "16", "--out", str(tmp_path / "b.npz")])
    with pytest.raises(SystemExit):  # argparse's usage error (exit status 2), before reading anything
        build_index.main([str(corrupt), "--vocab-size", "0", "--out", str(tmp_path / "b.npz")])
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()


def test_bad_values_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    train_lm = _load("train_lm")
    monkeypatch.setattr(train_lm, "load_corpus", lambda *a, **k: pytest.fail("read the corpus before checking"))
    for argv, message in ((["--lr", "nan"], "learning_rate > 0"), (["--preset", "huge"], "unknown preset 'huge'"),
                          (["--steps", "0"], "steps must be >= 1")):
        with pytest.raises(SystemExit) as exit_info:
            train_lm.main(["--out", str(tmp_path / "run"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    demo = _load("demo_decode")
    monkeypatch.setattr(demo, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking"))
    for argv, message in ((["--temperature", "inf"], "--temperature must be finite"), (["--top-p", "1.5"], "--top-p"),
                          (["--params", str(tmp_path / "nowhere")], "no such folder")):
        with pytest.raises(SystemExit):
            demo.main(argv)
        assert message in capsys.readouterr().err


def test_demo_reports_rows_with_nonfinite_logits():
    demo = _load("demo_decode")
    demo._refuse_nonfinite("greedy", np.array([False, False]))
    with pytest.raises(SystemExit, match=r"greedy: rows \[1\] read non-finite logits"):
        demo._refuse_nonfinite("greedy", np.array([False, True]))
