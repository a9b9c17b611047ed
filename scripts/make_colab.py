"""Writes colab/quickstart.ipynb from the README's API tour (so the notebook never drifts).

Usage: python scripts/make_colab.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]

SETUP = """# Runtime: TPU (Runtime > Change runtime type). On a CPU or GPU runtime, skip the jax[tpu] line.
# Put this repository at /content/jax-decoding first (git clone it there, or upload it).
!pip install -q -U "jax[tpu]"
!pip install -q -e /content/jax-decoding
import sys; sys.path.insert(0, "/content/jax-decoding")
import jax; print(jax.devices())"""

INTRO = """# jax-decoding quickstart

Greedy and sampled decoding, trie-constrained beam search (STATIC-style CSR index) and speculative
decoding of a Flax Llama-family model, each in one jit-compiled loop. The cells below are the
README's API tour; the test suite runs the same code."""


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.rstrip("\n") for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def cell(kind: str, source: str) -> dict:
    body = {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True)}
    if kind == "code":
        body.update(execution_count=None, outputs=[])
    return body


def notebook() -> dict:
    cells = [cell("markdown", INTRO), cell("code", SETUP)]
    cells += [cell("code", block) for block in readme_blocks()]
    return {
        "cells": cells,
        "metadata": {
            "accelerator": "TPU",
            "kernelspec": {"display_name": "Python 3", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=ROOT / "colab" / "quickstart.ipynb",
        help="notebook to write (default: colab/quickstart.ipynb)",
    )
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(notebook(), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
