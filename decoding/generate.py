"""Autoregressive decoding (greedy or sampled) in one jit-compiled ``lax.while_loop``.

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
3. :func:`decode_loop` repeats 2 until every row is done: it produced one of ``eos_ids`` or
   reached its own limit. The last token is never fed, so the returned cache holds
   prompt + max(new - 1, 0) tokens per row (a row with limit 0 feeds nothing after its
   prompt), and a cache with room for exactly that suffices.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from decoding import validation
from decoding.prefill import DEFAULT_MIN_BUCKET, bucket_length, pad_prompts, prefill
from decoding.samplers import Greedy


@struct.dataclass
class GenerateOutput:
    """What :func:`generate` returns."""

    tokens: jax.Array  # int32 [batch, width]  new tokens only, pad_id after each row's end
    lengths: jax.Array  # int32 [batch]  new tokens per row, EOS included
    log_probs: jax.Array  # float32 [batch, width]  model log_softmax of each token, 0 after the end
    cache: Any  # the decode cache after the loop (lengths = cached + prompt + max(new - 1, 0) per row)
    # bool [batch]  the row read non-finite logits (NaN, +inf, or all -inf): its tokens are
    # meaningless; report it (decoding.validation, "Non-finite policy").
    nonfinite: jax.Array


@struct.dataclass
class ModelState:
    """The model-facing half of the loop carry."""

    cache: Any  # decode cache pytree, batch-leading leaves; lengths int32 [batch]
    last_token: jax.Array  # int32 [batch]  each row's newest token, fed at the next step


@struct.dataclass
class Bookkeeping:
    """The loop's own half of the carry."""

    step: jax.Array  # int32 []  tokens sampled so far (the next step's index)
    done: jax.Array  # bool [batch]  the row emitted EOS or reached its limit
    lengths: jax.Array  # int32 [batch]  tokens recorded per row
    tokens: jax.Array  # int32 [batch, width]  recorded tokens, pad_id elsewhere
    log_probs: jax.Array  # float32 [batch, width]  model log-probabilities of the recorded tokens


@struct.dataclass
class DecodeCarry:
    """The ``lax.while_loop`` carry."""

    model: ModelState
    book: Bookkeeping


@struct.dataclass
class DecodeSettings:
    """Traced per-call inputs of every step (a new value never recompiles; shapes and the
    sampler's type and processor order do)."""

    sampler: Any  # a decoding.samplers sampler; its numeric knobs are traced leaves
    key: jax.Array  # key []  the base PRNG key; step i samples with fold_in(key, i)
    limits: jax.Array  # int32 [batch]  per-row max new tokens, each in [0, width]
    eos_ids: jax.Array  # int32 [num_eos]  stop tokens (num_eos static, may be 0)


def emit(
    settings: DecodeSettings,
    step: jax.Array,  # int32 []
    logits: jax.Array,  # float32 [batch, vocab]
) -> tuple[jax.Array, jax.Array]:  # int32 [batch], float32 [batch]
    """Samples one token per row with ``fold_in(key, step)``; returns it and its model log-prob
    (log_softmax of the raw logits, not of the sampler's processed distribution). All traced."""
    logits = logits.astype(jnp.float32)
    token = settings.sampler.sample(jax.random.fold_in(settings.key, step), logits)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, log_prob


def record(
    book: Bookkeeping,
    settings: DecodeSettings,
    token: jax.Array,  # int32 [batch]
    log_prob: jax.Array,  # float32 [batch]
) -> Bookkeeping:
    """Writes the token of every row not yet done at its next column and updates ``done``
    (EOS or the row's limit reached). All traced."""
    batch, width = book.tokens.shape
    active = ~book.done
    rows = jnp.arange(batch)
    column = jnp.where(active, book.lengths, width)  # width is out of range: dropped
    lengths = book.lengths + active.astype(jnp.int32)
    is_eos = jnp.any(token[:, None] == settings.eos_ids[None, :], axis=-1)
    return Bookkeeping(
        step=book.step + 1,
        done=book.done | (active & is_eos) | (lengths >= settings.limits),
        lengths=lengths,
        tokens=book.tokens.at[rows, column].set(token, mode="drop"),
        log_probs=book.log_probs.at[rows, column].set(log_prob, mode="drop"),
    )


