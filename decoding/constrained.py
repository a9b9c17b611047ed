"""Decoding restricted to a trie of allowed sequences (:mod:`constraints`).

Two ways to apply a :class:`constraints.TrieIndex` at a step:

* the SPARSE path, :func:`sparse_candidates`: the ``K = index.max_branching[depth]`` allowed
  tokens of each beam's state and the model's log-probabilities at just those tokens, so beam
  search ranks ``beams x K`` candidates instead of ``beams x vocab`` (fixed-length indexes);
* the DENSE path, :func:`mask_log_probs`: a bool ``[..., vocab]`` mask from
  :func:`constraints.allowed_mask`; ``-inf`` outside it.

:func:`sparse_beam_search` is the sparse-path core of :func:`decoding.beam_search.beam_search`
for fixed-length indexes.
:func:`constrained_generate` decodes greedily or by sampling through the dense mask.

**What masked sampling samples from.** At each step it samples from the model's next-token
distribution restricted to the allowed tokens and renormalized *per step*. That is NOT the
model's distribution over whole sequences conditioned on the sequence being in the set: a
prefix the model likes but whose allowed continuations it dislikes is over-sampled, because each step
renormalizes without looking ahead. Constrained beam search ranks by the model's exact
(unrenormalized) sequence log-probability instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from constraints import DEAD_STATE, TrieIndex
from decoding import validation
from decoding.beam_helpers import (
    check_constraint,
    flatten_beams,
    gather_beams,
    length_penalty,
    parent_rows,
    take_candidates,
    top_beams,
    unflatten_beams,
)
from decoding.cache_rows import gather_rows
from decoding.generate import Bookkeeping, DecodeSettings, GenerateOutput, ModelState, record
from decoding.prefill import DEFAULT_MIN_BUCKET, bucket_length, pad_prompts, prefill
from decoding.samplers import Greedy

NEG_INF = -jnp.inf


def sparse_candidates(
    index: Any,  # a TrieIndex, or a layered constraint with the same candidates() method
    states: jax.Array,  # int32 [...]
    log_probs: jax.Array,  # float32 [..., vocab]
    depth: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # float32 [..., K], int32 [..., K], int32 [..., K]
    """The allowed next tokens of each state and the model's log-probabilities at them.

    ``depth`` (static) is how many tokens the states are deep; ``K = index.max_branching[depth]``.
    Returns ``(scores, tokens, next_states)``: ``scores`` is ``log_probs`` at each candidate
    token, ``-inf`` for padding slots (a state with fewer than K children, or DEAD_STATE);
    padding slots hold token 0 and next state DEAD_STATE.
    """
    tokens, next_states, valid = index.candidates(states, depth)
    tokens = jnp.where(valid, tokens, 0).astype(jnp.int32)
    scores = jnp.take_along_axis(log_probs, tokens, axis=-1)
    return (
        jnp.where(valid, scores, NEG_INF),
        tokens,
        jnp.where(valid, next_states, DEAD_STATE).astype(jnp.int32),
    )


def mask_log_probs(
    index: TrieIndex,
    states: jax.Array,  # int32 [...]
    log_probs: jax.Array,  # float32 [..., vocab]
) -> jax.Array:  # float32 [..., vocab]
    """``log_probs`` where the automaton allows the token, ``-inf`` elsewhere (not renormalized)."""
    return jnp.where(index.allowed_mask(states), log_probs, NEG_INF)


def _pad_candidates(
    scores: jax.Array,  # float32 [batch, beams, K]
    tokens: jax.Array,  # int32 [batch, beams, K]
    states: jax.Array,  # int32 [batch, beams, K]
    at_least: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # the same, [batch, beams, K'] with beams * K' >= at_least
    """Pads the candidate axis with -inf slots (token 0, DEAD_STATE) so top-k can take ``at_least``."""
    missing = -(-at_least // scores.shape[1]) - scores.shape[2]
    if missing <= 0:
        return scores, tokens, states
    pad = ((0, 0), (0, 0), (0, missing))
    return (
        jnp.pad(scores, pad, constant_values=NEG_INF),
        jnp.pad(tokens, pad),
        jnp.pad(states, pad, constant_values=DEAD_STATE),
    )


def sparse_beam_search(
    model: Any,
    params: Any,
    cache: Any,
    prompts: jax.Array,  # int32 [batch, bucket]
    prompt_lengths: jax.Array,  # int32 [batch]
    index: Any,
    alpha: jax.Array,  # float32 [batch]
    pad_id: jax.Array,  # int32 []
    num_beams: int,
) -> dict[str, jax.Array]:
    """Beam search over a fixed-length index on the SPARSE path (traceable; ``model`` and
    ``num_beams`` static, the rest traced).

    ``index`` is a fixed-length :class:`constraints.TrieIndex` or any layered constraint with
    its ``depth``, ``max_branching`` and ``initial_state`` / ``candidates`` / ``is_complete``
    methods (e.g. :class:`constraints.ItemFilter`, whose per-row arrays lead with ``batch``).

    ``index.depth`` steps unrolled in Python (``K = index.max_branching[d]`` differs per
    depth); each ranks ``beams x K`` candidates by summed model log-prob (depth 0: the root's
    ``K`` only, and the prefilled cache rows are repeated by the first gather). Returns the final
    beams as a dict of ``tokens`` int32 [batch, beams, depth], ``lengths``, ``log_probs`` and
    ``scores`` (``log_probs / depth ** alpha``, -inf unless a complete item), each [batch, beams],
    and ``nonfinite`` bool [batch]: some model call of the row gave non-finite logits
    (:func:`decoding.validation.nonfinite_logits`, any depth, any beam); its beams are then
    meaningless. :func:`decoding.beam_helpers.to_output` carries it into the output.
    """
    batch = prompts.shape[0]
    first_logits, cache = prefill(model, params, cache, prompts, prompt_lengths)
    # Depth 0 starts from one beam per row (the root): K_0 candidates, not beams x K_0.
    log_probs = jax.nn.log_softmax(first_logits, axis=-1)[:, None, :]
    nonfinite = jnp.zeros((batch,), bool)
    live = jnp.zeros((batch, 1), jnp.float32)
    states = index.initial_state((batch, 1))
    tokens = jnp.full((batch, 1, index.depth), pad_id, jnp.int32)
    for depth in range(index.depth):
        if depth > 0:
            step_tokens = flatten_beams(tokens[:, :, depth - 1])[:, None]
            logits, cache = model(params, step_tokens, cache, jnp.ones((batch * num_beams,), jnp.int32))
            log_probs = unflatten_beams(jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), num_beams)
        nonfinite = nonfinite | jnp.any(validation.nonfinite_logits(log_probs), axis=1)
        scores, cand_tokens, cand_states = _pad_candidates(*sparse_candidates(index, states, log_probs, depth), num_beams)
        scores = live[..., None] + scores
        parent, column = top_beams(scores, num_beams)
        live = take_candidates(scores, parent, column)
        states = take_candidates(cand_states, parent, column)
        tokens = gather_beams(tokens, parent).at[:, :, depth].set(take_candidates(cand_tokens, parent, column))
        if depth + 1 < index.depth:
            cache = gather_rows(cache, parent_rows(parent, 1 if depth == 0 else num_beams))
    lengths = jnp.full((batch, num_beams), index.depth, jnp.int32)
    complete = jnp.isfinite(live) & index.is_complete(states)
    return {
        "tokens": tokens,
        "lengths": lengths,
        "log_probs": live,
        "scores": jnp.where(complete, live / length_penalty(lengths, alpha[:, None]), -jnp.inf),
        "nonfinite": nonfinite,
    }


@struct.dataclass
class ConstrainedCarry:
    """The ``lax.while_loop`` carry of :func:`constrained_generate`."""

    model: ModelState  # cache and each row's newest token
    book: Bookkeeping  # step, done, lengths, tokens and log-probs recorded so far
    states: jax.Array  # int32 [batch]  automaton state after the recorded tokens


def _emit(
    settings: DecodeSettings,
    index: TrieIndex,
    states: jax.Array,  # int32 [batch]
    step: jax.Array,  # int32 []
    logits: jax.Array,  # float32 [batch, vocab]
) -> tuple[jax.Array, jax.Array, jax.Array]:  # int32 [batch], float32 [batch], int32 [batch]
    """Samples among the allowed tokens; returns the token, its model log-prob, the next state."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    masked = mask_log_probs(index, states, log_probs)
    token = settings.sampler.sample(jax.random.fold_in(settings.key, step), masked)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    return token, token_log_prob, index.advance(states, token)


