"""Constrained beam search: STATIC vs the baselines, in one harness.

Every method decodes the same thing: beam search (batch 2, 70 beams, L steps) over logits that
are a fixed random function of (step, beam) (a table lookup, no transformer), so the numbers
isolate the constraint's cost. Mask-based methods (STATIC through its dense mask, exact and
sampled PPV, the hash bitmap, the CPU trie) all run through one jitted dense loop
(:func:`constraints.baselines.dense_beam_search`); "Unconstrained" is that loop without a mask.
STATIC's sparse path runs through :func:`decoding.beam_search.beam_search` with
``constraint=index``, next to that function's own unconstrained run.

Columns (times are the best of ``--repeats`` warm runs: the CPU is shared, and the least
disturbed run is the estimate): decode_ms (full decode), reference_ms (the unconstrained decode
of the same harness: timed alternately with every method of the setting, best of all those
runs), overhead_ms_per_step and ratio
(against reference_ms), kernel_us (the mask kernel alone on [2, 70] states at real item
prefixes, compiled ahead, warm, best of 100 calls (--quick: 30; CPU trie and exact PPV: 3) per
depth, mean over depths; per depth in the JSON and a table; for the sparse row,
``constraints.candidates``),
mb_per_1m_items (device arrays; the CPU trie: resident memory growth while building),
build_s, compile_s (apart; for beam_search rows first_call_s: the first call, compile
included), valid (fraction of the 140 outputs that are items), mask_recall and fp_per_state
(against the exact mask, at the same states). The CPU trie is built only up to
``CPU_TRIE_MAX_ITEMS`` items (a dict-of-dicts takes ~1.8 GB per 1M items of L = 8); the goals
compare it with STATIC at that item count and at the largest. Growth from the smallest to the
largest item count is timed apart (:func:`growth_runs`: both indexes and the unconstrained decode
interleaved, best of ``--growth-rounds``), for the dense and the sparse path. ``--quick`` runs
1e4 and 1e5 items, V = 256 and the TIGER-like setting, the slow baselines (exact PPV, CPU trie)
in the items sweep only. Each setting's title gives its wall time and the 1-minute load average.

    python scripts/bench_constraints.py --quick
    python scripts/bench_constraints.py --items 1e5,1e6,1e7 --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import (  # noqa: E402
    add_common_args,
    compile_timed,
    measure_interleaved,
    print_table,
    time_runs,
    write_json,
)

import constraints  # noqa: E402
from constraints.baselines import (  # noqa: E402
    StaticMask,
    build_cpu_trie,
    build_hash_bitmap,
    build_ppv,
    dense_beam_search,
)
from decoding.beam_search import beam_search  # noqa: E402

BATCH, BEAMS = 2, 70
PPV_WINDOW = 16  # items sampled per prefix range by approximate PPV
CPU_TRIE_MAX_ITEMS = 100_000  # the dict-of-dicts trie is built only up to this many items
SLOW_KERNEL_REPEATS = 3  # best-of for the ms-scale kernels (CPU trie, exact PPV)


def random_logits(table: jax.Array, step: jax.Array, tokens: jax.Array) -> jax.Array:
    """table float32 [steps, batch, beams, vocab] -> its slice at ``step`` (tokens ignored)."""
    del tokens
    return table[step]


@struct.dataclass
class StepCache:
    """A cache with nothing but lengths (the random-logits model needs no K/V)."""

    lengths: jax.Array  # int32 [rows]
    capacity: int = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class RandomLogitsModel:
    """logits[row, t] = params[(position) % positions, row % rows]; params float32 [positions, rows, vocab]."""

    def __call__(self, params, tokens, cache, num_valid):
        positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1])[None, :]
        rows = (jnp.arange(tokens.shape[0]) % params.shape[1])[:, None]
        logits = params[positions % params.shape[0], rows]
        return logits, cache.replace(lengths=cache.lengths + num_valid)


@jax.jit
def _walk(method, prefixes, depth):
    """States after the first ``depth`` (int32 []) tokens of prefixes int32 [..., L]."""

    def step(position, state):  # a loop, not unrolled: one advance to compile per method
        advanced = method.advance(state, jnp.take(prefixes, position, axis=-1))
        return jax.tree.map(lambda new, old: jnp.where(position < depth, new, old), advanced, state)

    return jax.lax.fori_loop(0, prefixes.shape[-1], step, method.initial_state(prefixes.shape[:-1]))


@jax.jit
def _mask(method, state):
    """The method's allowed mask, jitted (one compile per method type and index shapes)."""
    return method.allowed_mask(state)


