"""Beam search in one jit-compiled program, optionally constrained to a trie of items.

Hypotheses are ranked by ``score = log_prob / length ** length_penalty`` (the HF-style
``len ** alpha`` penalty; ``log_prob`` is the model's summed log-softmax of the new tokens,
``length`` counts them, a final EOS included). ``length_penalty = 0`` ranks by the raw sum.

Algorithm (T5X / HF style):

1. Prefill the ragged batch once (``batch`` cache rows; all but each row's last prompt token,
   which the first step feeds), then repeat every cache row ``num_beams`` times. Every batch
   row starts with one live beam of log-prob 0 (the others -inf).
2. Each step scores every live beam's continuations. A continuation by an EOS id goes to a
   separate *finished pool* of ``num_beams`` hypotheses ranked by penalized score; the best
   ``num_beams`` other continuations become the new live beams, and the KV cache rows are
   gathered by parent beam (:func:`decoding.cache_rows.gather_rows`).
3. After ``max_new_tokens`` steps the live beams join the pool as truncated hypotheses (only
   unconstrained; a constrained hypothesis must be complete).

Early stop (exact): a batch row stops improving once no live beam can beat its worst finished
hypothesis. Log-probs are <= 0, so a live beam with sum ``s`` after ``t`` tokens finishes with a
score of at most ``max(s / (t+1) ** a, s / max_new_tokens ** a)`` (``s / L ** a`` is monotone in
``L``); the loop ends when every row's best such bound is strictly below its worst finished score.

Constraints (``constraint=``, any automaton of :mod:`constraints.protocol`):

* a layered one (a fixed-length :class:`constraints.TrieIndex`, a
  :class:`constraints.ItemFilter`): the SPARSE path. ``depth`` steps, unrolled in Python (the
  width ``K = max_branching[d]`` differs per depth); each step ranks ``beams x K`` candidates
  from :func:`decoding.constrained.sparse_candidates`. Outputs are exactly the items' tokens.
* any other (a variable-length trie, a :class:`constraints.TokenDFA`, a fixed-length automaton
  without ``candidates``): the DENSE path. Log-probs of tokens the state does not allow are
  -inf; a hypothesis must end in a complete state (a variable-length automaton's ``eos_id``
  is then the only EOS).

Log-probs are never renormalized over the allowed tokens: a constrained score is the model's
exact sequence log-probability. Beams beyond the reachable hypotheses come back with
``valid = False``, score and log-prob -inf, length 0 and ``pad_id`` tokens.

Worked example (``BigramModel()``, ``counting_params(6)``: after t the top token is t+1 with
log-prob ``-p``, ``p = log(1 + 5 e^-10) ~ 2.3e-4``; every other token has ``-10 - p``)::

    prompts = [[1]], num_beams = 2, max_new_tokens = 3, eos_ids = (4,), length_penalty = 0
    step 0: EOS "4" (-10-p) -> pool;   live "2" (-p), "0" (-10-p; ties go to the lowest id)
    step 1: EOS "2 4" (-10-2p) -> pool [ "4", "2 4" ];   live "2 3" (-2p), "2 0" (-10-2p)
    step 2: EOS "2 3 4" (-3p) -> pool [ "2 3 4", "4" ];  live beams (<= -10-3p) cannot enter
    out.sequences = [[[2, 3, 4], [4, pad, pad]]], out.lengths = [[3, 1]]
    out.scores = out.log_probs = [[-3p, -10-p]]

``tests/test_beam_search.py`` replays this example.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from constraints.protocol import Constraint, is_layered, is_unconstrained
from decoding import sharding
from decoding.beam_helpers import (
    BeamSearchOutput,
    Hypotheses,
    TopBeams,
    flatten_beams,
    gather_beams,
    length_penalty,
    parent_rows,
    per_row_alpha,
    take_candidates,
    to_output,
    unflatten_beams,
)
from decoding.cache_rows import gather_rows, repeat_rows
from decoding.constrained import mask_log_probs, sparse_beam_search
from decoding.inputs import CallInputs, Prepared, prepare
from decoding.prefill import DEFAULT_MIN_BUCKET
from decoding.validation import nonfinite_logits

CORE = (
    "decoding.inputs.prepare (outside the trace), then decoding.beam_search.run_dense "
    "(decoding.constrained.sparse_beam_search for a layered fixed-length constraint) and "
    "decoding.beam_helpers.to_output"
)


@struct.dataclass
class BeamSettings:
    """Traced per-call inputs of the dense loop (the selector's type and static fields, the
    number of EOS ids and the constraint's metadata recompile; values do not)."""

    selector: Any  # a decoding.beam_helpers.BeamSelector
    eos_ids: jax.Array  # int32 [num_eos]  tokens that end a hypothesis
    alpha: jax.Array  # float32 [batch]  length penalty exponent
    constraint: Constraint  # dense-mask automaton (constraints.protocol.Unconstrained when none)


@struct.dataclass
class Live:
    """Live beams. ``rows = batch * num_groups``; ``beams`` per group."""

    tokens: jax.Array  # int32 [rows, beams, width]  tokens so far, pad_id after
    log_probs: jax.Array  # float32 [rows, beams]  summed model log-probs, -inf for dead beams
    states: Any  # the constraint's state pytree, leaves [rows, beams, ...]


@struct.dataclass
class Finished:
    """The finished pool of each row, sorted best first."""

    tokens: jax.Array  # int32 [rows, beams, width]
    lengths: jax.Array  # int32 [rows, beams]  new tokens, EOS included
    log_probs: jax.Array  # float32 [rows, beams]  summed model log-probs
    scores: jax.Array  # float32 [rows, beams]  log_probs / lengths ** alpha; -inf for empty slots


@struct.dataclass
class BeamCarry:
    """The ``lax.while_loop`` carry of the dense loop."""

    cache: Any  # model-facing: decode cache with rows * beams rows, beam-major within a row
    last_tokens: jax.Array  # int32 [rows * beams]  each cache row's next input (step 0: last prompt token)
    step: jax.Array  # int32 []  tokens every live beam holds
    live: Live
    finished: Finished
    done: jax.Array  # bool [rows]  no live beam can still change the pool
    nonfinite: jax.Array  # bool [rows]  some beam of the row read non-finite logits (sticky)


def _merge_finished(
    pool: Finished,
    tokens: jax.Array,  # int32 [rows, n, width]
    lengths: jax.Array,  # int32 [rows, n]
    log_probs: jax.Array,  # float32 [rows, n]  -inf for non-candidates
    alpha: jax.Array,  # float32 [rows]
) -> Finished:
    """The best ``beams`` of the pool and ``n`` new hypotheses; pool entries win ties."""
    scores = log_probs / length_penalty(lengths, alpha[:, None])
    both = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b], axis=1), pool, Finished(tokens, lengths, log_probs, scores)
    )
    _, best = jax.lax.top_k(both.scores, pool.scores.shape[1])
    return gather_beams(both, best)