def _record(
    carry_book: Bookkeeping,
    settings: DecodeSettings,
    index: TrieIndex,
    states: jax.Array,  # int32 [batch]
    token: jax.Array,  # int32 [batch]
    log_prob: jax.Array,  # float32 [batch]
    next_states: jax.Array,  # int32 [batch]
) -> tuple[Bookkeeping, jax.Array]:  # bookkeeping, int32 [batch]
    """Records the token of rows not done; a row is done once its state is complete."""
    active = ~carry_book.done
    book = record(carry_book, settings, token, log_prob)
    states = jnp.where(active, next_states, states)
    return book.replace(done=book.done | index.is_complete(states)), states


def constrained_decode(
    model: Any,
    params: Any,
    cache: Any,
    prompts: jax.Array,  # int32 [batch, bucket]
    prompt_lengths: jax.Array,  # int32 [batch]
    index: TrieIndex,
    settings: DecodeSettings,
    pad_id: jax.Array,  # int32 []
    width: int,
) -> tuple[GenerateOutput, jax.Array]:  # output, bool [batch]
    """The traceable core of :func:`constrained_generate` (call it inside your own jit with
    inputs prepared outside: prompts padded to a bucket, a normalized sampler and key in
    ``settings``). ``model`` and ``width`` are static, the rest traced. Returns the output
    (``nonfinite`` included) and whether each row's state is complete."""
    batch = prompts.shape[0]
    first_logits, cache = prefill(model, params, cache, prompts, prompt_lengths)
    states = index.initial_state((batch,))
    book = Bookkeeping(
        step=jnp.zeros((), jnp.int32),
        done=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, width), pad_id, jnp.int32),
        log_probs=jnp.zeros((batch, width), jnp.float32),
    )
    token, log_prob, next_states = _emit(settings, index, states, book.step, first_logits)
    book, states = _record(book, settings, index, states, token, log_prob, next_states)
    carry = ConstrainedCarry(model=ModelState(cache=cache, last_token=token), book=book, states=states)

    def not_finished(c: ConstrainedCarry) -> jax.Array:
        return ~jnp.all(c.book.done) & (c.book.step < width)

    def body(c: ConstrainedCarry) -> ConstrainedCarry:
        active = ~c.book.done
        logits, cache = model(params, c.model.last_token[:, None], c.model.cache, active.astype(jnp.int32))
        token, log_prob, next_states = _emit(settings, index, c.states, c.book.step, logits[:, 0])
        book, states = _record(c.book, settings, index, c.states, token, log_prob, next_states)
        last = jnp.where(active, token, c.model.last_token)
        return ConstrainedCarry(model=ModelState(cache=cache, last_token=last), book=book, states=states)

    carry = jax.lax.while_loop(not_finished, body, carry)
    output = GenerateOutput(
        tokens=carry.book.tokens,
        lengths=carry.book.lengths,
        log_probs=carry.book.log_probs,
        cache=carry.model.cache,
        nonfinite=validation.nonfinite_emitted(carry.book.log_probs, carry.book.lengths),
    )
    return output, index.is_complete(carry.states)


