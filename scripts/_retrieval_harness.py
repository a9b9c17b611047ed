"""The measuring half of scripts/bench_retrieval.py: the random catalog, the retriever model,
the five decodes of one (catalog, batch, beams) setting timed in one harness, the per-case
memory estimates and the NVIDIA-shape run.

The CLI (settings swept, tables, goals, JSON) is in bench_retrieval.py; this module prints
nothing. Every method decodes the same prompts (BOS + ``HISTORY`` random catalog items' tokens,
81 tokens) with the same model and params, and every method is timed as its compiled
program(s) only: prompts, caches, the per-batch :class:`constraints.ItemFilter` and the host
tries are built before timing, and the public entry points' host-side validation is not run in
the timed calls (for every method alike). The host trie's per-step host work (prefix download,
trie walk, mask upload) is the point of that baseline, so it is timed.

Two caches. The job (:func:`retrieval.search.constrained_top_k`) decodes with the shared-prefix
:class:`models.BeamKVCache` (the history's keys/values once per query, 81 positions; 4 ID
positions per beam row); the per-beam :class:`models.KVCache` (capacity 85 per beam row, the
history repeated per beam) is what the other methods use and what the job used before.

Methods (``METHODS``):

* ``unconstrained``: :func:`decoding.beam_search.beam_search`'s dense program (``_dense_jit``
  with the ``CallInputs`` and ``BeamSettings`` beam_search builds: no EOS,
  ``length_penalty=0``, width 4), per-beam
  cache (as :func:`retrieval.search.unconstrained_top_k` runs it).
* ``constrained (trie)``: the job's program (:data:`retrieval.search._constrained_jit`, the sparse
  beam path) with a plain :class:`constraints.TrieIndex` and the shared-prefix cache.
* ``constrained + history filter``: the same program and cache with
  ``ItemFilter.for_rows(allowed.tables, allowed.index, excluded=<history leaf ranks>,
  max_excluded=32)`` as the job builds it (exclusion width: the power of two >= max_history).
* ``trie, per-beam cache``: ``constrained (trie)`` with the per-beam cache (the comparison:
  same program; :func:`compare_top_k` checks the outputs agree: ``shared_same_rows``, the
  fraction of queries with the same top-10, and ``shared_common_max_diff``, the largest
  log-prob difference of a hypothesis both return. Attention sums in a different order with
  the shared prefix, so a near-tie (~1e-6) at a beam boundary can keep a different beam at an
  intermediate depth: at 1e6 items, batch 256 x 50 beams, one query of 256 returns a different
  (there better) 4th item, its depth-2 51st and 50th candidates 4e-6 apart).
* ``host trie`` (per-beam cache): the ``prefix_allowed_tokens_fn`` pattern (GRID, OpenP5,
  LC-Rec): a Python loop over the 4 steps; each step downloads the beams' prefixes, walks a
  dict-of-dicts trie on the host for every beam (:class:`baselines.HostTrie`, in
  ``scripts/baselines/``), uploads the bool mask ``[batch, beams, vocab]`` and runs one jitted
  beam step with it (:func:`host_trie_search`). As in Hugging Face beam search, the prefilled
  rows are repeated to ``batch * beams`` before the first step with only beam 0 live; unlike
  it, dead beams are not looked up and the mask is built on the host and uploaded once per step
  (not written per beam on the device), so this is a favourable version of the pattern. Its
  ranking is the sparse path's, so its top-K equals ``constrained (trie)``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_common import compile_timed, measure_interleaved  # noqa: E402
from baselines import HostTrie, build_cpu_trie  # noqa: E402

from constraints import ItemFilter, build_fixed_length_index, index_nbytes  # noqa: E402
from constraints.protocol import Unconstrained  # noqa: E402
from decoding.beam_helpers import (  # noqa: E402
    TopBeams,
    flatten_beams,
    gather_beams,
    parent_rows,
    take_candidates,
    top_beams,
    unflatten_beams,
)
from decoding.beam_search import BeamSettings, _dense_jit  # noqa: E402
from decoding.inputs import CallInputs  # noqa: E402
from decoding.samplers import Greedy  # noqa: E402
from decoding.cache_rows import gather_rows, repeat_rows  # noqa: E402
from decoding.prefill import prefill  # noqa: E402
from models import Decoder, LlamaConfig, beam_cache_nbytes, init_beam_cache, init_cache, init_params  # noqa: E402
from retrieval.catalog import Catalog, TokenLayout  # noqa: E402
from retrieval.search import AllowedItems, _constrained_jit  # noqa: E402
from retrieval.training import retriever_config  # noqa: E402

LEVELS = (256, 256, 256, 256)  # 4 levels x 256 codes: vocab 2 + 1024
DEPTH = len(LEVELS)
HISTORY = 20  # items per prompt: BOS + 20 * 4 = 81 tokens
PROMPT_WIDTH = 1 + HISTORY * DEPTH
CAPACITY = PROMPT_WIDTH + DEPTH  # 85: a per-beam cache row
SUFFIX = DEPTH  # the shared-prefix cache's positions per beam row (the job's: the catalog depth)
EXCLUDED_WIDTH = 32  # the job's exclusion width for 20-item histories (power of two >= max_history)
METHODS = (
    "unconstrained", "constrained (trie)", "constrained + history filter", "trie, per-beam cache", "host trie",
)  # fmt: skip
PER_BEAM_METHODS = ("unconstrained", "trie, per-beam cache", "host trie")  # the rest: shared-prefix cache


# ---------------------------------------------------------------------------------------------
# Catalog, model, queries


def random_catalog(num_items: int, seed: int = 0) -> Catalog:
    """``num_items`` random unique 4-level semantic IDs (256 codes per level)."""
    rng = np.random.default_rng(seed)
    space = int(np.prod(np.asarray(LEVELS, np.float64)))
    keys = np.unique(rng.integers(0, space, int(num_items * 1.05) + 16, dtype=np.int64))
    while len(keys) < num_items:  # collisions are rare (1e6 of 4.3e9): top up
        keys = np.unique(np.concatenate([keys, rng.integers(0, space, num_items, dtype=np.int64)]))
    keys = rng.permutation(keys)[:num_items]
    codes = np.empty((num_items, DEPTH), np.int32)
    for level in range(DEPTH - 1, -1, -1):
        codes[:, level] = keys % LEVELS[level]
        keys = keys // LEVELS[level]
    return Catalog(np.arange(num_items).astype(str), codes, TokenLayout(LEVELS))


@dataclasses.dataclass
class Corpus:
    """One catalog with everything the methods need (built once, reused by every setting)."""

    catalog: Catalog
    allowed: AllowedItems
    index_build_s: float  # constraints.build_fixed_length_index alone
    allowed_build_s: float  # AllowedItems.build: the index, leaf ranks, filter tables
    index_mb: float  # device bytes of the TrieIndex
    host: HostTrie | None = None  # built on first use (build_host_trie)
    host_build_s: float | None = None

    def build_host_trie(self) -> HostTrie:
        if self.host is None:
            start = time.perf_counter()
            self.host = build_cpu_trie(self.catalog.tokens, self.catalog.layout.vocab_size).host
            self.host_build_s = time.perf_counter() - start
        return self.host

    def summary(self) -> dict[str, Any]:
        return {
            "items": self.catalog.num_items,
            "index_build_s": self.index_build_s,
            "allowed_build_s": self.allowed_build_s,
            "index_mb": self.index_mb,
            "host_trie_build_s": self.host_build_s,
            "max_branching": list(self.allowed.index.max_branching),
        }


def build_corpus(num_items: int, seed: int = 0) -> Corpus:
    catalog = random_catalog(num_items, seed)
    start = time.perf_counter()
    index = jax.block_until_ready(build_fixed_length_index(catalog.tokens, catalog.layout.vocab_size))
    index_build_s = time.perf_counter() - start
    del index
    start = time.perf_counter()
    allowed = jax.block_until_ready(AllowedItems.build(catalog))
    allowed_build_s = time.perf_counter() - start
    return Corpus(catalog, allowed, index_build_s, allowed_build_s, index_nbytes(allowed.index) / 1e6)


def retriever_model(vocab_size: int, seed: int = 0) -> tuple[Decoder, Any]:
    """The job's default model: ``retriever_config(vocab, "tiny")`` with random params."""
    model = Decoder(retriever_config(vocab_size, "tiny"))
    return model, init_params(model.config, jax.random.key(seed))