def _select(
    carry: BeamCarry,
    log_probs: jax.Array,  # float32 [rows, beams, vocab]  next-token log-probs, -inf where masked
    settings: BeamSettings,
    alpha: jax.Array,  # float32 [rows]
) -> BeamCarry:
    """One step: EOS continuations into the pool, the selector's picks as the new live beams,
    the cache gathered by parent, and the exact early-stop test."""
    live, step, index = carry.live, carry.step, settings.constraint
    rows, beams, _ = log_probs.shape
    width = live.tokens.shape[2]
    at_step = jnp.arange(width) == step
    finished = carry.finished
    num_eos = settings.eos_ids.shape[0]
    if num_eos:
        eos = settings.eos_ids
        # With a variable-length index, EOS is masked unless allowed, and always completes an item.
        ends = live.log_probs[..., None] + jnp.take(log_probs, eos, axis=2)  # [rows, beams, num_eos]
        end_tokens = jnp.where(at_step, eos[None, None, :, None], live.tokens[:, :, None, :])
        finished = _merge_finished(
            finished,
            end_tokens.reshape(rows, beams * num_eos, width),
            jnp.full((rows, beams * num_eos), step + 1, jnp.int32),
            ends.reshape(rows, beams * num_eos),
            alpha,
        )
        log_probs = log_probs.at[..., eos].set(-jnp.inf)
    scores = live.log_probs[..., None] + log_probs
    parent, token = settings.selector.select(scores)
    new_log_probs = take_candidates(scores, parent, token)
    states = index.advance(gather_beams(live.states, parent), token)
    new_live = Live(
        tokens=jnp.where(at_step, token[..., None], gather_beams(live.tokens, parent)),
        log_probs=new_log_probs,
        states=states,
    )
    best = jnp.max(new_log_probs, axis=1)
    bound = jnp.maximum(
        best / length_penalty(jnp.minimum(step + 2, width), alpha), best / length_penalty(jnp.asarray(width), alpha)
    )
    done = carry.done | (bound < finished.scores[:, -1]) | (best == -jnp.inf)
    return BeamCarry(
        cache=gather_rows(carry.cache, parent_rows(parent, beams)),
        last_tokens=flatten_beams(token),
        step=step + 1,
        live=new_live,
        finished=finished,
        done=done,
        nonfinite=carry.nonfinite,
    )


