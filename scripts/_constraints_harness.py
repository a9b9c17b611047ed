"""The measuring half of scripts/bench_constraints.py: the random-logits model, the timing of
each method in one setting, the mask-kernel measurement and the interleaved growth runs.

The CLI, the settings it sweeps, the tables, goals, JSON and plot are in bench_constraints.py;
this module prints nothing. Every decode is the library's
:func:`decoding.beam_search.beam_search` (batch ``BATCH``, ``BEAMS`` beams, L steps) of
:class:`RandomLogitsModel`, whose logits are a fixed random function of (step, beam), with the
method as its ``constraint``: the STATIC ``TrieIndex`` itself (the sparse path), and STATIC's
dense mask (:class:`baselines.StaticMask`) and every baseline through the dense path;
``constraint=None`` is the unconstrained decode. :func:`run_setting` builds every method at one
(items, vocab, depth) and returns its table rows (:func:`finalize_rows` sets reference, ratio and
overhead per step); :func:`growth_runs` times STATIC at two item counts against the
unconstrained decode, interleaved, through both paths. :func:`call_overhead` times what the
public ``beam_search`` call adds over its jitted program.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import compile_timed, measure_interleaved, time_runs  # noqa: E402
from baselines import StaticMask, build_cpu_trie, build_hash_bitmap, build_ppv  # noqa: E402

import constraints  # noqa: E402
from decoding.beam_helpers import TopBeams  # noqa: E402
from decoding.beam_search import CORE, _dense_jit, _sparse_jit, beam_search, prepare_search  # noqa: E402

BATCH, BEAMS = 2, 70
CACHE_CAPACITY = 32  # the random-logits model's cache holds lengths only; any depth < 32 fits
PPV_WINDOW = 16  # items sampled per prefix range by approximate PPV
CPU_TRIE_MAX_ITEMS = 100_000  # the dict-of-dicts trie is built only up to this many items
SLOW_KERNEL_REPEATS = 3  # best-of for the ms-scale kernels (CPU trie, exact PPV)


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


def beam_search_runner(vocab, depth, seed):
    """``run(constraint)``: :func:`decoding.beam_search.beam_search` of the random-logits model
    (batch ``BATCH``, ``BEAMS`` beams, one prompt token, ``length_penalty=0``); ``None`` runs
    it unconstrained for ``depth`` tokens. Step t of beam slot j reads ``params[t, row * BEAMS + j]``
    (float32 [depth, BATCH * BEAMS, vocab], normal with scale 3, from ``seed``)."""
    rng = np.random.default_rng(seed)
    params = jnp.asarray(rng.normal(size=(depth, BATCH * BEAMS, vocab)) * 3, jnp.float32)
    cache = StepCache(lengths=jnp.zeros((BATCH,), jnp.int32), capacity=CACHE_CAPACITY)
    prompts, lengths = np.zeros((BATCH, 1), np.int32), np.ones((BATCH,), np.int32)

    def run(constraint):
        width = dict(max_new_tokens=depth) if constraint is None else dict(constraint=constraint)
        return beam_search(
            RandomLogitsModel(), params, cache, prompts, lengths, num_beams=BEAMS, length_penalty=0.0, **width
        )

    return run


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

    sample: int32 [batch, beams, L] items; the states are their prefixes of each length < L, in
    the method's own state type; exact_masks: STATIC's masks at the same prefixes.
    """
    states = [_walk(method, sample, jnp.int32(d)) for d in range(sample.shape[-1])]
    compiled, _ = compile_timed(_mask, method, states[0])
    micros, found, missed_total, false_pos = [], 0, 0, 0
    for state, exact in zip(states, exact_masks):
        micros.append(time_runs(compiled, method, state, warmup=2, repeats=repeats).min_s * 1e6)
        mask = np.asarray(compiled(method, state))
        found += int((mask & exact).sum())
        missed_total += int(exact.sum())
        false_pos += int((mask & ~exact).sum())
    return {
        "kernel_us": float(np.mean(micros)),
        "kernel_us_per_depth": [float(m) for m in micros],
        "mask_recall": found / missed_total,
        "fp_per_state": false_pos / (len(states) * BATCH * BEAMS),
    }


def _sparse_kernel_stats(index, sample, repeats):
    """Warm us (best of ``repeats``) of ``constraints.candidates`` per depth on [batch, beams]
    states at the sample items' prefixes, compiled ahead of time like the mask kernels."""
    micros = []
    for depth in range(sample.shape[-1]):
        state = _walk(index, sample, jnp.int32(depth))
        compiled, _ = compile_timed(jax.jit(lambda ix, s, d=depth: constraints.candidates(ix, s, d)), index, state)
        micros.append(time_runs(compiled, index, state, warmup=2, repeats=repeats).min_s * 1e6)
    return {"kernel_us": float(np.mean(micros)), "kernel_us_per_depth": [float(m) for m in micros]}


