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
prefixes, jitted, warm, mean over depths; for the sparse row, ``constraints.candidates``),
mb_per_1m_items (device arrays; the CPU trie: resident memory growth while building),
build_s, compile_s (apart; for beam_search rows first_call_s: the first call, compile
included), valid (fraction of the 140 outputs that are items), mask_recall and fp_per_state
(against the exact mask, at the same states). The CPU trie is built only up to
``CPU_TRIE_MAX_ITEMS`` items (a dict-of-dicts takes ~1.8 GB per 1M items of L = 8).

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
from _bench_common import add_common_args, compile_timed, print_table, time_runs, write_json  # noqa: E402

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
    state = method.initial_state(prefixes.shape[:-1])
    for position in range(prefixes.shape[-1]):
        advanced = method.advance(state, prefixes[..., position])
        state = jax.tree.map(lambda new, old: jnp.where(position < depth, new, old), advanced, state)
    return state


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
    """Mean warm time (us) of the jitted mask kernel over depths, and its agreement with exact.

    sample: int32 [batch, beams, L] items; the states are their prefixes of each length < L.
    """
    kernel_states = [_walk(method, sample, jnp.int32(d)) for d in range(sample.shape[-1])]
    compiled, _ = compile_timed(_mask, method, kernel_states[0])
    micros, found, missed_total, false_pos = [], 0, 0, 0
    for state, exact in zip(kernel_states, exact_masks):
        micros.append(time_runs(compiled, method, state, warmup=1, repeats=repeats).min_s * 1e6)
        mask = np.asarray(compiled(method, state))
        found += int((mask & exact).sum())
        missed_total += int(exact.sum())
        false_pos += int((mask & ~exact).sum())
    states = len(kernel_states) * BATCH * BEAMS
    return {
        "kernel_us": float(np.mean(micros)),
        "mask_recall": found / missed_total,
        "fp_per_state": false_pos / states,
    }


def _static_sparse_kernel_us(index, kernel_states, repeats):
    micros = []
    for depth, state in enumerate(kernel_states):
        fn = jax.jit(lambda ix, s, d=depth: constraints.candidates(ix, s, d))
        micros.append(time_runs(fn, index, state, warmup=1, repeats=repeats).min_s * 1e6)
    return float(np.mean(micros))


def _beam_search_runs(index, vocab, depth, repeats):
    """decoding.beam_search with the STATIC sparse path and without a constraint, timed alternately.

    Returns (static best ms, unconstrained best ms, static first-call s, static output)."""
    rows = BATCH * BEAMS
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=(32, rows, vocab)) * 3, jnp.float32)
    cache = StepCache(lengths=jnp.zeros((BATCH,), jnp.int32), capacity=32)
    prompts, lengths = np.zeros((BATCH, 1), np.int32), np.ones((BATCH,), np.int32)

    def run(**kwargs):
        return beam_search(
            RandomLogitsModel(), params, cache, prompts, lengths, num_beams=BEAMS, length_penalty=0.0, **kwargs
        )

    start = time.perf_counter()
    result = jax.block_until_ready(run(constraint=index))
    first_s = time.perf_counter() - start
    static_ms, free_ms = _paired_best_ms(lambda: run(constraint=index), lambda: run(max_new_tokens=depth), repeats)
    return static_ms, free_ms, first_s, result


def run_setting(label, num_items, vocab, depth, repeats, with_ppv_exact=True):
    """All methods at one (items, vocab, depth); returns table rows."""
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
    if num_items <= CPU_TRIE_MAX_ITEMS:
        builders.append(("CPU trie", lambda: build_cpu_trie(items, vocab), None))
    for name, build, known_build_s in builders:
        method, build_s, rss = _timed_build(build)
        nbytes = rss if name == "CPU trie" else method.nbytes()
        decode_ms, free_ms, compile_s, valid = decode(method)
        if not rows:
            free_row = dict(base, method="Unconstrained", decode_ms=free_ms, compile_s=free_compile_s, valid=free_valid)
            rows.append(free_row)
        kernel_repeats = 1 if name in ("CPU trie", "PPV exact") else repeats
        row = dict(
            base,
            method=name,
            decode_ms=decode_ms,
            reference_ms=free_ms,
            compile_s=compile_s,
            valid=valid,
            build_s=known_build_s if known_build_s is not None else build_s,
            mb_per_1m_items=nbytes / num_items,
            **_kernel_stats(method, sample, exact_masks, kernel_repeats),
        )
        rows.append(row)
        del method
    del ppv

    bs_static_ms, bs_free_ms, bs_first_s, result = _beam_search_runs(index, vocab, depth, repeats)
    valid = np.asarray(_contains(exact, result.sequences)) & np.asarray(result.valid)
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
            kernel_us=_static_sparse_kernel_us(index, kernel_states, repeats),
        )
    )
    finalize_rows(rows, depth)
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