@jax.jit
def _contains(oracle, tokens):
    """bool [...]: tokens int32 [..., L] is an item (``oracle``: an exact method)."""
    return oracle.is_complete(_walk(oracle, tokens, jnp.int32(tokens.shape[-1])))


def _paired_best_ms(method_fn, free_fn, repeats):
    """Best-of-``repeats`` ms of two calls timed alternately (after one warm-up each).

    The CPU is shared, so the minimum (least disturbed run) is the estimate, and alternating the
    two calls exposes both to the same background load: their ratio is one measurement.
    """
    method_s, free_s = [], []
    for fn in (method_fn, free_fn):
        jax.block_until_ready(fn())
    for _ in range(repeats):
        for fn, out in ((method_fn, method_s), (free_fn, free_s)):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - start)
    return min(method_s) * 1e3, min(free_s) * 1e3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _timed_build(build):
    start_rss, start = _rss_bytes(), time.perf_counter()
    method = jax.block_until_ready(build())
    return method, time.perf_counter() - start, _rss_bytes() - start_rss


def _kernel_stats(method, sample, exact_masks, repeats):
    """Warm time (us, best of ``repeats``) of the jitted mask kernel per depth and its mean over
    depths, and the mask's agreement with the exact one.

    sample: int32 [batch, beams, L] items; the states are their prefixes of each length < L.
    """
    kernel_states = [_walk(method, sample, jnp.int32(d)) for d in range(sample.shape[-1])]
    compiled, _ = compile_timed(_mask, method, kernel_states[0])
    micros, found, missed_total, false_pos = [], 0, 0, 0
    for state, exact in zip(kernel_states, exact_masks):
        micros.append(time_runs(compiled, method, state, warmup=2, repeats=repeats).min_s * 1e6)
        mask = np.asarray(compiled(method, state))
        found += int((mask & exact).sum())
        missed_total += int(exact.sum())
        false_pos += int((mask & ~exact).sum())
    states = len(kernel_states) * BATCH * BEAMS
    return {
        "kernel_us": float(np.mean(micros)),
        "kernel_us_per_depth": [float(m) for m in micros],
        "mask_recall": found / missed_total,
        "fp_per_state": false_pos / states,
    }


def _static_sparse_kernel_us(index, kernel_states, repeats):
    """Warm us (best of ``repeats``) of ``constraints.candidates`` per depth on [batch, beams]
    states, compiled ahead of time like the mask kernels; returns (mean over depths, per depth)."""
    micros = []
    for depth, state in enumerate(kernel_states):
        compiled, _ = compile_timed(jax.jit(lambda ix, s, d=depth: constraints.candidates(ix, s, d)), index, state)
        micros.append(time_runs(compiled, index, state, warmup=2, repeats=repeats).min_s * 1e6)
    return float(np.mean(micros)), [float(m) for m in micros]


def _beam_search_runner(vocab):
    """``run(**kwargs)``: decoding.beam_search of the random-logits model (batch, beams fixed)."""
    rows = BATCH * BEAMS
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=(32, rows, vocab)) * 3, jnp.float32)
    cache = StepCache(lengths=jnp.zeros((BATCH,), jnp.int32), capacity=32)
    prompts, lengths = np.zeros((BATCH, 1), np.int32), np.ones((BATCH,), np.int32)

    def run(**kwargs):
        return beam_search(
            RandomLogitsModel(), params, cache, prompts, lengths, num_beams=BEAMS, length_penalty=0.0, **kwargs
        )

    return run


def _beam_search_runs(index, vocab, depth, repeats):
    """decoding.beam_search with the STATIC sparse path and without a constraint, timed alternately.

    Returns (static best ms, unconstrained best ms, static first-call s, static output)."""
    run = _beam_search_runner(vocab)
    start = time.perf_counter()
    result = jax.block_until_ready(run(constraint=index))
    first_s = time.perf_counter() - start
    static_ms, free_ms = _paired_best_ms(lambda: run(constraint=index), lambda: run(max_new_tokens=depth), repeats)
    return static_ms, free_ms, first_s, result


