"""Builds a trie index file from an item file and prints its statistics.

Fixed-length items (``.npy`` int array [num_items, length])::

    python scripts/build_index.py items.npy --vocab-size 2048 --out items.index.npz

Variable-length items (a text file, one space-separated token sequence per line, each ending
in the EOS id)::

    python scripts/build_index.py titles.txt --vocab-size 32000 --eos-id 2 --out titles.index.npz

Prints items, states, edges, MB, MB per 1M items and seconds (loading the file, building,
saving, each apart; the build also as CPU seconds of this process, which a busy shared
machine inflates less than wall time). ``--json PATH`` writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

from constraints import build_fixed_length_index, build_variable_length_index, memory_report, save_index


def _read_text_items(path: pathlib.Path) -> list[list[int]]:
    """One token sequence per non-blank line; a line that is not all integers, or a file that
    is not UTF-8 text, is a ValueError naming the file and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not a text file of token ids (byte {err.start} is not UTF-8); fixed-length items go "
            "in a .npy file"
        ) from err
    seqs = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            seqs.append([int(field) for field in fields])
        except ValueError as err:
            raise ValueError(f"{path}:{line_number}: not a space-separated list of token ids ({err})") from err
    return seqs


def _read_items(path: pathlib.Path, is_npy: bool):
    """The items of ``path``, or a SystemExit naming the file."""
    try:
        if is_npy:
            items = np.load(path, allow_pickle=False)
            if not isinstance(items, np.ndarray):
                raise ValueError("a .npz archive, not one .npy array")
            return items
        return _read_text_items(path)
    except FileNotFoundError as err:
        raise SystemExit(f"{path}: no such file") from err
    except (OSError, ValueError, EOFError) as err:
        message = str(err) if str(err).startswith(str(path)) else f"{path}: cannot read the items ({err})"
        raise SystemExit(message) from err


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", type=pathlib.Path, help=".npy int array [N, L], or a text file of sequences")
    parser.add_argument("--vocab-size", type=int, required=True, help="token ids lie in [0, VOCAB_SIZE)")
    parser.add_argument("--eos-id", type=int, default=None, help="required for (and only for) text files")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="index file to write")
    parser.add_argument("--dense-budget-bytes", type=int, default=None, help="default: a quarter of the CSR size")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the statistics here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.items.suffix == ".npy") == (args.eos_id is not None):
        parser.error("--eos-id is required for a text file of sequences and not allowed for a .npy file")
    if args.vocab_size < 1:
        parser.error(f"--vocab-size must be >= 1, got {args.vocab_size}")
    if args.dense_budget_bytes is not None and args.dense_budget_bytes < 0:
        parser.error(f"--dense-budget-bytes must be >= 0, got {args.dense_budget_bytes}")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.parent} does not exist")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Runs the CLI; returns the printed statistics as a dict."""
    args = _parse_args(argv)
    is_npy = args.items.suffix == ".npy"

    start = time.perf_counter()
    items = _read_items(args.items, is_npy)
    load_s = time.perf_counter() - start

    bar = tqdm(desc="build", unit="stage", disable=args.no_progress, file=sys.stderr)

    def progress(stage: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_postfix_str(stage)
        bar.update(done - bar.n)

    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        if is_npy:
            index = build_fixed_length_index(
                items, args.vocab_size, dense_budget_bytes=args.dense_budget_bytes, progress=progress
            )
        else:
            index = build_variable_length_index(
                items, args.vocab_size, args.eos_id, dense_budget_bytes=args.dense_budget_bytes, progress=progress
            )
    except ValueError as err:
        raise SystemExit(f"{args.items}: {err}") from err
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    bar.close()

    start = time.perf_counter()
    save_index(args.out, index)
    save_s = time.perf_counter() - start

    report = memory_report(index)
    stats = {
        "input_rows": len(items),
        "items": report.num_items,
        "states": report.num_states,
        "edges": report.num_edges,
        "depth": index.depth,
        "max_branching": list(index.max_branching),
        "dense_levels": report.dense_levels,
        "mb": report.total_bytes / 1e6,
        "mb_per_1m_items": report.mb_per_million_items,
        "load_s": load_s,
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "save_s": save_s,
        "file_mb": args.out.stat().st_size / 1e6,
    }
    width = max(map(len, stats))
    for key, value in stats.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