@dataclasses.dataclass(frozen=True)
class Queries:
    """One device batch of queries, prepared on the host (outside every timed call)."""

    prompts: jax.Array  # int32 [batch, PROMPT_WIDTH]  BOS + the history's tokens
    lengths: jax.Array  # int32 [batch]
    history: np.ndarray  # int32 [batch, HISTORY]  catalog rows (all distinct per query)
    item_filter: ItemFilter  # the batch's history exclusion, as the job builds it
    filter_prep_ms: float  # host time of ItemFilter.for_rows for this batch


def make_queries(corpus: Corpus, batch: int, seed: int = 1) -> Queries:
    rng = np.random.default_rng(seed)
    n = corpus.catalog.num_items
    history = np.stack([rng.choice(n, HISTORY, replace=False) for _ in range(batch)]).astype(np.int32)
    prompts, lengths = corpus.catalog.prompts(history)
    excluded = np.full((batch, EXCLUDED_WIDTH), -1, np.int32)
    excluded[:, :HISTORY] = corpus.allowed.leaf_of_row[history]
    start = time.perf_counter()
    item_filter = jax.block_until_ready(
        ItemFilter.for_rows(
            corpus.allowed.tables, corpus.allowed.index, excluded=excluded, max_excluded=EXCLUDED_WIDTH
        )
    )
    prep_ms = (time.perf_counter() - start) * 1e3
    return Queries(jnp.asarray(prompts), jnp.asarray(lengths), history, item_filter, prep_ms)