def run_dense(
    model: Any,
    params: Any,
    cache: Any,
    prompts: jax.Array,  # int32 [batch, bucket]
    prompt_lengths: jax.Array,  # int32 [batch]
    settings: BeamSettings,
    num_beams: int,
    width: int,
    pad_id: jax.Array,  # int32 []
) -> Hypotheses:
    """The dense loop (traceable): prefill, repeat rows, step until done; then the live beams at
    max length join the pool. ``model``, ``num_beams`` and ``width`` are static.

    Returns the pool as :class:`decoding.beam_helpers.Hypotheses` ``[batch, num_beams, ...]``
    (group-major when the selector has groups; not yet sorted; ``nonfinite`` from
    :func:`decoding.validation.nonfinite_logits` at any step, any beam), which
    :func:`decoding.beam_helpers.to_output` sorts into the output.
    """
    groups = settings.selector.num_groups
    beams = num_beams // groups
    batch = prompts.shape[0]
    rows = batch * groups
    index = settings.constraint
    alpha = jnp.repeat(settings.alpha, groups)
    # Prefill all but the last prompt token; the loop's first step feeds it, so one traced step
    # function serves every step.
    _, cache = model(params, prompts, cache, prompt_lengths - 1)
    last_prompt = jnp.take_along_axis(prompts, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
    carry = BeamCarry(
        cache=repeat_rows(cache, num_beams),
        last_tokens=jnp.repeat(last_prompt, num_beams),
        step=jnp.zeros((), jnp.int32),
        live=Live(
            tokens=jnp.full((rows, beams, width), pad_id, jnp.int32),
            log_probs=jnp.full((rows, beams), -jnp.inf, jnp.float32).at[:, 0].set(0.0),
            states=index.initial_state((rows, beams)),
        ),
        finished=Finished(
            tokens=jnp.full((rows, beams, width), pad_id, jnp.int32),
            lengths=jnp.zeros((rows, beams), jnp.int32),
            log_probs=jnp.full((rows, beams), -jnp.inf, jnp.float32),
            scores=jnp.full((rows, beams), -jnp.inf, jnp.float32),
        ),
        done=jnp.zeros((rows,), bool),
        nonfinite=jnp.zeros((rows,), bool),
    )

    def not_finished(c: BeamCarry) -> jax.Array:
        return (c.step < width) & ~jnp.all(c.done)

    def body(c: BeamCarry) -> BeamCarry:
        logits, cache = model(params, c.last_tokens[:, None], c.cache, jnp.ones((rows * beams,), jnp.int32))
        log_probs = unflatten_beams(jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), beams)
        nonfinite = c.nonfinite | jnp.any(nonfinite_logits(log_probs), axis=1)
        log_probs = mask_log_probs(index, c.live.states, log_probs)
        return _select(c.replace(cache=cache, nonfinite=nonfinite), log_probs, settings, alpha)

    carry = jax.lax.while_loop(not_finished, body, carry)
    keep = (carry.step == width) & jnp.isfinite(carry.live.log_probs)
    if not is_unconstrained(index):  # a constrained hypothesis must be a whole output
        keep &= index.is_complete(carry.live.states)
    pool = _merge_finished(
        carry.finished,
        carry.live.tokens,
        jnp.full((rows, beams), width, jnp.int32),
        jnp.where(keep, carry.live.log_probs, -jnp.inf),
        alpha,
    )
    return Hypotheses(
        tokens=pool.tokens.reshape(batch, num_beams, width),
        lengths=pool.lengths.reshape(batch, num_beams),
        log_probs=pool.log_probs.reshape(batch, num_beams),
        scores=pool.scores.reshape(batch, num_beams),
        nonfinite=jnp.any(carry.nonfinite.reshape(batch, groups), axis=1),
    )


