"""Generative retrieval decode: queries/s of the job's constrained beam search vs unconstrained
beam search vs a host-side trie, and the job's shared-prefix KV cache vs a per-beam one, over
catalogs of 4-level x 256-code semantic IDs.

Per catalog size x batch x beams, five methods decode the same queries (BOS + 20 random catalog
items, 81 tokens; the job's ``retriever_config(vocab, "tiny")`` model with random weights; 4 ID
tokens; see ``scripts/_retrieval_harness.py`` for each method): ``constrained (trie)`` and
``constrained + history filter`` (the job's sparse program, ``retrieval.search._constrained_jit``,
with its shared-prefix cache ``models.BeamKVCache``: the history's keys/values once per query,
4 positions per beam; with a plain TrieIndex / with the job's ItemFilter excluding each query's
20 history items), ``trie, per-beam cache`` (the same program with ``models.KVCache``: every beam
row holds the 85-position history + IDs, as the job did before; ``trie/perbeam`` is the cache's
speed-up, ``shared_match`` the fraction of queries whose top-10 the two agree on),
``unconstrained`` (beam_search's dense program, per-beam cache, as ``unconstrained_top_k`` runs
it) and ``host trie`` (the ``prefix_allowed_tokens_fn`` pattern, per-beam cache: a Python loop
over the 4 steps, a host dict trie walk and a mask upload per step; ``host_side_ms`` is that host
part of one call).

Model calls differ by path, as the library runs them: the dense (unconstrained) program prefills
all but the last prompt token and runs 4 steps on ``batch * beams`` rows (its first step feeds
the last prompt token to every repeated beam row); the sparse program (and the host trie)
prefills the whole prompt and runs 3 steps on ``batch * beams`` rows. So constrained /
unconstrained measures the whole decode, one fewer full-width model step and the shared-prefix
cache included, not the constraint's cost alone (``trie/perbeam`` isolates the cache).

What is timed: each method's compiled program(s) only, for every method alike: the public
entry points' per-call host validation, prompt building and ``ItemFilter.for_rows`` are done
before timing (``filter_prep_ms`` reports the latter per batch); the host trie's per-step host
work is timed, being the baseline's point. Compile seconds are measured apart (ahead-of-time
``lower().compile()``). Per setting the methods' warm calls are interleaved (round-robin, one
warm-up call each excluded); queries/s = batch / the best of ``--repeats`` calls (the CPU is
shared: the least disturbed call is the estimate; medians are in the JSON). Ratios are taken
between two methods of the same setting and run.

Memory: two estimates per case, made before running it: ``est_gb`` for the shared-prefix
methods (``_retrieval_harness.estimate_shared_gb``) and ``est_gb_pb`` for the per-beam ones
(``estimate_gb``: 2 x the ``batch * beams``-row KV cache + 3 x the ``[rows, vocab]`` logits +
params). A case whose ``est_gb`` exceeds ``--max-cache-gb`` is skipped; one where only
``est_gb_pb`` does runs the shared-prefix methods alone (by default batch 1024 x beam 200:
204,800 rows, ~20 GB per-beam, ~4 GB shared). XLA's own figure for each compiled program is in
``xla_gb`` (at 256 x 200 rows: 3.4 GB for the sparse program with the per-beam cache, 0.6 GB with
the shared-prefix one). The host trie runs only where ``batch * beams <= --host-trie-max-rows``
(it is slow; the table says where it ran). Every setting checks its outputs: the constrained
top-10 must be catalog items (``valid`` = 1) with no history item under the filter, the host
trie's top-10 must equal the sparse path's with the same per-beam cache (``host_match``), and
``shared_match`` is the fraction of queries whose top-10 is the same with both caches (below 1
only where a near-tie at a beam boundary, ~1e-6 apart, kept a different beam; the largest
log-prob difference of a hypothesis both return is ``shared_common_max_diff`` in the JSON).

NVIDIA's published shape (SID-GR: 4 x 256 IDs, beam 200, batch 16, history 2,048 tokens,
8 layers, hidden 1,024, SwiGLU width ``--nvidia-hidden`` (4,096 by default), ``--nvidia-kv-heads``
KV heads; 268 ms per batch with a KV cache on an H100) is timed with random weights, float32,
constrained over the largest catalog, with the job's shared-prefix cache: 16 x 2,048 prefix
positions + 3,200 x 4 suffix positions = 1.5 GB, where a per-beam cache needs 3,200 rows x 67 MB
= 215 GB. It runs at the published shape when its estimate (~9.5 GB; XLA says 8.6 GB, mostly the
prefill's attention scores) fits ``--nvidia-max-gb``, else at the largest scaled shape that fits
(batch halved, then fewer beams). Both caches are then also timed at the largest shape where the
per-beam cache fits (``compare``). ``--quick`` runs 1e4 items, batch 64, beams 10 and 50, and
skips the NVIDIA shape.

    python scripts/bench_retrieval.py --quick
    python scripts/bench_retrieval.py --catalogs 1e5 --batches 64,256 --json out.json
    python scripts/bench_retrieval.py                 # the full grid: 1e5, 1e6 x 64..1024 x 10..200

Wall time on the 2-core CPU (shared): --quick 45 s at load 1, 100 s at load 5; 1e6 items x batch 64, 256 x
beams 10, 50, 200 plus the NVIDIA shape ~17 minutes (8 of them the published shape: one warm-up
and one timed search of ~130 s, two prefills of ~120 s, and the cache comparison); the full grid
was last timed (half an hour) before the per-beam comparison and the published NVIDIA shape.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import add_common_args, print_table, write_json  # noqa: E402
from _retrieval_harness import (  # noqa: E402
    CAPACITY,
    METHODS,
    PROMPT_WIDTH,
    build_corpus,
    estimate_gb,
    estimate_shared_gb,
    make_queries,
    nvidia_config,
    retriever_model,
    run_case,
    run_nvidia,
)

CONSTRAINED = ("constrained (trie)", "constrained + history filter")
SHORT = dict(zip(METHODS, ("uncon", "trie", "filter", "perbeam", "host")))
GOAL_VS_UNCONSTRAINED, GOAL_VS_HOST = 0.95, 20.0
COLUMNS = [
    "items", "batch", "beams", "est_gb", "est_gb_pb", "qps_uncon", "qps_trie", "qps_filter", "qps_perbeam", "qps_host",
    "trie/uncon", "filter/uncon", "trie/perbeam", "trie/host", "filter/host",
    "compile_uncon", "compile_trie", "compile_filter", "compile_perbeam", "compile_host", "filter_prep_ms", "host_side_ms",
    "valid", "host_match", "shared_match", "status",
]  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def table_row(row: dict) -> dict:
    """The printed columns of one result row (see COLUMNS)."""
    out = {k: row[k] for k in ("items", "batch", "beams", "est_gb", "status", "filter_prep_ms") if k in row}
    if "est_gb_per_beam" in row:
        out["est_gb_pb"] = row["est_gb_per_beam"]
    for method in METHODS:
        if method in row:
            out[f"qps_{SHORT[method]}"] = row[method]["qps"]
            out[f"compile_{SHORT[method]}"] = row[method]["compile_s"]
    for name, (num, den) in ratio_pairs().items():
        if name in row:
            out[name] = row[name]
    if CONSTRAINED[0] in row:
        out["valid"] = min(row[m]["valid_items"] for m in CONSTRAINED)
    if "host_trie_matches" in row:
        out["host_match"] = row["host_trie_matches"]
        out["host_side_ms"] = row["host trie"]["host_side_ms"]
    if "shared_same_rows" in row:
        out["shared_match"] = row["shared_same_rows"]
    return out


def ratio_pairs() -> dict[str, tuple[str, str]]:
    """Ratio name -> (numerator method, denominator method), in queries/s."""
    return {
        "trie/uncon": (CONSTRAINED[0], "unconstrained"),
        "filter/uncon": (CONSTRAINED[1], "unconstrained"),
        "trie/perbeam": (CONSTRAINED[0], "trie, per-beam cache"),
        "trie/host": (CONSTRAINED[0], "host trie"),
        "filter/host": (CONSTRAINED[1], "host trie"),
    }


def add_ratios(row: dict) -> None:
    for name, (num, den) in ratio_pairs().items():
        if num in row and den in row:
            row[name] = row[num]["qps"] / row[den]["qps"]


def goals_of(rows: list[dict]) -> dict:
    """The issue's goals, per constrained method: at least 0.95x unconstrained at every setting
    run, and at least 20x the host trie at every setting where it ran (met or not, with the
    worst setting and every failing one)."""
    goals = {}
    for method in CONSTRAINED:
        short = SHORT[method]
        for den, goal in (("uncon", GOAL_VS_UNCONSTRAINED), ("host", GOAL_VS_HOST)):
            name = f"{short}/{den}"
            measured = [r for r in rows if name in r]
            if not measured:
                continue
            worst = min(measured, key=lambda r: r[name])
            failing = [(r["items"], r["batch"], r["beams"], round(r[name], 3)) for r in measured if r[name] < goal]
            goals[f"{short}_vs_{den}"] = {
                "goal": goal,
                "worst": worst[name],
                "worst_at": {k: worst[k] for k in ("items", "batch", "beams")},
                "settings": len(measured),
                "met": not failing,
                "failing": failing,
            }
    return goals


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--catalogs", default="1e5,1e6", help="comma-separated catalog sizes (items)")
    parser.add_argument("--batches", default="64,256,1024", help="comma-separated batch sizes (queries per call)")
    parser.add_argument("--beams", default="10,50,200", help="comma-separated beam widths")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (best reported)")
    parser.add_argument(
        "--max-cache-gb", type=float, default=6.0,
        help="skip methods whose estimated peak exceeds this (per-beam and shared-prefix cache apart)",
    )  # fmt: skip
    parser.add_argument(
        "--host-trie-max-rows", type=int, default=12800, help="run the host trie only up to batch*beams rows"
    )
    parser.add_argument("--skip-nvidia", action="store_true", help="do not time NVIDIA's published shape")
    parser.add_argument("--nvidia-hidden", type=int, default=4096, help="SwiGLU width of the NVIDIA shape")
    parser.add_argument("--nvidia-kv-heads", type=int, default=8, help="KV heads of the NVIDIA shape (8 or 16)")
    parser.add_argument("--nvidia-repeats", type=int, default=1, help="timed calls of the NVIDIA shape")
    parser.add_argument(
        "--nvidia-max-gb", type=float, default=12.0, help="largest estimated peak of an NVIDIA-shape run (GB)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        catalogs, batches, beams, repeats, skip_nvidia = [10_000], [64], [10, 50], min(args.repeats, 3), True
    else:
        catalogs, batches, beams = _ints(args.catalogs), _ints(args.batches), _ints(args.beams)
        repeats, skip_nvidia = args.repeats, args.skip_nvidia
    wall = time.perf_counter()
    rows, corpora, load = [], [], {}
    corpus = None
    for items in sorted(catalogs):
        corpus = None
        gc.collect()
        corpus = build_corpus(items, args.seed)
        model, params = retriever_model(corpus.catalog.layout.vocab_size, args.seed)
        for batch in batches:
            queries = make_queries(corpus, batch, args.seed + 1)
            for k in beams:
                est = estimate_shared_gb(model.config, batch, k, PROMPT_WIDTH)
                est_per_beam = estimate_gb(model.config, batch, k, CAPACITY)
                row = {"items": items, "batch": batch, "beams": k, "est_gb": est, "est_gb_per_beam": est_per_beam}
                if est > args.max_cache_gb:
                    row["status"] = f"skipped: est {est:.1f} GB > --max-cache-gb {args.max_cache_gb:g}"
                    rows.append(row)
                    print(f"[{items:.0e} items, batch {batch}, beams {k}] {row['status']}", flush=True)
                    continue
                per_beam = est_per_beam <= args.max_cache_gb
                with_host = per_beam and batch * k <= args.host_trie_max_rows
                start = time.perf_counter()
                row |= run_case(model, params, corpus, queries, k, repeats, with_host, per_beam=per_beam)
                if not per_beam:
                    row["status"] = (
                        f"ok (shared-prefix cache only: per-beam est {est_per_beam:.1f} GB > --max-cache-gb "
                        f"{args.max_cache_gb:g})"
                    )
                else:
                    row["status"] = "ok" if with_host else "ok (no host trie: rows > --host-trie-max-rows)"
                row["wall_s"] = time.perf_counter() - start
                row["load_1min"] = os.getloadavg()[0]
                add_ratios(row)
                rows.append(row)
                title = f"{items:.0e} items, batch {batch}, beams {k}"
                cells = table_row(row)
                columns = [c for c in COLUMNS if c in cells]
                print_table([cells], columns, title=f"{title} ({row['wall_s']:.1f} s, load {row['load_1min']:.2f})")
            del queries
        corpora.append(corpus.summary())
    print_table(corpora, title="catalogs (build seconds; index MB on device)")
    print_table([table_row(r) for r in rows], COLUMNS, title="queries/s (best of repeats), ratios, compile s")
    goals = goals_of(rows)
    print("\n== goals (measured, met or not)")
    for name, goal in goals.items():
        verdict = "MET" if goal["met"] else "NOT MET"
        failing = f"; failing {goal['failing']}" if goal["failing"] else ""
        print(f"  {name} >= {goal['goal']:g}x: {verdict}; worst {goal['worst']:.3g} at {goal['worst_at']} "
              f"({goal['settings']} settings){failing}")  # fmt: skip
    nvidia = None
    if skip_nvidia:
        print("\n== NVIDIA shape: skipped" + (" (--quick)" if args.quick else " (--skip-nvidia)"))
    else:
        config = nvidia_config(args.nvidia_hidden, args.nvidia_kv_heads)
        nvidia = run_nvidia(config, corpus, max_gb=args.nvidia_max_gb, repeats=args.nvidia_repeats, seed=args.seed)
        flat = {k: v for k, v in nvidia.items() if not isinstance(v, dict)}
        print_table([flat], title="NVIDIA SID-GR shape (random weights, shared-prefix cache)")
        if "compare" in nvidia:
            print_table([nvidia["compare"]], title="NVIDIA model: shared-prefix vs per-beam cache (same program)")
    load["end"] = os.getloadavg()[0]
    wall_s = time.perf_counter() - wall
    print(f"\nwall {wall_s:.1f} s")
    payload = {
        "settings": {"catalogs": catalogs, "batches": batches, "beams": beams, "repeats": repeats,
                     "max_cache_gb": args.max_cache_gb, "nvidia_max_gb": args.nvidia_max_gb,
                     "host_trie_max_rows": args.host_trie_max_rows,
                     "quick": args.quick, "timed": "compiled programs only (host prep excluded for all methods)"},
        "catalogs": corpora, "rows": rows, "goals": goals, "nvidia": nvidia, "wall_s": wall_s, "load_1min": load,
    }  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