# ---------------------------------------------------------------------------------------------
# Memory


def kv_bytes_per_row(config: LlamaConfig, capacity: int) -> int:
    """Bytes of one cache row (keys and values of every layer)."""
    return 2 * config.n_layers * config.n_kv_heads * capacity * config.head_dim * config.dtype.itemsize


def estimate_gb(config: LlamaConfig, batch: int, beams: int, capacity: int) -> float:
    """Peak device bytes of one beam search call with the per-beam cache, estimated before
    running it (GB).

    ``2 x`` the ``batch * beams``-row KV cache (the cache a step reads and its copy gathered by
    parent) plus ``3 x`` the ``[rows, vocab]`` float32 logits (logits, log-softmax, candidate
    scores) plus the parameters. Calibrated on XLA's own ``memory_analysis`` of the compiled
    programs (arguments + outputs + temporaries; ``xla_gb`` in the rows): at 64 x 50 rows of
    the tiny model it says 0.28 GB (dense) and 0.21 GB (sparse) where this says 0.32 GB.
    """
    rows = batch * beams
    params = _param_count(config) * config.param_dtype.itemsize
    return (2 * rows * kv_bytes_per_row(config, capacity) + 3 * rows * config.vocab_size * 4 + params) / 1e9


def estimate_shared_gb(config: LlamaConfig, batch: int, beams: int, prefix: int, suffix: int = SUFFIX) -> float:
    """Peak device bytes of one constrained search with the shared-prefix cache, estimated
    before running it (GB).

    ``2 x`` the prefix (``batch`` rows of ``prefix`` positions: the argument and the prefilled
    copy) + ``3 x`` the suffix (``batch * beams`` rows of ``suffix``: argument, written, gathered)
    + ``3 x`` the ``[rows, vocab]`` logits + the params + the prefill's largest temporaries
    (``batch x prefix`` tokens x (``n_heads x prefix`` attention scores + ``2 x hidden_dim``
    SwiGLU + ``vocab`` logits) float32), which dominate at long histories. Calibrated on XLA's
    ``memory_analysis`` of the job's program (``xla_gb``): tiny model, 81-token prompts, 256 x 200
    rows: XLA 0.61 GB, this 1.1 GB; 1024 x 200: 2.4 vs 4.4 GB; NVIDIA's shape (16 x 200,
    2,048-token history): 8.6 vs 9.5 GB.
    """
    rows = batch * beams
    position = kv_bytes_per_row(config, 1)
    prefill = batch * prefix * (config.n_heads * prefix + 2 * config.hidden_dim + config.vocab_size) * 4
    params = _param_count(config) * config.param_dtype.itemsize
    total = 2 * batch * prefix * position + 3 * rows * suffix * position + 3 * rows * config.vocab_size * 4
    return (total + params + prefill) / 1e9


def _param_count(config: LlamaConfig) -> int:
    attention = config.dim * config.head_dim * (2 * config.n_heads + 2 * config.n_kv_heads)
    mlp = 3 * config.dim * config.hidden_dim
    embed = config.vocab_size * config.dim * (1 if config.tie_embeddings else 2)
    return config.n_layers * (attention + mlp + 2 * config.dim) + embed + config.dim