def _sparse_program(
    model: Any,
    num_beams: int,
    params: Any,
    cache: Any,
    inputs: CallInputs,
    constraint: Any,  # a layered fixed-length constraint (constraints.protocol.LayeredConstraint)
    alpha: jax.Array,  # float32 [batch]
) -> BeamSearchOutput:
    prompts, lengths = jnp.asarray(inputs.prompts), jnp.asarray(inputs.prompt_lengths)
    final = sparse_beam_search(model, params, cache, prompts, lengths, constraint, alpha, inputs.pad_id, num_beams)
    return to_output(final, inputs.pad_id)


def _dense_program(
    model: Any,
    num_beams: int,
    params: Any,
    cache: Any,
    inputs: CallInputs,
    settings: BeamSettings,
) -> BeamSearchOutput:
    prompts, lengths = jnp.asarray(inputs.prompts), jnp.asarray(inputs.prompt_lengths)
    final = run_dense(model, params, cache, prompts, lengths, settings, num_beams, inputs.width, inputs.pad_id)
    return to_output(final, inputs.pad_id)


_sparse_jit = jax.jit(_sparse_program, static_argnums=(0, 1))
_dense_jit = jax.jit(_dense_program, static_argnums=(0, 1))


def compiled_variants() -> int:
    """Compiled programs of both paths in this process (for recompile tests)."""
    return _sparse_jit._cache_size() + _dense_jit._cache_size()


def run_program(
    model: Any,
    num_beams: int,
    params: Any,
    cache: Any,
    prepared: Prepared,
    settings: BeamSettings,
    mesh: jax.sharding.Mesh | None,
) -> BeamSearchOutput:
    """Runs the sparse program for a layered constraint, else the dense one, on one device or
    with rows split over ``mesh`` (shared with diverse beam search)."""
    inputs = prepared.inputs
    sparse = is_layered(settings.constraint) and isinstance(settings.selector, TopBeams)
    if sparse:
        program, jitted = _sparse_program, _sparse_jit
        args = (params, cache, inputs, settings.constraint, settings.alpha)
    else:
        program, jitted, args = _dense_program, _dense_jit, (params, cache, inputs, settings)
    if mesh is None:
        return jitted(model, num_beams, *args)
    rows, replicated = sharding.named(mesh)
    sharding.check_rows(inputs.prompts.shape[0], mesh)
    shared = (sharding.param_shardings(params, mesh), rows, sharding.input_shardings(inputs, mesh))
    if sparse:
        in_shardings = shared + (replicated, rows)
    else:
        in_shardings = shared + (settings.replace(selector=replicated, eos_ids=replicated, alpha=rows, constraint=replicated),)
    # Every output leaf is batch-leading.
    return sharding.run_on_mesh(program, (model, num_beams), args, mesh, in_shardings, rows)


def check_num_beams(num_beams: Any) -> int:
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    return num_beams


