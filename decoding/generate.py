"""Autoregressive decoding (greedy or sampled, with or without a constraint) in one
jit-compiled ``lax.while_loop``.

Worked example with the counting model (``tests/fake_models``: ``BigramModel()`` with
``counting_params(vocab)``, whose most likely token after t is t + 1)::

    prompts = [[5, 6, 0], [3, 0, 0]], prompt_lengths = [2, 1], max_new_tokens = 4, eos_ids = (9,)
    prefill: row 0 reads 5, 6 -> first token 7;   row 1 reads 3 -> first token 4
    loop:    row 0 feeds 7 -> 8, feeds 8 -> 9 (EOS, done);   row 1 feeds 4 -> 5, 5 -> 6, 6 -> 7 (limit)
    out.tokens  = [[7, 8, 9, 0], [4, 5, 6, 7]]     (padded with pad_id = 0 after the end)
    out.lengths = [3, 4]                             (EOS counted)

The step structure, shared by :func:`decode_step` (one jitted step, also the body of the loop)
and the tests' plain Python reference loop:

1. :func:`init_carry` samples each row's first token from the prefill logits (step 0).
2. :func:`decode_step` feeds every row's last token (rows already done feed nothing:
   ``num_valid = 0``), samples the next, and records it.
3. :func:`decode_loop` repeats 2 until every row is done: it produced one of ``eos_ids``,
   reached a complete constraint state, or reached its own limit. The last token is never
   fed, so the returned cache holds prompt + max(new - 1, 0) tokens per row (a row with
   limit 0 feeds nothing after its prompt), and a cache with room for exactly that suffices.

A constraint (any automaton of :mod:`constraints.protocol`; the null object
:class:`constraints.protocol.Unconstrained` when none is given) restricts each step: the
logits of tokens its state does not allow become ``-inf`` before the sampler sees them, and
the state advances by the chosen token. Sampling this way draws from the per-step
renormalized restriction, NOT from the model conditioned on the whole output being allowed:
a prefix the model likes but whose allowed continuations it dislikes is over-sampled. Beam
search (:func:`decoding.beam_search`) ranks whole outputs by their (unrenormalized)
log-probability instead.

Worked example with a constraint (fixed-length items ``[[2, 5], [3, 4], [3, 6]]``, the same
counting model)::

    prompts = [[2]], prompt_lengths = [1]       unconstrained greedy would say 3, 4
    step 0: allowed {2, 3}, the model prefers 3 -> 3
    step 1: allowed {4, 6} after 3, prefers 4    -> 4      state complete: stop
    out.tokens = [[3, 4]], out.lengths = [2], out.complete = [True]

Randomness is per row: row ``b`` draws step ``i`` with ``fold_in(row_keys[b], i)``, where
``row_keys`` are the caller's per-row keys or ``split(key, batch)``; a row's tokens depend
on its own key only, so decoding it alone, in a larger batch or sharded gives the same tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from constraints.protocol import Constraint
from decoding import sharding, validation
from decoding.constrained import restrict
from decoding.inputs import CallInputs, prepare
from decoding.prefill import DEFAULT_MIN_BUCKET, prefill
from decoding.record import Bookkeeping, new_book, record, where_rows
from decoding.samplers import Greedy


@struct.dataclass
class GenerateOutput:
    """What :func:`generate` returns."""

    tokens: jax.Array  # int32 [batch, width]  new tokens only, pad_id after each row's end
    lengths: jax.Array  # int32 [batch]  new tokens per row, EOS included
    log_probs: jax.Array  # float32 [batch, width]  model log_softmax of each token, 0 after the end
    cache: Any  # the decode cache after the loop (lengths = cached + prompt + max(new - 1, 0) per row)
    # bool [batch]  the row stopped by itself (an EOS id, or a complete constraint state: a whole
    # item emitted) rather than at its max_new_tokens
    complete: jax.Array
    # bool [batch]  the row read non-finite logits (NaN, +inf, or all -inf): its tokens are
    # meaningless; report it (decoding.validation, "Non-finite policy").
    nonfinite: jax.Array


@struct.dataclass
class ModelState:
    """The model-facing half of the loop carry."""

    cache: Any  # decode cache pytree, batch-leading leaves; lengths int32 [batch]
    last_token: jax.Array  # int32 [batch]  each row's newest token, fed at the next step


@struct.dataclass
class DecodeCarry:
    """The ``lax.while_loop`` carry."""

    model: ModelState
    states: Any  # the constraint's state pytree, leaves [batch, ...]  (after the recorded tokens)
    row_keys: jax.Array  # key [batch]  row b draws step i with fold_in(row_keys[b], i)
    book: Bookkeeping


def _emit(
    carry: DecodeCarry,
    inputs: CallInputs,
    constraint: Constraint,
    logits: jax.Array,  # float32 [batch, vocab]
) -> DecodeCarry:
    """Samples one allowed token per row (its model log-prob is the log_softmax of the raw
    logits), advances the constraint, and records the token of every row not yet done."""
    logits = logits.astype(jnp.float32)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(carry.row_keys, carry.book.step)
    token = inputs.sampler.sample(step_keys, restrict(constraint, carry.states, logits))
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    active = ~carry.book.done
    states = where_rows(active, constraint.advance(carry.states, token), carry.states)
    stopped = jnp.any(token[:, None] == inputs.eos_ids[None, :], axis=-1) | constraint.is_complete(states)
    book = record(carry.book, token[:, None], log_prob[:, None], active.astype(jnp.int32), stopped, inputs.limits)
    return DecodeCarry(
        model=carry.model.replace(last_token=jnp.where(active, token, carry.model.last_token)),
        states=states,
        row_keys=carry.row_keys,
        book=book.replace(step=book.step + 1),
    )


def init_carry(
    inputs: CallInputs,
    constraint: Constraint,
    cache: Any,
    first_logits: jax.Array,  # float32 [batch, vocab]  logits at each row's last prompt token
) -> DecodeCarry:
    """The carry after step 0: each row's first token sampled from the prefill logits (traced;
    ``inputs.width`` is static)."""
    batch = first_logits.shape[0]
    carry = DecodeCarry(
        model=ModelState(cache=cache, last_token=jnp.zeros((batch,), jnp.int32)),
        states=constraint.initial_state((batch,)),
        row_keys=inputs.row_keys(),
        book=new_book(jnp.asarray(inputs.limits), inputs.width, inputs.pad_id),
    )
    return _emit(carry, inputs, constraint, first_logits)


def decode_step(model: Any, params: Any, carry: DecodeCarry, inputs: CallInputs, constraint: Constraint) -> DecodeCarry:
    """One model call on every row's last token, then one sampled and recorded token per row.

    ``model`` is static (hashable); the rest is traced.
    """
    active = ~carry.book.done
    logits, cache = model(params, carry.model.last_token[:, None], carry.model.cache, active.astype(jnp.int32))
    return _emit(carry.replace(model=carry.model.replace(cache=cache)), inputs, constraint, logits[:, 0])


def decode_loop(model: Any, params: Any, carry: DecodeCarry, inputs: CallInputs, constraint: Constraint) -> DecodeCarry:
    """Runs :func:`decode_step` in a ``lax.while_loop`` until every row is done or ``width``
    steps have run (traceable; call it inside jit). ``model`` and the width are static."""
    width = carry.book.tokens.shape[1]

    def not_finished(c: DecodeCarry) -> jax.Array:
        return ~jnp.all(c.book.done) & (c.book.step < width)

    return jax.lax.while_loop(not_finished, lambda c: decode_step(model, params, c, inputs, constraint), carry)


def generate_core(
    model: Any,
    params: Any,
    cache: Any,
    inputs: CallInputs,
    constraint: Constraint,
) -> GenerateOutput:
    """The traceable core of :func:`generate`: prefill, the first token, the loop. Call it
    inside your own jit with ``inputs`` from :func:`decoding.inputs.prepare` (built outside the
    trace). ``model`` and ``inputs.width`` are static; the rest is traced."""
    first_logits, cache = prefill(model, params, cache, jnp.asarray(inputs.prompts), jnp.asarray(inputs.prompt_lengths))
    carry = decode_loop(model, params, init_carry(inputs, constraint, cache, first_logits), inputs, constraint)
    book = carry.book
    return GenerateOutput(
        tokens=book.tokens,
        lengths=book.lengths,
        log_probs=book.log_probs,
        cache=carry.model.cache,
        complete=book.complete,
        nonfinite=validation.nonfinite_emitted(book.log_probs, book.lengths),
    )


_generate_jit = jax.jit(generate_core, static_argnames=("model",), donate_argnames=("cache",))

CORE = "decoding.inputs.prepare (outside the trace), then decoding.generate.generate_core"


def compiled_variants() -> int:
    """How many compiled variants of the generate loop exist in this process (for recompile tests)."""
    return _generate_jit._cache_size()


def generate(
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    max_new_tokens: Any = None,
    sampler: Any = Greedy(),
    key: jax.Array | None = None,
    eos_ids: tuple[int, ...] = (),
    constraint: Any = None,
    width: int | None = None,
    pad_id: int = 0,
    vocab_size: int | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
    mesh: jax.sharding.Mesh | None = None,
) -> GenerateOutput:
    """Decodes new tokens after ragged prompts with one compiled prefill + ``while_loop``.

    Args:
      model: a hashable callable following :class:`decoding.protocol.DecodeModel`. Static.
      params: the model's parameter pytree. Traced.
      cache: a decode cache with room for every row's prompt + max_new_tokens - 1 tokens (the
        last new token is never fed). Traced and *donated*: its buffers are reused for the
        returned ``out.cache``; do not use it again.
      prompts: int [batch, P], right-padded (entries past a row's length are ignored). The
        width is bucketed: padded to the next power of two of the longest prompt, at least
        ``min_bucket``, at most the free cache room; only the bucket is static.
      prompt_lengths: int [batch], each in [1, P]. Traced.
      max_new_tokens: an int or 0-d int array (every row; also the output width), or an int
        array [batch] of per-row limits (traced; a row with 0 produces nothing). Default with
        a constraint: ``constraint.depth``; required without one.
      sampler: ``Greedy()`` or ``Categorical(processors)``. Its type, processor order and the
        knobs' shapes (scalar or [batch]) are static; its knob values (temperature, k, p) are
        traced and cast to their declared dtypes first, so ``Temperature(1)``,
        ``Temperature(0.7)`` and ``Temperature(jnp.float32(1))`` share one compile.
      key: required unless the sampler is ``Greedy``: one PRNG key (``jax.random.key``, or a
        raw ``jax.random.PRNGKey``: both give the same tokens and share one compile; row b
        uses ``split(key, batch)[b]``) or one key per row, shape [batch]. Traced. Row b draws
        step i with ``fold_in(row_key_b, i)``: its tokens depend on its own key only, never on
        its batchmates or the mesh.
      eos_ids: tuple of distinct stop-token ids. Their number is static, their values traced.
        With a variable-length constraint it is ``(constraint.eos_id,)`` (``()`` means the
        same); a fixed-length constraint takes none.
      constraint: None, or any automaton of :mod:`constraints.protocol` (a
        :class:`constraints.TrieIndex`, a :class:`constraints.TokenDFA` from
        :func:`constraints.compile_regex`, ...): each step samples among the tokens its state
        allows, and a row stops once its state is complete. Arrays traced, metadata static.
      width: static output width when ``max_new_tokens`` is an array (default: its maximum,
        so a new maximum recompiles; fix ``width`` to avoid that).
      pad_id: fills ``out.tokens`` after each row's end. Traced.
      vocab_size: to check token ids; default: the model's (one abstract evaluation).
      min_bucket: the smallest prompt bucket. Static.
      mesh: optional mesh from :func:`decoding.sharding.data_mesh`: rows split over its
        ``data`` axis (the batch must divide evenly), weights replicated or split on
        ``model``. The tokens equal those of an unsharded call.

    Returns:
      :class:`GenerateOutput`: tokens int32 [batch, width], lengths int32 [batch],
      log_probs float32 [batch, width] (the model's unmasked log-softmax of each token), the
      cache after decoding, ``complete`` bool [batch] (the row ended on EOS or a complete
      constraint state, not at its limit) and ``nonfinite`` bool [batch]: rows whose logits
      were non-finite (NaN/inf params or activations); their tokens are meaningless (see
      :mod:`decoding.validation`, "Non-finite policy").

    Raises:
      ValueError: on malformed prompts, ids outside the vocabulary or int32, a prompt or
        budget that does not fit the cache, a cache whose lengths lie outside [0, capacity],
        a processor passed as the sampler, a knob out of range or not finite (negative or
        infinite temperature, top-p outside [0, 1]) or of the wrong batch size, a
        ``vocab_size`` above the model's, a missing key or one of the wrong shape, a
        constraint without the protocol or over another vocabulary, EOS ids inconsistent with
        it, or a batch that does not split over the mesh.
      decoding.validation.DonatedCacheError: the cache was donated to an earlier call.
      decoding.validation.TracedCallError: called under ``jax.jit`` (or vmap/grad). Inside
        ``jit``, call :func:`generate_core` with inputs from :func:`decoding.inputs.prepare`.
    """
    prepared = prepare(
        "generate",
        CORE,
        model,
        params,
        cache,
        prompts,
        prompt_lengths,
        max_new_tokens=max_new_tokens,
        width=width,
        eos_ids=eos_ids,
        constraint=constraint,
        sampler=sampler,
        key=key,
        pad_id=pad_id,
        vocab_size=vocab_size,
        min_bucket=min_bucket,
        unfed_tokens=1,
    )
    args = (params, cache, prepared.inputs, prepared.constraint)
    if mesh is None:
        return _generate_jit(model, *args)
    rows, replicated = sharding.named(mesh)
    sharding.check_rows(prepared.inputs.prompts.shape[0], mesh)
    in_shardings = (sharding.param_shardings(params, mesh), rows, sharding.input_shardings(prepared.inputs, mesh), replicated)
    # Every output leaf is batch-leading.
    return sharding.run_on_mesh(generate_core, (model,), args, mesh, in_shardings, rows, donate_argnums=(1,))