def _xla_gb(compiled: Any) -> float | None:
    """XLA's arguments + outputs + temporaries of a compiled program, GB (None if unknown)."""
    try:
        stats = compiled.memory_analysis()
        return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes) / 1e9
    except Exception:  # not every backend reports it
        return None


# ---------------------------------------------------------------------------------------------
# The host-trie baseline


@functools.partial(jax.jit, static_argnums=(0, 1))
def _host_prefill(model, num_beams, params, cache, prompts, lengths):
    """Prefill, then every row repeated ``num_beams`` times with only beam 0 live, so every
    depth's step has the same shapes: log-probs float32 [batch, beams, vocab] of the first ID
    token, live log-probs float32 [batch, beams] (0, then -inf), cache (batch * beams rows)."""
    logits, cache = prefill(model, params, cache, prompts, lengths)
    log_probs = jnp.repeat(jax.nn.log_softmax(logits, axis=-1)[:, None, :], num_beams, axis=1)
    live = jnp.full((prompts.shape[0], num_beams), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    return log_probs, live, repeat_rows(cache, num_beams)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _host_step(
    model: Any,
    num_beams: int,
    last: bool,
    params: Any,
    cache: Any,  # batch * beams rows
    log_probs: jax.Array,  # float32 [batch, beams, vocab]
    live: jax.Array,  # float32 [batch, beams]  -inf for dead beams
    tokens: jax.Array,  # int32 [batch, beams, depth]
    mask: jax.Array,  # bool [batch, beams, vocab]  from the host trie
    depth: jax.Array,  # int32 []  tokens each beam holds
):
    """One beam step with a host-made mask: the best ``num_beams`` (beam, token) pairs by summed
    log-prob (ties to the lower beam, then token, as on the sparse path, which at depth 0 ranks
    the one root beam's candidates); unless ``last``, the cache gathered by parent and the
    model's log-probs of the next token.

    Returns ``(live [batch, num_beams], tokens [batch, num_beams, depth], log_probs, cache)``
    (the last two ``None`` when ``last``).
    """
    scores = live[..., None] + jnp.where(mask, log_probs, -jnp.inf)
    parent, token = top_beams(scores, num_beams)
    live = take_candidates(scores, parent, token)
    at = jnp.arange(tokens.shape[-1]) == depth
    tokens = jnp.where(at, token[..., None], gather_beams(tokens, parent))
    if last:
        return live, tokens, None, None
    cache = gather_rows(cache, parent_rows(parent, num_beams))
    rows = parent.size
    logits, cache = model(params, flatten_beams(token)[:, None], cache, jnp.ones((rows,), jnp.int32))
    log_probs = unflatten_beams(jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), num_beams)
    return live, tokens, log_probs, cache


def compile_host_trie(model, num_beams, params, cache, prompts, lengths):
    """The host-trie programs compiled ahead: ``(prefill, step, last step, seconds)``."""
    start = time.perf_counter()
    pre = _host_prefill.lower(model, num_beams, params, cache, prompts, lengths).compile()
    log_probs, live, cache_shape = jax.eval_shape(
        functools.partial(_host_prefill, model, num_beams), params, cache, prompts, lengths
    )
    tokens = jax.ShapeDtypeStruct(live.shape + (DEPTH,), jnp.int32)
    mask = jax.ShapeDtypeStruct(log_probs.shape, jnp.bool_)
    args = (params, cache_shape, log_probs, live, tokens, mask, jax.ShapeDtypeStruct((), jnp.int32))
    step = _host_step.lower(model, num_beams, False, *args).compile()
    last = _host_step.lower(model, num_beams, True, *args).compile()
    return pre, step, last, time.perf_counter() - start


def host_trie_search(pre, step, last, host: HostTrie, params, cache, prompts, lengths):
    """Beam search with a host-side trie: one device -> host -> device round trip per step.

    ``pre``, ``step``, ``last``: :func:`compile_host_trie`'s programs. Returns
    ``(log_probs float32 [batch, beams], tokens int32 [batch, beams, depth], host_s)`` (NumPy),
    best first; a beam with log-prob -inf names no item. ``host_s``: seconds of the host side
    (download, trie walk, mask upload), the device step waited for before each.
    """
    log_probs, live, cache = pre(params, cache, prompts, lengths)
    tokens = jnp.zeros(live.shape + (host.depth,), jnp.int32)
    host_s = 0.0
    for depth in range(host.depth):
        jax.block_until_ready((tokens, live))
        start = time.perf_counter()
        prefix, alive = np.asarray(tokens), np.isfinite(np.asarray(live))  # device -> host
        # Dead beams (beams 1.. before the first step) are not looked up: a length past the
        # trie's depth gives an empty row at once.
        mask = host.mask(prefix, np.where(alive, depth, host.depth + 1))  # bool [batch, beams, vocab]
        program = last if depth == host.depth - 1 else step
        mask = jax.block_until_ready(jnp.asarray(mask))  # host -> device
        host_s += time.perf_counter() - start
        live, tokens, log_probs, cache = program(params, cache, log_probs, live, tokens, mask, jnp.int32(depth))
    return np.asarray(live), np.asarray(tokens), host_s


