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
    """One token sequence per non-blank line; a line that is not all integers is an error."""
    seqs = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                seqs.append([int(field) for field in fields])
            except ValueError as err:
                raise ValueError(f"{path}:{line_number}: not a space-separated list of token ids ({err})") from err
    return seqs


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", type=pathlib.Path, help=".npy int array [N, L], or a text file of sequences")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--eos-id", type=int, default=None, help="required for (and only for) text files")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="index file to write")
    parser.add_argument("--dense-budget-bytes", type=int, default=None, help="default: a quarter of the CSR size")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the statistics here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Runs the CLI; returns the printed statistics as a dict."""
    args = _parse_args(argv)
    is_npy = args.items.suffix == ".npy"
    if is_npy == (args.eos_id is not None):
        raise SystemExit("--eos-id is required for a text file of sequences and not allowed for a .npy file")

    start = time.perf_counter()
    items = np.load(args.items, allow_pickle=False) if is_npy else _read_text_items(args.items)
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