def run_setting(label, num_items, vocab, depth, repeats, kernel_repeats, with_ppv_exact=True, with_cpu_trie=True):
    """All methods at one (items, vocab, depth); returns (table rows, the STATIC index).

    The CPU trie runs only if ``with_cpu_trie`` and ``num_items <= CPU_TRIE_MAX_ITEMS``."""
    rng = np.random.default_rng(0)
    items = rng.integers(0, vocab, (num_items, depth), dtype=np.int32)
    table = jnp.asarray(rng.normal(size=(depth, BATCH, BEAMS, vocab)) * 3, jnp.float32)
    sample = jnp.asarray(items[rng.integers(0, num_items, BATCH * BEAMS)].reshape(BATCH, BEAMS, depth))
    base = {"setting": label, "items": num_items, "vocab": vocab, "L": depth}

    index, static_build_s, _ = _timed_build(lambda: constraints.build_fixed_length_index(items, vocab))
    exact = StaticMask(index)
    kernel_states = [_walk(exact, sample, jnp.int32(d)) for d in range(depth)]
    exact_masks = [np.asarray(_mask(exact, s)) for s in kernel_states]

    kwargs = dict(logits_fn=random_logits, batch=BATCH, beams=BEAMS, steps=depth)
    free, free_compile_s = compile_timed(dense_beam_search, params=table, constraint=None, **kwargs)

    def decode(method):
        """(best ms, unconstrained best ms timed alongside, compile s, fraction valid)."""
        compiled, compile_s = compile_timed(dense_beam_search, params=table, constraint=method, **kwargs)
        method_ms, free_ms = _paired_best_ms(
            lambda: compiled(params=table, constraint=method), lambda: free(params=table, constraint=None), repeats
        )
        result = compiled(params=table, constraint=method)
        valid = np.asarray(_contains(exact, result.tokens)) & np.asarray(jnp.isfinite(result.scores))
        return method_ms, free_ms, compile_s, float(valid.mean())

    free_result = free(params=table, constraint=None)
    free_valid = float(np.asarray(_contains(exact, free_result.tokens)).mean())
    rows = []

    ppv, ppv_build_s, _ = _timed_build(lambda: build_ppv(items, vocab))
    builders = [("STATIC (dense mask)", lambda: exact, static_build_s)]
    if with_ppv_exact:
        builders.append(("PPV exact", lambda: ppv, ppv_build_s))
    builders.append((f"PPV sampled ({PPV_WINDOW})", lambda: ppv.approximate(PPV_WINDOW), ppv_build_s))
    builders.append(("Hash bitmap", lambda: build_hash_bitmap(items, vocab), None))
    if with_cpu_trie and num_items <= CPU_TRIE_MAX_ITEMS:
        builders.append(("CPU trie", lambda: build_cpu_trie(items, vocab), None))
    for name, build, known_build_s in builders:
        method, build_s, rss = _timed_build(build)
        nbytes = rss if name == "CPU trie" else method.nbytes()
        decode_ms, free_ms, compile_s, valid = decode(method)
        if not rows:
            free_row = dict(base, method="Unconstrained", decode_ms=free_ms, compile_s=free_compile_s, valid=free_valid)
            rows.append(free_row)
        slow_kernel = name in ("CPU trie", "PPV exact")  # ms per call: a few repeats suffice
        row = dict(
            base,
            method=name,
            decode_ms=decode_ms,
            reference_ms=free_ms,
            compile_s=compile_s,
            valid=valid,
            build_s=known_build_s if known_build_s is not None else build_s,
            mb_per_1m_items=nbytes / num_items,
            **_kernel_stats(method, sample, exact_masks, SLOW_KERNEL_REPEATS if slow_kernel else kernel_repeats),
        )
        rows.append(row)
        del method
    del ppv

    bs_static_ms, bs_free_ms, bs_first_s, result = _beam_search_runs(index, vocab, depth, repeats)
    valid = np.asarray(_contains(exact, result.sequences)) & np.asarray(result.valid)
    sparse_kernel_us, sparse_kernel_per_depth = _static_sparse_kernel_us(index, kernel_states, kernel_repeats)
    rows.append(dict(base, method="Unconstrained (beam_search)", decode_ms=bs_free_ms, reference_ms=bs_free_ms))
    rows.append(
        dict(
            base,
            method="STATIC (beam_search sparse)",
            decode_ms=bs_static_ms,
            reference_ms=bs_free_ms,
            first_call_s=bs_first_s,
            valid=float(valid.mean()),
            build_s=static_build_s,
            mb_per_1m_items=constraints.index_nbytes(index) / num_items,
            kernel_us=sparse_kernel_us,
            kernel_us_per_depth=sparse_kernel_per_depth,
        )
    )
    finalize_rows(rows, depth)
    return rows, index