# ---------------------------------------------------------------------------------------------
# One setting


def _unconstrained_args(prompts: np.ndarray, lengths: np.ndarray) -> tuple[CallInputs, BeamSettings]:
    """What :func:`decoding.beam_search` passes to its dense program for ``eos_ids=()``,
    ``length_penalty=0.0``, ``max_new_tokens=DEPTH`` and no constraint."""
    batch = int(prompts.shape[0])
    no_eos = np.zeros((0,), np.int32)
    inputs = CallInputs(
        prompts=prompts,
        prompt_lengths=lengths,
        limits=np.full((batch,), DEPTH, np.int32),
        eos_ids=no_eos,
        pad_id=np.int32(0),
        sampler=Greedy(),
        key=jax.random.key(0),
        width=DEPTH,
    )
    return inputs, BeamSettings(
        selector=TopBeams(), eos_ids=no_eos, alpha=np.zeros((batch,), np.float32), constraint=Unconstrained()
    )


def _check_outputs(catalog: Catalog, history: np.ndarray, tokens, ok, k: int) -> dict[str, Any]:
    """Validity of one method's top-``k``: tokens int [batch, beams, depth], ok bool [batch, beams]."""
    tokens, ok = np.asarray(tokens)[:, :k], np.asarray(ok)[:, :k]
    items = catalog.items_of_tokens(tokens)
    returned = int(ok.sum())
    in_history = (items[:, :, None] == history[:, None, :]).any(axis=2) & ok & (items >= 0)
    return {
        "returned": returned,
        "valid_items": float(((items >= 0) & ok).sum() / max(returned, 1)),  # fraction naming a catalog item
        "history_hits": int(in_history.sum()),  # results the query already had
    }


