"""Shared helpers for ``scripts/bench_*.py``: timing, compile time apart, tables, JSON.

Rules every bench follows (see DESIGN.md, "Tests and benchmarks"):

* compile time is measured apart, with ``jitted.lower(...).compile()`` (:func:`compile_timed`),
  or, for entry points that cannot be lowered from outside, as the first call's excess over a
  warm call (:func:`measure_calls`, :func:`measure_interleaved`);
* warm-up calls are excluded from the reported run times (:func:`time_runs`);
* every ratio is taken between two measurements of one run, in one harness.

Typical use::

    compiled, compile_s = compile_timed(jax.jit(step), params, tokens)
    runs = time_runs(compiled, params, tokens, warmup=1, repeats=5)
    rows.append({"case": "step", "compile_s": compile_s, "median_s": runs.median_s})
    print_table(rows, title="decode step")
    write_json(args.json, {"rows": rows})
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the flags every bench has: ``--quick`` (under a minute) and ``--json PATH``."""
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON here")
    return parser


def compile_timed(jitted: Any, *args: Any, **kwargs: Any) -> tuple[Callable[..., Any], float]:
    """Lowers and compiles ``jitted`` (a ``jax.jit`` object) for these arguments.

    Returns the compiled executable and the seconds spent lowering plus compiling. The
    executable takes the same traced arguments as ``jitted`` (static ones are baked in).
    """
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class RunTimes:
    """Wall-clock seconds of the timed calls (warm-up calls excluded)."""

    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min_s(self) -> float:
        return min(self.seconds)


def time_runs(fn: Callable[..., Any], *args: Any, warmup: int = 1, repeats: int = 3, **kwargs: Any) -> RunTimes:
    """Calls ``fn(*args, **kwargs)`` ``warmup`` times untimed, then ``repeats`` times timed.

    Each call is waited for with ``jax.block_until_ready`` on its output, so asynchronous
    dispatch does not hide device time. ``fn`` must not donate ``args`` (they are reused).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args, **kwargs))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        seconds.append(time.perf_counter() - start)
    return RunTimes(tuple(seconds))


@dataclasses.dataclass(frozen=True)
class Measured:
    """A function timed from its first call: the first call (tracing + compile + one run) apart,
    then warm calls."""

    first_s: float
    runs: RunTimes
    output: Any

    @property
    def compile_s(self) -> float:
        """The first call's excess over a warm call: tracing and compilation."""
        return max(self.first_s - self.runs.median_s, 0.0)


def measure_calls(fn: Callable[..., Any], make_args: Callable[[], tuple], repeats: int = 3) -> Measured:
    """Times ``fn(*make_args())``: the first call reported apart, then ``repeats`` warm calls.

    For public entry points that validate on the host and jit internally (so they cannot be
    lowered from outside) and that donate inputs: ``make_args`` builds fresh arguments for every
    call, outside the timed region. ``output`` is the last call's result.
    """
    return measure_interleaved({"case": (fn, make_args)}, repeats)["case"]


def measure_interleaved(cases: dict[str, tuple[Callable[..., Any], Callable[[], tuple]]], repeats: int = 3) -> dict[str, Measured]:
    """:func:`measure_calls` for several cases at once, with their warm calls interleaved
    (round-robin), so a slow drift in machine load hits every case alike and their ratios stay
    fair. ``cases`` maps a name to ``(fn, make_args)``; first calls all run before any warm call.
    """
    if repeats < 1:
        raise ValueError(f"need repeats >= 1, got {repeats}")

    def timed(name: str) -> tuple[float, Any]:
        fn, make_args = cases[name]
        args = jax.block_until_ready(make_args())
        start = time.perf_counter()
        output = jax.block_until_ready(fn(*args))
        return time.perf_counter() - start, output

    first = {name: timed(name)[0] for name in cases}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name in cases:
            elapsed, outputs[name] = timed(name)
            seconds[name].append(elapsed)
    return {name: Measured(first[name], RunTimes(tuple(seconds[name])), outputs[name]) for name in cases}


def environment() -> dict[str, Any]:
    """What the numbers were measured on: versions, backend, devices, host."""
    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "argv": sys.argv,
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Writes ``payload`` plus an ``environment`` entry to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"environment": environment(), **payload}, f, indent=2, default=float)
        f.write("\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an aligned text table; ``columns`` picks and orders the keys (default: all,
    in first-seen order). A missing value prints as ``-``."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column, "-")) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Prints :func:`format_table` to stdout, under ``title`` if given."""
    if title:
        print(f"\n== {title}")
    print(format_table(rows, columns), flush=True)
