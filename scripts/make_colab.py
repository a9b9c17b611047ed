"""Writes the Colab notebooks in colab/ from their sources, so a notebook never drifts from them.

Every notebook ``colab/<name>.ipynb`` (quickstart, speculative_decoding, generative_retrieval)
is written from ``scripts/notebooks/<name>.py``, a Python file in the "percent" format (a
``# %%`` line starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are ``#``
comments; text before the first marker is the source's own header and is left out). Edit the
source, then run this script; ``tests/test_notebooks.py`` checks that the committed notebooks
match and executes them. A source also runs as a plain script (``python
scripts/notebooks/<name>.py`` from the repository root), which is handy when debugging a cell.

Notebooks are written without outputs.

Usage: python scripts/make_colab.py [--notebook NAME] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ROOT / "scripts" / "notebooks"
NAMES = ("quickstart", "speculative_decoding", "generative_retrieval")  # scripts/notebooks/<name>.py

METADATA = {
    "accelerator": "TPU",
    "kernelspec": {"display_name": "Python 3", "name": "python3"},
    "language_info": {"name": "python"},
}


def cell(kind: str, source: str, cell_id: str | None = None) -> dict:
    body = {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True)}
    if cell_id is not None:
        body = {"cell_type": kind, "id": cell_id, "metadata": {}, "source": body["source"]}
    if kind == "code":
        body.update(execution_count=None, outputs=[])
    return body


def _markdown(lines: list[str]) -> str:
    out = []
    for number, line in lines:
        if line.strip() and not line.startswith("#"):
            raise ValueError(f"line {number}: a markdown cell holds only '#' comment lines, got {line!r}")
        out.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(out)


def parse_percent(text: str) -> list[tuple[str, str]]:
    """``(kind, source)`` cells of a percent-format file ("markdown" or "code"), blank lines at
    either end of a cell dropped; text before the first ``# %%`` line is skipped."""
    cells: list[tuple[str, list]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        marker = re.fullmatch(r"# %%( \[markdown\])?\s*", line)
        if marker:
            cells.append(("markdown" if marker.group(1) else "code", []))
        elif cells:
            cells[-1][1].append((number, line))
    out = []
    for kind, lines in cells:
        while lines and not lines[0][1].strip():
            lines.pop(0)
        while lines and not lines[-1][1].strip():
            lines.pop()
        if not lines:
            continue
        out.append((kind, _markdown(lines) if kind == "markdown" else "\n".join(line for _, line in lines)))
    return out


def notebook(name: str) -> dict:
    """The notebook of ``scripts/notebooks/<name>.py`` (cell ids are stable: ``<name>-NN``)."""
    cells = parse_percent((SOURCES / f"{name}.py").read_text())
    return {
        "cells": [cell(kind, source, f"{name.replace('_', '-')}-{i:02d}") for i, (kind, source) in enumerate(cells)],
        "metadata": METADATA,
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def build(name: str) -> dict:
    """The notebook ``name`` (one of NAMES) as JSON-ready dict."""
    if name not in NAMES:
        raise ValueError(f"unknown notebook {name!r}; known: {NAMES}")
    return notebook(name)


def render(name: str) -> str:
    """The file text of notebook ``name``."""
    return json.dumps(build(name), indent=1) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--notebook",
        choices=NAMES,
        default=None,
        help="write only this notebook (default: all of them, or the quickstart when --out is given)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="path of the one notebook written (default: colab/NAME.ipynb)",
    )
    args = parser.parse_args(argv)
    if args.out is not None:
        names = (args.notebook or "quickstart",)
    else:
        names = (args.notebook,) if args.notebook else NAMES
    for name in names:
        out = args.out or ROOT / "colab" / f"{name}.ipynb"
        out.write_text(render(name))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