def run_case(
    model: Decoder,
    params: Any,
    corpus: Corpus,
    queries: Queries,
    num_beams: int,
    repeats: int,
    with_host_trie: bool,
    top_k: int = 10,
    per_beam: bool = True,
) -> dict[str, Any]:
    """Every method at one (catalog, batch, beams): compiled apart, then timed interleaved.

    ``per_beam=False`` runs only the shared-prefix methods (the per-beam cache would not fit;
    the host trie needs it too). Returns one row: best and median seconds per call and
    queries/s per method, compile seconds per method, XLA's memory estimate, the output checks
    (top-``min(top_k, beams)``), whether the host trie's top-K equals the sparse path's
    (``host_trie_matches``, against the sparse path with the same per-beam cache) and how the
    shared-prefix cache's top-K agrees with the per-beam cache's (:func:`compare_top_k`).
    """
    batch = int(queries.prompts.shape[0])
    shared = init_beam_cache(model.config, batch, num_beams, PROMPT_WIDTH, SUFFIX)
    trie = corpus.allowed.index
    runners: dict[str, tuple[Any, tuple]] = {}
    compile_s: dict[str, float] = {}
    xla_gb: dict[str, float | None] = {}

    def constrained(name: str, cache: Any, constraint: Any) -> None:
        args = (params, cache, queries.prompts, queries.lengths, constraint)
        c, compile_s[name] = compile_timed(_constrained_jit, model, num_beams, *args)
        runners[name], xla_gb[name] = (c, args), _xla_gb(c)

    constrained("constrained (trie)", shared, trie)
    constrained("constrained + history filter", shared, queries.item_filter)
    with_host_trie = with_host_trie and per_beam
    if per_beam:
        cache = init_cache(model.config, batch, CAPACITY)
        base = (params, cache, queries.prompts, queries.lengths)
        dense_args = (params, cache) + _unconstrained_args(np.asarray(queries.prompts), np.asarray(queries.lengths))
        c, compile_s["unconstrained"] = compile_timed(_dense_jit, model, num_beams, *dense_args)
        runners["unconstrained"], xla_gb["unconstrained"] = (c, dense_args), _xla_gb(c)
        constrained("trie, per-beam cache", cache, trie)
    if with_host_trie:
        host = corpus.build_host_trie()
        pre, step, last, compile_s["host trie"] = compile_host_trie(model, num_beams, *base)
        runners["host trie"] = (functools.partial(host_trie_search, pre, step, last, host), base)

    order = [m for m in METHODS if m in runners]
    cases = {name: (runners[name][0], lambda args=runners[name][1]: args) for name in order}
    measured = measure_interleaved(cases, repeats=repeats)

    k = min(top_k, num_beams)
    checks, outs = {}, {}
    for name in ("unconstrained", "constrained (trie)", "constrained + history filter", "trie, per-beam cache"):
        if name in measured:
            outs[name] = out = measured[name].output
            checks[name] = _check_outputs(corpus.catalog, queries.history, out.sequences, out.valid, k)
    row: dict[str, Any] = {"rows": batch * num_beams, "filter_prep_ms": queries.filter_prep_ms}
    row["kv_gb"] = beam_cache_nbytes(model.config, batch, num_beams, PROMPT_WIDTH, SUFFIX) / 1e9
    row["kv_gb_per_beam"] = batch * num_beams * kv_bytes_per_row(model.config, CAPACITY) / 1e9
    if "trie, per-beam cache" in outs:
        same_rows, common_diff = compare_top_k(outs["constrained (trie)"], outs["trie, per-beam cache"], k)
        row["shared_same_rows"], row["shared_common_max_diff"] = same_rows, common_diff
    if with_host_trie:
        live, tokens, host_s = measured["host trie"].output
        checks["host trie"] = _check_outputs(corpus.catalog, queries.history, tokens, np.isfinite(live), k)
        checks["host trie"]["host_side_ms"] = host_s * 1e3  # of the last timed call
        row["host_trie_matches"] = host_trie_matches(outs["trie, per-beam cache"], live, tokens, k)
    for name, m in measured.items():
        row[name] = {
            "best_s": m.runs.min_s,
            "median_s": m.runs.median_s,
            "qps": batch / m.runs.min_s,
            "qps_median": batch / m.runs.median_s,
            "compile_s": compile_s[name],
            "xla_gb": xla_gb.get(name),
            **checks[name],
        }
    return row


def compare_top_k(out: Any, reference: Any, k: int, atol: float = 1e-4) -> tuple[float, float]:
    """How two beam outputs' top-``k`` agree: the fraction of rows with the same valid flags and
    sequences in the same order and log-probs within ``atol``, and the largest log-prob
    difference of a hypothesis (a row's token sequence) both return (0.0 when none is shared)."""
    valid, ref_valid = np.asarray(out.valid)[:, :k], np.asarray(reference.valid)[:, :k]
    seqs, ref_seqs = np.asarray(out.sequences)[:, :k], np.asarray(reference.sequences)[:, :k]
    lps, ref_lps = np.asarray(out.log_probs)[:, :k], np.asarray(reference.log_probs)[:, :k]
    same, worst = 0, 0.0
    for row in range(valid.shape[0]):
        mine = {tuple(s): lp for s, lp, v in zip(seqs[row].tolist(), lps[row], valid[row]) if v}
        theirs = {tuple(s): lp for s, lp, v in zip(ref_seqs[row].tolist(), ref_lps[row], ref_valid[row]) if v}
        diffs = [abs(float(mine[s]) - float(theirs[s])) for s in mine.keys() & theirs.keys()]
        worst = max([worst] + diffs)
        ordered = np.array_equal(valid[row], ref_valid[row]) and list(mine) == list(theirs)
        same += int(ordered and all(d <= atol for d in diffs))
    return same / valid.shape[0], worst


def host_trie_matches(sparse_out: Any, live: np.ndarray, tokens: np.ndarray, k: int, atol: float = 1e-4) -> bool:
    """The host trie's top-``k`` equals the sparse path's: the same valid beams, the same items
    in the same order, the same log-probs (up to ``atol``: the two are different XLA programs)."""
    valid = np.asarray(sparse_out.valid)[:, :k]
    host_valid = np.isfinite(live)[:, :k]
    if not np.array_equal(valid, host_valid):
        return False
    same_tokens = np.where(valid[..., None], np.asarray(sparse_out.sequences)[:, :k] == tokens[:, :k], True).all()
    sparse_log_probs = np.where(valid, np.asarray(sparse_out.log_probs)[:, :k], 0)
    close = np.allclose(sparse_log_probs, np.where(valid, live[:, :k], 0), atol=atol)
    return bool(same_tokens and close)