def growth_runs(small, large, rounds):
    """STATIC's decode time at two item counts against the unconstrained decode, all timed in
    one interleaved round-robin (best of ``rounds`` each), on both paths.

    small, large: TrieIndex with the same vocab and depth. Dense path: the harness loop with the
    STATIC mask vs the same loop without one; sparse path: decoding.beam_search with
    ``constraint=index`` vs beam_search without one. Returns one row per path.
    """
    vocab, depth = small.vocab_size, small.depth
    table = jnp.asarray(np.random.default_rng(2).normal(size=(depth, BATCH, BEAMS, vocab)) * 3, jnp.float32)
    kwargs = dict(logits_fn=random_logits, batch=BATCH, beams=BEAMS, steps=depth, params=table)
    dense = {
        name: (compile_timed(dense_beam_search, constraint=method, **kwargs)[0], method)
        for name, method in (("free", None), ("small", StaticMask(small)), ("large", StaticMask(large)))
    }
    run = _beam_search_runner(vocab)
    cases = {f"dense {name}": (lambda c=c, m=m: c(params=table, constraint=m), tuple) for name, (c, m) in dense.items()}
    cases["sparse free"] = (lambda: run(max_new_tokens=depth), tuple)
    cases["sparse small"] = (lambda: run(constraint=small), tuple)
    cases["sparse large"] = (lambda: run(constraint=large), tuple)
    best_ms = {name: m.runs.min_s * 1e3 for name, m in measure_interleaved(cases, repeats=rounds).items()}
    rows = []
    for path, harness in (("dense", "dense_beam_search + STATIC mask"), ("sparse", "beam_search(constraint=index)")):
        free, at_small, at_large = (best_ms[f"{path} {k}"] for k in ("free", "small", "large"))
        over_small, over_large = (at_small - free) / depth, (at_large - free) / depth
        rows.append(
            {
                "path": path,
                "harness": harness,
                "small_items": small.num_items,
                "large_items": large.num_items,
                "unconstrained_ms": free,
                "small_ms": at_small,
                "large_ms": at_large,
                "small_overhead_ms_per_step": over_small,
                "large_overhead_ms_per_step": over_large,
                "decode_growth": at_large / at_small,
                # A ratio of overheads means nothing when the constrained decode is the faster one.
                "overhead_growth": over_large / over_small if over_small > 0 and over_large > 0 else None,
                "rounds": rounds,
            }
        )
    return rows


def finalize_rows(rows, depth):
    """Sets each row's reference to its harness's best unconstrained run (over all the runs timed
    alongside the methods of this setting), then ratio and overhead per step."""
    dense = [r for r in rows if "beam_search" not in r["method"]]
    best = min(r["reference_ms"] for r in dense if "reference_ms" in r)
    for row in dense:
        row["reference_ms"] = best
    dense[0]["decode_ms"] = best
    for row in rows:
        row["ratio"] = row["decode_ms"] / row["reference_ms"]
        row["overhead_ms_per_step"] = (row["decode_ms"] - row["reference_ms"]) / depth


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

    The CPU trie is built only up to ``CPU_TRIE_MAX_ITEMS``: its ratios are given at the item
    count where it was built (``*_same_items``, apples to apples) and against STATIC at the largest
    count (``*_static_at_largest``). Per-step ratios divide full-decode times (model included);
    overhead ratios are left out (None) where STATIC's overhead is not positive. The growth from
    the smallest to the largest item count comes from :func:`growth_runs` (interleaved).
    """
    out = {}
    sparse = _pick(rows, "items", "STATIC (beam_search sparse)", items=largest)
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
            for label, method in (("dense", "STATIC (dense mask)"), ("sparse", "STATIC (beam_search sparse)")):
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
    small_sparse = _pick(rows, "items", "STATIC (beam_search sparse)", items=smallest)
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
    parser.add_argument("--repeats", type=int, default=5)
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
    print("\n== goals (measured, met or not)")
    for key, value in summary.items():
        print(f"  {key}: {value if value is None else f'{value:.4g}'}")
    payload = {"rows": rows, "growth": growth, "goals": summary, "batch": BATCH, "beams": BEAMS, "load_1min": load}
    write_json(args.json, payload)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