def goals(rows, largest):
    """The assignment's targets, computed from this run's rows (reported whether met or not)."""
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
    ppv = _pick(rows, "items", "PPV exact", items=largest)
    if dense and cpu:
        out["cpu_trie_kernel_over_static_dense_kernel"] = cpu[-1]["kernel_us"] / dense["kernel_us"]
        out["cpu_trie_step_over_static_dense_step"] = cpu[-1]["decode_ms"] / dense["decode_ms"]
        out["cpu_trie_overhead_over_static_dense_overhead"] = _overhead_ratio(cpu[-1], dense)
    if sparse and cpu:
        out["cpu_trie_kernel_over_static_sparse_kernel"] = cpu[-1]["kernel_us"] / sparse["kernel_us"]
    if dense and ppv:
        out["ppv_exact_kernel_over_static_dense_kernel"] = ppv["kernel_us"] / dense["kernel_us"]
        out["ppv_exact_step_over_static_dense_step"] = ppv["decode_ms"] / dense["decode_ms"]
        out["ppv_exact_overhead_over_static_dense_overhead"] = _overhead_ratio(ppv, dense)
    small = _pick(rows, "items", "STATIC (dense mask)", items=smallest)
    if dense and small:
        out["static_dense_kernel_growth_smallest_to_largest"] = dense["kernel_us"] / small["kernel_us"]
        out["static_dense_overhead_growth_smallest_to_largest"] = (
            dense["overhead_ms_per_step"] / small["overhead_ms_per_step"] if small["overhead_ms_per_step"] > 0 else None
        )
    small_sparse = _pick(rows, "items", "STATIC (beam_search sparse)", items=smallest)
    if sparse and small_sparse:
        out["static_sparse_kernel_growth_smallest_to_largest"] = sparse["kernel_us"] / small_sparse["kernel_us"]
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
    args = parser.parse_args(argv)
    if args.quick:
        item_counts, vocabs, tiger_items, repeats = [10_000, 100_000], [256], 10_000, 3
    else:
        item_counts = [int(float(x)) for x in args.items.split(",")] + ([100_000_000] if args.with_1e8 else [])
        vocabs = [int(x) for x in args.vocabs.split(",") if x.strip()]
        tiger_items, repeats = 1_000_000, args.repeats
    largest = max(item_counts)
    rows = []
    for n in item_counts:
        rows += run_setting("items", n, 2048, 8, repeats)
        print_table([r for r in rows if r["items"] == n], COLUMNS, title=f"items={n:.0e}, V=2048, L=8")
    for vocab in vocabs:
        rows += run_setting("vocab", largest, vocab, 8, repeats, with_ppv_exact=vocab <= args.ppv_exact_max_vocab)
        print_table([r for r in rows if r["setting"] == "vocab" and r["vocab"] == vocab], COLUMNS, title=f"V={vocab}")
    rows += run_setting("tiger", tiger_items, 256, 4, repeats)
    # The sweep over vocab also holds the V=2048 point of the items sweep.
    rows += [dict(row, setting="vocab") for row in rows if row["setting"] == "items" and row["items"] == largest]
    print_table(rows, COLUMNS, title="all settings")
    summary = goals(rows, largest)
    print("\n== goals (measured, met or not)")
    for key, value in summary.items():
        print(f"  {key}: {value if value is None else f'{value:.4g}'}")
    write_json(args.json, {"rows": rows, "goals": summary, "batch": BATCH, "beams": BEAMS})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