def _valid(index, out):
    """Fraction of the output beams that are items (and that beam search calls valid)."""
    return float((np.asarray(_contains(index, out.sequences)) & np.asarray(out.valid)).mean())


def run_setting(label, num_items, vocab, depth, repeats, kernel_repeats, with_ppv_exact=True, with_cpu_trie=True):
    """All methods at one (items, vocab, depth); returns (table rows, the STATIC index).

    Every method is a ``constraint=`` of the same :func:`beam_search_runner`, timed alternately
    with the unconstrained decode (:func:`_bench_common.measure_interleaved`: first call apart,
    best of ``repeats`` warm calls). The CPU trie runs only if ``with_cpu_trie`` and
    ``num_items <= CPU_TRIE_MAX_ITEMS``."""
    jax.clear_caches()  # every first call of the setting compiles: compile_s is a real compile
    rng = np.random.default_rng(0)
    items = rng.integers(0, vocab, (num_items, depth), dtype=np.int32)
    sample = jnp.asarray(items[rng.integers(0, num_items, BATCH * BEAMS)].reshape(BATCH, BEAMS, depth))
    base = {"setting": label, "items": num_items, "vocab": vocab, "L": depth}

    index, static_build_s, _ = _timed_build(lambda: constraints.build_fixed_length_index(items, vocab))
    exact_masks = [np.asarray(_mask(index, _walk(index, sample, jnp.int32(d)))) for d in range(depth)]
    run = beam_search_runner(vocab, depth, seed=1)
    start = time.perf_counter()
    free_out = jax.block_until_ready(run(None))
    free_first_s = time.perf_counter() - start
    free_seconds = []

    def decode(method):
        """Decode columns of ``method``, timed alternately with the unconstrained decode."""
        cases = {"method": (lambda: run(method), tuple), "free": (lambda: run(None), tuple)}
        timed, free = measure_interleaved(cases, repeats).values()
        free_seconds.extend(free.runs.seconds)
        return {
            "decode_ms": timed.runs.min_s * 1e3,
            "reference_ms": free.runs.min_s * 1e3,
            "compile_s": timed.compile_s,
            "first_call_s": timed.first_s,
            "valid": _valid(index, timed.output),
        }

    ppv, ppv_build_s, _ = _timed_build(lambda: build_ppv(items, vocab))
    # (name, build, build seconds if already known, kernel repeats)
    methods = [("STATIC (sparse)", lambda: index, static_build_s, kernel_repeats)]
    methods.append(("STATIC (dense mask)", lambda: StaticMask(index), static_build_s, kernel_repeats))
    if with_ppv_exact:
        methods.append(("PPV exact", lambda: ppv, ppv_build_s, SLOW_KERNEL_REPEATS))
    methods.append((f"PPV sampled ({PPV_WINDOW})", lambda: ppv.approximate(PPV_WINDOW), ppv_build_s, kernel_repeats))
    methods.append(("Hash bitmap", lambda: build_hash_bitmap(items, vocab), None, kernel_repeats))
    if with_cpu_trie and num_items <= CPU_TRIE_MAX_ITEMS:
        methods.append(("CPU trie", lambda: build_cpu_trie(items, vocab), None, SLOW_KERNEL_REPEATS))
    rows = []
    for name, build, known_build_s, method_kernel_repeats in methods:
        method, build_s, rss = _timed_build(build)
        # Device arrays; the CPU trie's host memory: resident growth while building.
        nbytes = rss if name == "CPU trie" else constraints.index_nbytes(index) if method is index else method.nbytes()
        row = dict(base, method=name, **decode(method))
        row.update(build_s=known_build_s if known_build_s is not None else build_s, mb_per_1m_items=nbytes / num_items)
        if method is index:
            row.update(_sparse_kernel_stats(index, sample, method_kernel_repeats))
        else:
            row.update(_kernel_stats(method, sample, exact_masks, method_kernel_repeats))
        rows.append(row)
        del method
    del ppv

    free_row = dict(
        base,
        method="Unconstrained",
        reference_ms=min(free_seconds) * 1e3,
        compile_s=max(free_first_s - statistics.median(free_seconds), 0.0),
        first_call_s=free_first_s,
        valid=float(np.asarray(_contains(index, free_out.sequences)).mean()),
    )
    rows.insert(0, free_row)
    finalize_rows(rows, depth)
    return rows, index