def prepare_search(
    entry: str,
    core: str,
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    selector: Any,
    length_penalty: Any,
    layered_ok: bool,
    **options: Any,
) -> tuple[Prepared, BeamSettings]:
    """:func:`decoding.inputs.prepare` for a beam search (static width; a fixed-length
    constraint's depth exactly) and its :class:`BeamSettings` (shared with diverse beam search)."""
    prepared = prepare(
        entry, core, model, params, cache, prompts, prompt_lengths, static_width=True, layered_ok=layered_ok, **options
    )
    settings = BeamSettings(
        selector=selector,
        eos_ids=prepared.inputs.eos_ids,
        alpha=per_row_alpha(length_penalty, prepared.inputs.prompts.shape[0]),
        constraint=prepared.constraint,
    )
    return prepared, settings


def beam_search(
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    num_beams: int,
    max_new_tokens: int | None = None,
    eos_ids: tuple[int, ...] = (),
    length_penalty: Any = 1.0,
    constraint: Any = None,
    pad_id: int = 0,
    vocab_size: int | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
    mesh: jax.sharding.Mesh | None = None,
) -> BeamSearchOutput:
    """The ``num_beams`` best continuations of each prompt (see the module docstring).

    Args:
      model: a hashable :class:`decoding.protocol.DecodeModel`. Static.
      params: the model's parameters. Traced.
      cache: a decode cache with ``batch`` rows and room for prompt + ``max_new_tokens``
        per row; repeated to ``batch * num_beams`` rows inside. Traced (not donated).
      prompts: int [batch, P] right-padded; prompt_lengths: int [batch], each >= 1. The prompt
        width is bucketed (the bucket is static), the lengths are traced.
      num_beams: beams per prompt. Static.
      max_new_tokens: output width (static). Default with a constraint: ``constraint.depth``;
        a fixed-length constraint requires exactly that.
      eos_ids: tuple of distinct ids that end a hypothesis; their number is static. Must be
        ``()`` with a fixed-length constraint; with a variable-length one it is
        ``(constraint.eos_id,)`` (``()`` means the same).
      length_penalty: exponent ``a`` of ``length ** a``; float scalar or float [batch]. Traced.
      constraint: None, or any automaton of :mod:`constraints.protocol`. One with the layered
        capability (a fixed-length :class:`constraints.TrieIndex`, a
        :class:`constraints.ItemFilter` of per-row item filters) takes the sparse path; any
        other (a :class:`constraints.TokenDFA` from :func:`constraints.compile_regex`, a
        variable-length trie, ...) the dense path. Its arrays are traced, its metadata
        (depth, branching, vocab, eos) static.
      pad_id: fills sequences after each end and invalid beams. Traced.
      vocab_size: to check token ids; default: the model's.
      min_bucket: smallest prompt bucket. Static.
      mesh: optional mesh from :func:`decoding.sharding.data_mesh`: prompts (and their beams)
        split over its ``data`` axis (the batch must divide evenly), weights replicated or
        split on ``model``; the output equals an unsharded call's.

    Returns:
      :class:`BeamSearchOutput`, ``[batch, num_beams, ...]``, best first, with ``nonfinite``
      bool [batch]: rows whose search read non-finite logits (their beams are meaningless).

    Raises:
      ValueError: bad shapes, ids outside the vocabulary or int32, a budget that does not fit
        the cache, a cache whose lengths lie outside [0, capacity], a non-finite
        ``length_penalty``, or a constraint inconsistent with the model or with ``eos_ids``.
      decoding.validation.DonatedCacheError: the cache or params hold deleted arrays.
      decoding.validation.TracedCallError: called under ``jax.jit``; inside jit call
        :func:`run_dense` (or :func:`decoding.constrained.sparse_beam_search` for a layered
        constraint), then :func:`decoding.beam_helpers.to_output`, with inputs from
        :func:`decoding.inputs.prepare` built outside the trace.
    """
    num_beams = check_num_beams(num_beams)
    prepared, settings = prepare_search(
        "beam_search",
        CORE,
        model,
        params,
        cache,
        prompts,
        prompt_lengths,
        selector=TopBeams(),
        length_penalty=length_penalty,
        layered_ok=True,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        constraint=constraint,
        pad_id=pad_id,
        vocab_size=vocab_size,
        min_bucket=min_bucket,
    )
    return run_program(model, num_beams, params, cache, prepared, settings, mesh)