# ---------------------------------------------------------------------------------------------
# NVIDIA's published shape


def nvidia_config(hidden_dim: int = 4096, n_kv_heads: int = 8) -> LlamaConfig:
    """SID-GR's published shape: 8 layers, hidden 1,024 (16 heads of 64), vocab 2 + 4 x 256.
    ``hidden_dim`` is the SwiGLU inner width (4,096 = 4 x dim by default; ~2,730 = 8/3 x dim is
    the Llama-style choice). float32 on CPU."""
    return LlamaConfig(
        vocab_size=TokenLayout(LEVELS).vocab_size, dim=1024, n_layers=8, n_heads=16, n_kv_heads=n_kv_heads,
        head_dim=64, hidden_dim=hidden_dim, tie_embeddings=True,
    )  # fmt: skip


def nvidia_shapes(
    config: LlamaConfig, batch: int, beams: int, history: int, max_gb: float, shared: bool = True
) -> tuple[int, int] | None:
    """The shape to run: the published one if its estimate fits ``max_gb``, else the largest
    that does of ``batch`` halved down to 1 with ``beams``, then batch 1 with 50 and 10 beams
    (same model and history); None if none fits. ``shared``: the shared-prefix cache's estimate
    (:func:`estimate_shared_gb`), else the per-beam cache's (:func:`estimate_gb`)."""
    halvings = [batch >> i for i in range(batch.bit_length()) if batch >> i >= 1]
    for b, k in [(b, beams) for b in halvings] + [(1, 50), (1, 10)]:
        est = estimate_shared_gb(config, b, k, history) if shared else estimate_gb(config, b, k, history + DEPTH)
        if k <= beams and est <= max_gb:
            return b, k
    return None


@functools.partial(jax.jit, static_argnums=0)
def _prefill_only(model, params, cache, prompts, lengths):
    return prefill(model, params, cache, prompts, lengths)


