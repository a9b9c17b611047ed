"""The measuring half of scripts/bench_constraints.py: the random-logits model, the timing of
each method in one setting, the mask-kernel measurement and the interleaved growth runs.

The CLI, the settings it sweeps, the tables, goals, JSON and plot are in bench_constraints.py;
this module prints nothing. Every decode is beam search (batch ``BATCH``, ``BEAMS`` beams, L
steps) over logits that are a fixed random function of (step, beam): :func:`random_logits` for
the dense harness loop (:func:`baselines.dense_beam_search`), :class:`RandomLogitsModel`
for :func:`decoding.beam_search.beam_search`. :func:`run_setting` builds every method at one
(items, vocab, depth) and returns its table rows (:func:`finalize_rows` sets reference, ratio and
overhead per step); :func:`growth_runs` times STATIC at two item counts against the unconstrained
decode, interleaved, on the dense and the sparse path.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import compile_timed, measure_interleaved, time_runs  # noqa: E402

import constraints  # noqa: E402
from baselines import (  # noqa: E402
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