_constrained_jit = jax.jit(constrained_decode, static_argnames=("model", "width"))


def constrained_generate(
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    constraint: TrieIndex,
    max_new_tokens: int | None = None,
    sampler: Any = Greedy(),
    key: jax.Array | None = None,
    pad_id: int = 0,
    min_bucket: int = DEFAULT_MIN_BUCKET,
) -> tuple[GenerateOutput, jax.Array]:
    """Greedy or sampled decoding through the dense mask of ``constraint``.

    Each step masks the model's log-probabilities to the tokens the automaton allows, lets
    ``sampler`` choose among them, and advances the row's state; a row stops once its state is
    complete (a whole item emitted: ``index.depth`` tokens of a fixed-length index, or an item
    ending in ``index.eos_id``). See the module docstring: sampling this way draws from the
    per-step renormalized restriction, not from the model conditioned on the set.

    Worked example (``BigramModel()`` with ``counting_params(8)``: after t the model prefers t+1;
    fixed-length items ``[[2, 5], [3, 4], [3, 6]]``)::

        prompts = [[2]], prompt_lengths = [1]       unconstrained greedy would say 3, 4
        step 0: allowed {2, 3}, the model prefers 3 -> 3
        step 1: allowed {4, 6} after 3, prefers 4    -> 4      state complete: stop
        out.tokens = [[3, 4]], out.lengths = [2], complete = [True]

    Args:
      model: hashable decode model (static). params: traced. cache: a decode cache with room
        for prompt + ``max_new_tokens`` per row (traced).
      prompts: int [batch, P] right-padded; prompt_lengths: int [batch]. The prompt width is
        bucketed (static bucket), the lengths traced.
      constraint: the :class:`constraints.TrieIndex`, or any automaton with
        :data:`decoding.beam_helpers.DENSE_API` (e.g. a :class:`constraints.TokenDFA`); its
        arrays are traced, its metadata static.
      max_new_tokens: static output width; default ``constraint.depth`` (every item fits).
      sampler: ``Greedy()`` or ``Categorical(...)``; its type is static, its knobs traced. It
        receives masked log-probabilities as logits.
      key: PRNG key (traced), required unless greedy; step i uses ``fold_in(key, i)``.
      pad_id: fills tokens after each row's end (traced).

    Returns:
      ``(output, complete)``: a :class:`decoding.generate.GenerateOutput` (``log_probs`` are
      the model's unmasked log-softmax of each token; ``nonfinite`` flags rows that read
      non-finite logits, whose tokens and ``complete`` are meaningless) and bool [batch],
      whether each row emitted a whole item (False only when ``max_new_tokens <
      constraint.depth`` cut it short).

    Raises:
      ValueError: as :func:`decoding.generate.generate`, and for a missing constraint or one
        that lacks :data:`decoding.beam_helpers.DENSE_API` or has another vocabulary.
      decoding.validation.DonatedCacheError: the cache or params hold deleted arrays.
      decoding.validation.TracedCallError: called under ``jax.jit``; call
        :func:`constrained_decode` there instead.
    """
    prompts_np, lengths_np, cache_lengths = validation.check_call(
        "constrained_generate", "decoding.constrained.constrained_decode", params, cache, prompts, prompt_lengths
    )
    if constraint is None:
        raise ValueError(
            "constrained_generate needs constraint= (a constraints.TrieIndex); for unconstrained decoding call "
            "decoding.generate"
        )
    vocab_size = validation.infer_vocab_size(model, params, cache)
    check_constraint(constraint, vocab_size)
    width = constraint.depth if max_new_tokens is None else max_new_tokens
    limits, width = validation.check_new_tokens(width, None, prompts_np.shape[0])
    validation.check_sampler(sampler, key, prompts_np.shape[0])
    sampler, key = validation.normalize_sampler(sampler), validation.normalize_key(key)
    pad = validation.check_pad_id(pad_id)
    min_bucket = validation.check_int("min_bucket", min_bucket, 1, validation.INT32_MAX)
    validation.check_capacity(cache_lengths, lengths_np, limits, cache.capacity)
    validation.check_prompt_tokens(prompts_np, lengths_np, vocab_size)
    bucket = bucket_length(int(lengths_np.max()), cache.capacity - int(cache_lengths.max()), min_bucket)
    settings = DecodeSettings(
        sampler=sampler,
        key=jax.random.key(0) if key is None else key,
        limits=jnp.asarray(limits),
        eos_ids=jnp.zeros((0,), jnp.int32),
    )
    return _constrained_jit(
        model,
        params,
        cache,
        jnp.asarray(pad_prompts(prompts_np, lengths_np, bucket)),
        jnp.asarray(lengths_np),
        constraint,
        settings,
        pad,
        width,
    )