def growth_runs(small, large, rounds):
    """STATIC's decode time at two item counts against the unconstrained decode, all timed in
    one interleaved round-robin (best of ``rounds`` each), through both paths of the same
    :func:`beam_search_runner`.

    small, large: TrieIndex with the same vocab and depth. Dense path: ``constraint=StaticMask(index)``;
    sparse path: ``constraint=index``; both against ``constraint=None``. Returns one row per path.
    """
    vocab, depth = small.vocab_size, small.depth
    run = beam_search_runner(vocab, depth, seed=2)
    constraint = {
        "free": None,
        "dense small": StaticMask(small),
        "dense large": StaticMask(large),
        "sparse small": small,
        "sparse large": large,
    }
    cases = {name: (lambda c=c: run(c), tuple) for name, c in constraint.items()}
    best_ms = {name: m.runs.min_s * 1e3 for name, m in measure_interleaved(cases, repeats=rounds).items()}
    free = best_ms["free"]
    rows = []
    for path, passed in (("dense", "StaticMask(index)"), ("sparse", "index")):
        at_small, at_large = best_ms[f"{path} small"], best_ms[f"{path} large"]
        over_small, over_large = (at_small - free) / depth, (at_large - free) / depth
        rows.append(
            {
                "path": path,
                "constraint": passed,
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
    """Sets every row's reference to the best unconstrained run of the setting (over all the runs
    timed alongside its methods; ``rows[0]`` is the Unconstrained row and decodes in that time),
    then ratio and overhead per step."""
    best = min(row["reference_ms"] for row in rows)
    for row in rows:
        row["reference_ms"] = best
    rows[0]["decode_ms"] = best
    for row in rows:
        row["ratio"] = row["decode_ms"] / row["reference_ms"]
        row["overhead_ms_per_step"] = (row["decode_ms"] - row["reference_ms"]) / depth


def call_overhead(index, vocab, depth, calls=300):
    """What a public :func:`decoding.beam_search.beam_search` call costs beyond its jitted
    program, on both paths (the STATIC ``TrieIndex``: sparse; ``None``: the dense
    unconstrained loop). Per call, interleaved and blocking: ``public_ms`` (the whole public
    call), ``program_ms`` (the compiled program called with the same arguments already
    prepared), ``prepare_ms`` (the host-side checks and preparation alone,
    :func:`decoding.beam_search.prepare_search`). Medians over ``calls`` calls;
    ``overhead_ms = public_ms - program_ms``."""
    rng = np.random.default_rng(3)
    params = jnp.asarray(rng.normal(size=(depth, BATCH * BEAMS, vocab)) * 3, jnp.float32)
    cache = StepCache(lengths=jnp.zeros((BATCH,), jnp.int32), capacity=CACHE_CAPACITY)
    prompts, lengths = np.zeros((BATCH, 1), np.int32), np.ones((BATCH,), np.int32)
    model = RandomLogitsModel()
    rows = []
    for path, constraint in (("sparse (STATIC)", index), ("dense (unconstrained)", None)):
        width = depth if constraint is None else None
        options = dict(max_new_tokens=width, constraint=constraint, length_penalty=0.0)

        def public():
            return beam_search(model, params, cache, prompts, lengths, num_beams=BEAMS, **options)

        def prepare():
            return prepare_search(
                "beam_search", CORE, model, params, cache, prompts, lengths, selector=TopBeams(), layered_ok=True,
                max_new_tokens=width, constraint=constraint, length_penalty=0.0, eos_ids=(), pad_id=0,
                vocab_size=None, min_bucket=16,
            )

        prepared, settings = prepare()
        if constraint is None:
            args = (params, cache, prepared.inputs, settings)
            program = functools.partial(_dense_jit, model, BEAMS)
        else:
            args = (params, cache, prepared.inputs, settings.constraint, settings.alpha)
            program = functools.partial(_sparse_jit, model, BEAMS)
        jax.block_until_ready((public(), program(*args)))  # compiled once, shared
        times = {"public": [], "program": []}
        for _ in range(calls):
            for name, call in (("public", public), ("program", lambda: program(*args))):
                start = time.perf_counter()
                jax.block_until_ready(call())
                times[name].append(time.perf_counter() - start)
        row = {"path": path, "vocab": vocab, "depth": depth, "batch": BATCH, "beams": BEAMS}
        row |= {f"{name}_ms": statistics.median(values) * 1e3 for name, values in times.items()}
        row["overhead_ms"] = row["public_ms"] - row["program_ms"]
        # Back to back, no device work between calls (right after a blocking call the runtime's
        # worker threads still hold the cores and slow the host).
        start = time.perf_counter()
        for _ in range(calls):
            prepare()
        row["prepare_ms"] = (time.perf_counter() - start) / calls * 1e3
        rows.append(row)
    return rows