def _nvidia_prompts(corpus: Corpus, batch: int, history: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """BOS + ``history - 1`` ID tokens of random catalog items per row; every row full length."""
    rng = np.random.default_rng(seed)
    item_rows = rng.integers(0, corpus.catalog.num_items, (batch, -(-(history - 1) // DEPTH)))
    tokens = corpus.catalog.tokens[item_rows].reshape(batch, -1)[:, : history - 1]
    prompts = jnp.asarray(np.concatenate([np.ones((batch, 1), np.int32), tokens], axis=1))
    return prompts, jnp.full((batch,), history, jnp.int32)


def _valid_items(corpus: Corpus, out: Any) -> float:
    items = corpus.catalog.items_of_tokens(np.asarray(out.sequences))
    valid = np.asarray(out.valid)
    return float(((items >= 0) & valid).sum() / max(int(valid.sum()), 1))


def run_nvidia(
    config: LlamaConfig,
    corpus: Corpus,
    *,
    batch: int = 16,
    beams: int = 200,
    history: int = 2048,
    max_gb: float = 12.0,
    repeats: int = 1,
    seed: int = 0,
    compare: bool = True,
) -> dict[str, Any]:
    """Constrained beam search (the job's program and cache: plain trie, shared-prefix cache)
    at NVIDIA's shape with random weights, or at the largest scaled shape (:func:`nvidia_shapes`)
    when the published one's memory estimate exceeds ``max_gb``.

    The history is ``history`` random ID tokens (BOS + ``history - 1``; the catalog's items,
    4 tokens each). Times the whole search and the prefill alone (each compiled apart, one
    warm-up, best of ``repeats``). When scaled, ``est_ms_at_published_shape`` scales the
    measured time by batch (crude; an estimate, not a measurement). The per-beam cache's size
    and estimate at the published shape are reported (``published_kv_gb_per_beam``: ~215 GB);
    with ``compare``, both caches are also timed at the largest shape where the per-beam one
    fits ``max_gb`` (``compare``: same program, same prompts; :func:`compare_top_k` of the outputs).
    """
    capacity = history + DEPTH
    published = {"batch": batch, "beams": beams, "history": history}
    row: dict[str, Any] = {
        "config": {
            k: getattr(config, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim")
        },
        "published": published,
        "params_m": _param_count(config) / 1e6,
        "items": corpus.catalog.num_items,
        "cache": "shared prefix (models.BeamKVCache)",
        "published_est_gb": estimate_shared_gb(config, batch, beams, history),
        "published_kv_gb": beam_cache_nbytes(config, batch, beams, history, SUFFIX) / 1e9,
        "published_est_gb_per_beam": estimate_gb(config, batch, beams, capacity),
        "published_kv_gb_per_beam": batch * beams * kv_bytes_per_row(config, capacity) / 1e9,
    }
    shape = nvidia_shapes(config, batch, beams, history, max_gb)
    if shape is None:
        return row | {"status": f"skipped: no shape fits {max_gb:g} GB"}
    run_batch, run_beams = shape
    row |= {"batch": run_batch, "beams": run_beams, "history": history}
    row["est_gb"] = estimate_shared_gb(config, run_batch, run_beams, history)
    row["kv_gb"] = beam_cache_nbytes(config, run_batch, run_beams, history, SUFFIX) / 1e9
    scaled = shape != (batch, beams)
    row["status"] = f"scaled (the published shape's estimate exceeds {max_gb:g} GB)" if scaled else "published shape"
    model = Decoder(config)
    start = time.perf_counter()
    params = jax.block_until_ready(init_params(config, jax.random.key(seed)))
    row["init_s"] = time.perf_counter() - start
    prompts, lengths = _nvidia_prompts(corpus, run_batch, history, seed)
    cache = init_beam_cache(config, run_batch, run_beams, history, SUFFIX)
    index = corpus.allowed.index
    search, row["compile_s"] = compile_timed(_constrained_jit, model, run_beams, params, cache, prompts, lengths, index)
    pre, row["prefill_compile_s"] = compile_timed(_prefill_only, model, params, cache, prompts, lengths)
    row["xla_gb"] = _xla_gb(search)
    cases = {
        "search": (search, lambda: (params, cache, prompts, lengths, index)),
        "prefill": (pre, lambda: (params, cache, prompts, lengths)),
    }
    measured = measure_interleaved(cases, repeats=repeats)
    search_ms, prefill_ms = measured["search"].runs.min_s * 1e3, measured["prefill"].runs.min_s * 1e3
    row |= {
        "ms_per_batch": search_ms,
        "prefill_ms": prefill_ms,
        "id_steps_ms": search_ms - prefill_ms,
        "valid_items": _valid_items(corpus, measured["search"].output),
        "reference_ms_h100": 268.0,
    }
    if scaled:
        row["est_ms_at_published_shape"] = search_ms * batch / run_batch
    del measured, cases, search, pre, cache
    if compare:
        row["compare"] = _compare_caches(model, params, corpus, config, batch, beams, history, max_gb, repeats, seed)
    return row


def _compare_caches(model, params, corpus, config, batch, beams, history, max_gb, repeats, seed) -> dict[str, Any]:
    """The job's program with the shared-prefix and the per-beam cache at the largest shape
    where the per-beam cache's estimate fits ``max_gb``: ms per batch each, XLA's GB each, and
    whether their top-10 agree."""
    shape = nvidia_shapes(config, batch, beams, history, max_gb, shared=False)
    if shape is None:
        return {"status": f"skipped: the per-beam cache fits {max_gb:g} GB at no shape"}
    b, k = shape
    prompts, lengths = _nvidia_prompts(corpus, b, history, seed)
    index = corpus.allowed.index
    caches = {
        "shared": init_beam_cache(config, b, k, history, SUFFIX),
        "per_beam": init_cache(config, b, history + DEPTH),
    }
    result: dict[str, Any] = {"batch": b, "beams": k, "history": history}
    cases = {}
    for name, cache in caches.items():
        compiled, result[f"compile_s_{name}"] = compile_timed(
            _constrained_jit, model, k, params, cache, prompts, lengths, index
        )
        result[f"xla_gb_{name}"] = _xla_gb(compiled)
        cases[name] = (compiled, lambda cache=cache: (params, cache, prompts, lengths, index))
    measured = measure_interleaved(cases, repeats=repeats)
    for name in caches:
        result[f"ms_{name}"] = measured[name].runs.min_s * 1e3
    result["speedup"] = result["ms_per_beam"] / result["ms_shared"]
    result["same_rows"], result["common_max_diff"] = compare_top_k(
        measured["shared"].output, measured["per_beam"].output, min(10, k)
    )
    return result
