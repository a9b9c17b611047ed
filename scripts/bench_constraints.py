"""Constrained beam search: STATIC vs the baselines, in one harness.

Every method decodes the same thing in the same loop: the library's
:func:`decoding.beam_search.beam_search` (batch 2, 70 beams, L steps) of a model whose logits are
a fixed random function of (step, beam) (a table lookup, no transformer), so the numbers isolate
the constraint's cost. Each method is that call's ``constraint=``: "STATIC (sparse)" passes the
``TrieIndex`` (the sparse path: ``beams x K`` candidates per step); "STATIC (dense mask)"
passes it behind the dense protocol only (``baselines.StaticMask``), and so do the baselines
(exact and sampled PPV, the hash bitmap, the CPU trie; ``scripts/baselines/``): the dense path,
``beams x vocab`` masked scores per step. "Unconstrained" is ``constraint=None``.

This module is the CLI: the settings swept, the tables, the goals, the JSON and the plot. The
measuring (the random-logits model, each setting's methods timed by :func:`run_setting`, the
mask-kernel measurement, :func:`growth_runs`) is in ``scripts/_constraints_harness.py``.

Columns (times are the best of ``--repeats`` warm runs: the CPU is shared, and the least
disturbed run is the estimate; each call includes beam_search's host-side input checks, alike
for every method): decode_ms (full decode), reference_ms (the unconstrained decode: timed
alternately with every method of the setting, best of all those runs), overhead_ms_per_step
and ratio (against reference_ms), kernel_us (the mask kernel alone on [2, 70] states at real
item prefixes, compiled ahead, warm, best of 100 calls (--quick: 30; CPU trie and exact PPV: 3)
per depth, mean over depths; per depth in the JSON and a table; for the sparse row,
``constraints.candidates``), mb_per_1m_items (device arrays; the CPU trie: resident memory
growth while building), build_s, compile_s (apart: the first call's excess over a warm one,
jit caches cleared per setting; first_call_s: the first call, compile included), valid
(fraction of the 140 outputs that are items and valid beams), mask_recall and fp_per_state
(against the exact mask, at the same states). The CPU trie is built only up to
``CPU_TRIE_MAX_ITEMS`` items (in ``_constraints_harness``; a dict-of-dicts takes ~1.8 GB per 1M
items of L = 8); the goals compare it with STATIC at that item count and at the largest. Growth
from the smallest to the largest item count is timed apart (:func:`growth_runs`: both indexes
and the unconstrained decode interleaved, best of ``--growth-rounds``), through the dense and
the sparse path. ``--quick`` runs 1e4 and 1e5 items, V = 256 and the TIGER-like setting, the
slow baselines (exact PPV, CPU trie) in the items sweep only. Each setting's title gives its
wall time and the 1-minute load average.

Call overhead (:func:`_constraints_harness.call_overhead`, at the smallest item count, both
paths): the public ``beam_search`` call against its compiled program called with the same
prepared arguments, interleaved, median of 300 calls (--quick: 100): ``overhead_ms`` is what
the host-side checks and preparation add (``prepare_ms`` times them alone, back to back).

    python scripts/bench_constraints.py --quick
    python scripts/bench_constraints.py --items 1e5,1e6,1e7 --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import add_common_args, print_table, write_json  # noqa: E402
from _constraints_harness import BATCH, BEAMS, call_overhead, growth_runs, run_setting  # noqa: E402

COLUMNS = [
    "setting", "items", "vocab", "L", "method", "decode_ms", "reference_ms", "overhead_ms_per_step", "ratio",
    "kernel_us", "mb_per_1m_items", "build_s", "compile_s", "first_call_s", "valid", "mask_recall", "fp_per_state",
]  # fmt: skip


def _pick(rows, setting, method, items=None, vocab=None):
    for row in rows:
        if row["setting"] == setting and row["method"] == method:
            if (items is None or row["items"] == items) and (vocab is None or row["vocab"] == vocab):
                return row
    return None


def _overhead_ratio(slow, fast):
    """Ratio of per-step overheads; None when ``fast`` has none to divide by (at or below zero)."""
    return slow["overhead_ms_per_step"] / fast["overhead_ms_per_step"] if fast["overhead_ms_per_step"] > 0 else None


def goals(rows, largest, growth):
    """The assignment's targets, computed from this run's rows (reported whether met or not).

    The CPU trie is built only up to ``_constraints_harness.CPU_TRIE_MAX_ITEMS``: its ratios are given at the item
    count where it was built (``*_same_items``, apples to apples) and against STATIC at the largest
    count (``*_static_at_largest``). Per-step ratios divide full-decode times (model included);
    overhead ratios are left out (None) where STATIC's overhead is not positive. The growth from
    the smallest to the largest item count comes from :func:`growth_runs` (interleaved).
    """
    out = {}
    sparse = _pick(rows, "items", "STATIC (sparse)", items=largest)
    dense = _pick(rows, "items", "STATIC (dense mask)", items=largest)
    smallest = min(r["items"] for r in rows if r["setting"] == "items")
    if sparse:
        out["static_sparse_ratio_at_largest"] = sparse["ratio"]
        out["static_build_s_at_largest"] = sparse["build_s"]
        out["static_mb_per_1m_items_at_largest"] = sparse["mb_per_1m_items"]
    if dense:
        out["static_dense_ratio_at_largest"] = dense["ratio"]
    cpu = [r for r in rows if r["method"] == "CPU trie" and r["setting"] == "items"]
    if cpu:
        cpu = max(cpu, key=lambda r: r["items"])
        out["cpu_trie_items"] = cpu["items"]
        for where, items in (("same_items", cpu["items"]), ("static_at_largest", largest)):
            for label, method in (("dense", "STATIC (dense mask)"), ("sparse", "STATIC (sparse)")):
                static = _pick(rows, "items", method, items=items)
                if static is None:
                    continue
                out[f"cpu_trie_kernel_over_static_{label}_kernel_{where}"] = cpu["kernel_us"] / static["kernel_us"]
                out[f"cpu_trie_step_over_static_{label}_step_{where}"] = cpu["decode_ms"] / static["decode_ms"]
                out[f"cpu_trie_overhead_over_static_{label}_overhead_{where}"] = _overhead_ratio(cpu, static)
    ppv = _pick(rows, "items", "PPV exact", items=largest)
    if dense and ppv:
        out["ppv_exact_kernel_over_static_dense_kernel"] = ppv["kernel_us"] / dense["kernel_us"]
        out["ppv_exact_step_over_static_dense_step"] = ppv["decode_ms"] / dense["decode_ms"]
        out["ppv_exact_overhead_over_static_dense_overhead"] = _overhead_ratio(ppv, dense)
    if ppv and sparse:
        out["ppv_exact_kernel_over_static_sparse_kernel"] = ppv["kernel_us"] / sparse["kernel_us"]
        out["ppv_exact_step_over_static_sparse_step"] = ppv["decode_ms"] / sparse["decode_ms"]
    small = _pick(rows, "items", "STATIC (dense mask)", items=smallest)
    if dense and small:
        out["static_dense_kernel_growth_smallest_to_largest"] = dense["kernel_us"] / small["kernel_us"]
    small_sparse = _pick(rows, "items", "STATIC (sparse)", items=smallest)
    if sparse and small_sparse:
        out["static_sparse_kernel_growth_smallest_to_largest"] = sparse["kernel_us"] / small_sparse["kernel_us"]
    for row in growth:
        out[f"static_{row['path']}_decode_growth_interleaved"] = row["decode_growth"]
        out[f"static_{row['path']}_overhead_growth_interleaved"] = row["overhead_growth"]
        out[f"static_{row['path']}_overhead_ms_per_step_smallest"] = row["small_overhead_ms_per_step"]
        out[f"static_{row['path']}_overhead_ms_per_step_largest"] = row["large_overhead_ms_per_step"]
    return out


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed; no plot written to {path} (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows if "Unconstrained" not in r["method"]))
    colors = {method: f"C{i}" for i, method in enumerate(methods)}  # one color per method in both panels
    for ax, setting, key in ((axes[0], "items", "items"), (axes[1], "vocab", "vocab")):
        for method in methods:
            points = sorted((r[key], r["ratio"]) for r in rows if r["setting"] == setting and r["method"] == method)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colors[method], label=method)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("decode time / unconstrained (same harness)")
        ax.set_title(f"constraint overhead vs {key} (batch {BATCH}, {BEAMS} beams)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--items", default="1e5,1e6,1e7", help="comma-separated item counts (L=8, V=2048)")
    parser.add_argument("--with-1e8", action="store_true", help="also 1e8 items (needs ~10 GB of host memory)")
    parser.add_argument(
        "--vocabs", default="256,1024,8192,32768", help="vocab sweep at the largest item count ('' for none)"
    )
    parser.add_argument("--plot", metavar="PATH.png", default=None, help="PNG: decode / unconstrained vs items, vocab")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method and setting (best reported)")
    parser.add_argument("--ppv-exact-max-vocab", type=int, default=4096, help="skip exact PPV above this vocab (slow)")
    parser.add_argument("--growth-rounds", type=int, default=30, help="interleaved rounds of the growth measurement")
    args = parser.parse_args(argv)
    if args.quick:
        item_counts, vocabs, tiger_items, repeats, kernel_repeats = [10_000, 100_000], [256], 10_000, 3, 30
        growth_rounds = 10
    else:
        item_counts = [int(float(x)) for x in args.items.split(",")] + ([100_000_000] if args.with_1e8 else [])
        vocabs = [int(x) for x in args.vocabs.split(",") if x.strip()]
        tiger_items, repeats, kernel_repeats, growth_rounds = 1_000_000, args.repeats, 100, args.growth_rounds
    largest, smallest = max(item_counts), min(item_counts)
    rows, growth, load = [], [], {}

    def timed_setting(title, *setting_args, **setting_kwargs):
        start = time.perf_counter()
        setting_rows, index = run_setting(*setting_args, **setting_kwargs)
        load[title] = os.getloadavg()[0]
        elapsed = time.perf_counter() - start
        print_table(setting_rows, COLUMNS, title=f"{title} ({elapsed:.1f} s, load {load[title]:.2f})")
        return setting_rows, index

    kept = {}  # the STATIC indexes at the smallest and largest item counts, for growth_runs
    for n in item_counts:
        setting_rows, index = timed_setting(f"items={n:.0e}, V=2048, L=8", "items", n, 2048, 8, repeats, kernel_repeats)
        rows += setting_rows
        if n in (smallest, largest):
            kept[n] = index
        del index
    if len(kept) == 2:
        growth = growth_runs(kept[smallest], kept[largest], growth_rounds)
        load["growth"] = os.getloadavg()[0]
        title = f"growth {smallest:.0e} -> {largest:.0e} items, interleaved (load {load['growth']:.2f})"
        print_table(growth, title=title)
    overhead = call_overhead(kept[smallest], 2048, 8, calls=100 if args.quick else 300)
    load["call_overhead"] = os.getloadavg()[0]
    print_table(overhead, title=f"beam_search: public call vs its jitted program, {smallest:.0e} items (load {load['call_overhead']:.2f})")
    kept.clear()
    # --quick times the two slow baselines (exact PPV, CPU trie) in the items sweep only.
    slow = not args.quick
    for vocab in vocabs:
        exact_ok = slow and vocab <= args.ppv_exact_max_vocab
        rows += timed_setting(f"V={vocab}", "vocab", largest, vocab, 8, repeats, kernel_repeats, exact_ok, slow)[0]
    rows += timed_setting("tiger", "tiger", tiger_items, 256, 4, repeats, kernel_repeats, slow, slow)[0]
    # The sweep over vocab also holds the V=2048 point of the items sweep.
    rows += [dict(row, setting="vocab") for row in rows if row["setting"] == "items" and row["items"] == largest]
    print_table(rows, COLUMNS, title="all settings")
    kernel_rows = [
        {"setting": r["setting"], "items": r["items"], "vocab": r["vocab"], "method": r["method"]}
        | {f"d{d}": us for d, us in enumerate(r["kernel_us_per_depth"])}
        for r in rows
        if r["setting"] == "items" and "kernel_us_per_depth" in r
    ]
    print_table(kernel_rows, title="kernel us per depth ([batch, beams] states, best of the kernel repeats)")
    summary = goals(rows, largest, growth)
    for row in overhead:
        summary[f"beam_search_call_overhead_ms_{row['path'].split()[0]}"] = row["overhead_ms"]
        summary[f"beam_search_prepare_ms_{row['path'].split()[0]}"] = row["prepare_ms"]
    print("\n== goals (measured, met or not)")
    for key, value in summary.items():
        print(f"  {key}: {value if value is None else f'{value:.4g}'}")
    payload = {"rows": rows, "growth": growth, "call_overhead": overhead, "goals": summary, "batch": BATCH, "beams": BEAMS, "load_1min": load}
    write_json(args.json, payload)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