def init_carry(
    settings: DecodeSettings,
    cache: Any,
    first_logits: jax.Array,  # float32 [batch, vocab]  logits at each row's last prompt token
    width: int,
    pad_id: jax.Array,  # int32 []
) -> DecodeCarry:
    """The carry after step 0: each row's first token sampled from the prefill logits.

    ``width`` (the output buffer width) is static; the rest is traced.
    """
    batch = first_logits.shape[0]
    book = Bookkeeping(
        step=jnp.zeros((), jnp.int32),
        done=settings.limits <= 0,
        lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, width), pad_id, jnp.int32),
        log_probs=jnp.zeros((batch, width), jnp.float32),
    )
    token, log_prob = emit(settings, book.step, first_logits)
    return DecodeCarry(model=ModelState(cache=cache, last_token=token), book=record(book, settings, token, log_prob))


def decode_step(model: Any, params: Any, carry: DecodeCarry, settings: DecodeSettings) -> DecodeCarry:
    """One model call on every row's last token, then one sampled and recorded token per row.

    ``model`` is static (hashable); ``params``, ``carry`` and ``settings`` are traced.
    """
    active = ~carry.book.done
    logits, cache = model(params, carry.model.last_token[:, None], carry.model.cache, active.astype(jnp.int32))
    token, log_prob = emit(settings, carry.book.step, logits[:, 0])
    return DecodeCarry(
        model=ModelState(cache=cache, last_token=jnp.where(active, token, carry.model.last_token)),
        book=record(carry.book, settings, token, log_prob),
    )


def decode_loop(model: Any, params: Any, carry: DecodeCarry, settings: DecodeSettings) -> DecodeCarry:
    """Runs :func:`decode_step` in a ``lax.while_loop`` until every row is done or ``width``
    steps have run (traceable; call it inside jit). ``model`` and the buffer width are static;
    ``params``, ``carry`` and ``settings`` are traced."""
    width = carry.book.tokens.shape[1]

    def not_finished(c: DecodeCarry) -> jax.Array:
        return ~jnp.all(c.book.done) & (c.book.step < width)

    return jax.lax.while_loop(not_finished, lambda c: decode_step(model, params, c, settings), carry)


@functools.partial(jax.jit, static_argnames=("model", "width"), donate_argnames=("cache",))
def _generate_jit(
    model: Any,
    params: Any,
    cache: Any,
    prompts: jax.Array,  # int32 [batch, bucket]
    prompt_lengths: jax.Array,  # int32 [batch]
    settings: DecodeSettings,
    pad_id: jax.Array,  # int32 []
    width: int,
) -> GenerateOutput:
    first_logits, cache = prefill(model, params, cache, prompts, prompt_lengths)
    carry = decode_loop(model, params, init_carry(settings, cache, first_logits, width, pad_id), settings)
    return GenerateOutput(
        tokens=carry.book.tokens,
        lengths=carry.book.lengths,
        log_probs=carry.book.log_probs,
        cache=carry.model.cache,
        nonfinite=validation.nonfinite_emitted(carry.book.log_probs, carry.book.lengths),
    )


_CORE = (
    "decoding.prefill.prefill, then decoding.generate.init_carry and decoding.generate.decode_loop "
    "(decoding.validation.nonfinite_emitted gives the nonfinite flag)"
)


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
    max_new_tokens: Any,
    sampler: Any = Greedy(),
    key: jax.Array | None = None,
    eos_ids: tuple[int, ...] = (),
    width: int | None = None,
    pad_id: int = 0,
    vocab_size: int | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
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
        array [batch] of per-row limits (traced; a row with 0 produces nothing).
      sampler: ``Greedy()`` or ``Categorical(processors)``. Its type, processor order and the
        knobs' shapes (scalar or [batch]) are static; its knob values (temperature, k, p) are
        traced and cast to their declared dtypes first, so ``Temperature(1)``,
        ``Temperature(0.7)`` and ``Temperature(jnp.float32(1))`` share one compile.
      key: a PRNG key (``jax.random.key``, or a raw ``jax.random.PRNGKey``, wrapped to a typed
        key: both share one compile and give the same tokens), required unless the sampler is
        ``Greedy``. Traced; step i samples with ``fold_in(key, i)``, so a key gives the same
        output every time.
      eos_ids: tuple of stop-token ids. Their number is static, their values traced.
      width: static output width when ``max_new_tokens`` is an array (default: its maximum,
        so a new maximum recompiles; fix ``width`` to avoid that).
      pad_id: fills ``out.tokens`` after each row's end. Traced.
      vocab_size: to check token ids; default: one abstract model evaluation.
      min_bucket: the smallest prompt bucket. Static.

    Returns:
      :class:`GenerateOutput`: tokens int32 [batch, width], lengths int32 [batch],
      log_probs float32 [batch, width], the cache after decoding, and ``nonfinite`` bool
      [batch]: rows whose logits were non-finite (NaN/inf params or activations); their
      tokens are meaningless (see :mod:`decoding.validation`, "Non-finite policy").

    Raises:
      ValueError: on malformed prompts, ids outside the vocabulary or int32, a prompt or
        budget that does not fit the cache, a cache whose lengths lie outside [0, capacity],
        a processor passed as the sampler, a knob out of range or not finite (negative or
        infinite temperature, top-p outside [0, 1]) or of the wrong batch size, a
        ``vocab_size`` above the model's, or a missing key.
      decoding.validation.DonatedCacheError: the cache was donated to an earlier call.
      decoding.validation.TracedCallError: called under ``jax.jit`` (or vmap/grad). Inside
        ``jit``, compose :func:`decoding.prefill.prefill`, :func:`init_carry` and
        :func:`decode_loop` (and :func:`decoding.validation.nonfinite_emitted` on the carry).
    """
    prompts_np, lengths_np, cache_lengths = validation.check_call(
        "generate", _CORE, params, cache, prompts, prompt_lengths
    )
    limits, width = validation.check_new_tokens(max_new_tokens, width, prompts_np.shape[0])
    validation.check_sampler(sampler, key, prompts_np.shape[0])
    sampler, key = validation.normalize_sampler(sampler), validation.normalize_key(key)
    pad = validation.check_pad_id(pad_id)
    min_bucket = validation.check_int("min_bucket", min_bucket, 1, validation.INT32_MAX)
    validation.check_capacity(cache_lengths, lengths_np, limits, cache.capacity, unfed_tokens=1)
    model_vocab = validation.infer_vocab_size(model, params, cache)
    vocab_size = model_vocab if vocab_size is None else validation.check_vocab_size(vocab_size, model_vocab)
    validation.check_prompt_tokens(prompts_np, lengths_np, vocab_size)
    eos_ids = validation.check_token_ids("eos_ids", eos_ids, vocab_size)

    # Padding columns past the fullest row's room would be written past its capacity; cap the
    # bucket there, but never below the longest prompt (rows with less cached all fit it).
    longest = int(lengths_np.max())
    bucket = bucket_length(longest, max(cache.capacity - int(cache_lengths.max()), longest), min_bucket)
    settings = DecodeSettings(
        sampler=sampler,
        key=jax.random.key(0) if key is None else key,
        limits=jnp.asarray(limits),
        eos_ids=jnp.asarray(eos_ids, jnp.int32).reshape(len(eos_ids)),
    )
    return _generate_jit(
        model,
        params,
        cache,
        jnp.asarray(pad_prompts(prompts_np, lengths_np, bucket)),
        jnp.asarray(lengths_np),
        settings,
        pad,
        width,
    )
