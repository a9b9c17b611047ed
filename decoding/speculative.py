"""Speculative decoding: a draft proposes ``k`` tokens, the target verifies them in one call.

One jit-compiled ``lax.while_loop``. Each round, for every row:

1. the draft source proposes ``d_1 .. d_k`` with distributions ``q`` (:mod:`decoding.drafts`);
2. the target reads ``[last emitted token, d_1 .. d_k]`` in ONE call (``num_valid = k + 1``),
   giving its distribution after each of them;
3. an acceptance rule (:mod:`decoding.acceptance`) keeps ``n`` drafts and adds one target
   token; the row emits ``d_1 .. d_n, t``, cut at the first EOS, at the first complete
   constraint state, or at its own ``max_new_tokens``;
4. rejected entries are rolled back by lowering the caches' per-row lengths (nothing is
   copied or realigned): rows advance by their own counts.

Greedy output is token-identical to :func:`decoding.generate.generate` with ``Greedy()``;
sampled output follows the target's processed distribution exactly (Leviathan/Chen rule).
With a constraint the draft and the target are masked by the same automaton states, so the
output equals :func:`decoding.constrained.constrained_generate`'s.

Worked example (counting target: after t it says t + 1; k = 3; prompt ``[5]``)::

    prefill:  first token 6                          emitted 6
    round 1:  draft proposes 7 8 0; target reads 6 7 8 0, wants 7 8 9 -> keeps 7 8, adds 9
              emitted 7 8 9  (3 tokens for one target call); the target cache drops the 0
    round 2:  draft proposes 10 11 12, all accepted, bonus 13:  emitted 10 11 12 13

Randomness: row ``b`` draws everything with ``fold_in(split(key, batch)[b], round)``, so a
seed gives the same tokens on one device and on N (:mod:`decoding.sharding`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from decoding import sharding, validation
from decoding.acceptance import Verdict, emitted_tokens, greedy_accept, rejection_accept, sample_rows, token_log_probs
from decoding.constrained import check_constraint
from decoding.drafts import (
    ModelDraft,
    PromptLookupDraft,
    advance_constraint,
    check_draft,
    check_num_draft_tokens,
    check_room,
    masked_scores,
    states_along,
)
from decoding.prefill import DEFAULT_MIN_BUCKET, bucket_length, pad_prompts, prefill
from decoding.samplers import Greedy


@struct.dataclass
class SpeculativeStats:
    """Acceptance statistics of one :func:`speculative_generate` call."""

    # int32 [batch, width]  drafts the target accepted in each round; -1 where the row sat out.
    # This is verification's count: a row's last round may emit fewer tokens, because the
    # output is cut at EOS or the row's limit (``lengths`` counts what was emitted).
    accepted: jax.Array
    rounds: jax.Array  # int32 [batch]  verification rounds each row took part in

    def target_calls(self) -> jax.Array:  # int32 []
        """Target model calls of the whole batch: 1 prefill + one per loop round."""
        return 1 + jnp.max(self.rounds)

    def mean_accepted(self) -> jax.Array:  # float32 [batch]
        """Drafts kept per round, averaged over each row's rounds (0 for a row with none)."""
        kept = jnp.sum(jnp.maximum(self.accepted, 0), axis=1)
        return kept / jnp.maximum(self.rounds, 1)

    def tokens_per_call(self, lengths: jax.Array) -> jax.Array:  # int32 [batch] -> float32 [batch]
        """New tokens per target call each row took part in (its prefill included)."""
        return lengths / (1 + self.rounds)


@struct.dataclass
class SpeculativeOutput:
    """What :func:`speculative_generate` returns (the fields of ``GenerateOutput`` + stats)."""

    tokens: jax.Array  # int32 [batch, width]  new tokens only, pad_id after each row's end
    lengths: jax.Array  # int32 [batch]  new tokens per row, EOS included
    log_probs: jax.Array  # float32 [batch, width]  target log_softmax of each token, 0 after the end
    cache: Any  # the target cache after the loop (lengths = cached + prompt + new - 1 per row)
    stats: SpeculativeStats
    # bool [batch]  the target read non-finite logits for the row (NaN, +inf, or all -inf): its
    # tokens are meaningless; report it (decoding.validation, "Non-finite policy"). A draft
    # model's non-finite logits cannot change the output (its drafts are all rejected).
    nonfinite: jax.Array


@struct.dataclass
class TargetState:
    """The target-facing half of the carry."""

    cache: Any  # target decode cache; lengths int32 [batch] exclude the pending token
    pending: jax.Array  # int32 [batch]  newest emitted token, read at the next round
    constraint_state: jax.Array  # int32 [batch]  automaton state after every emitted token


@struct.dataclass
class Book:
    """The loop's bookkeeping."""

    round: jax.Array  # int32 []  rounds run so far
    done: jax.Array  # bool [batch]  EOS, complete constraint, or limit reached
    lengths: jax.Array  # int32 [batch]  tokens emitted per row
    tokens: jax.Array  # int32 [batch, width]
    log_probs: jax.Array  # float32 [batch, width]
    accepted: jax.Array  # int32 [batch, width]  drafts kept per round, -1 where inactive
    rounds: jax.Array  # int32 [batch]  rounds each row took part in


@struct.dataclass
class Carry:
    """The ``lax.while_loop`` carry."""

    target: TargetState
    draft: Any  # the draft source's own state pytree
    book: Book


@struct.dataclass
class Settings:
    """Traced per-call inputs (new values never recompile)."""

    sampler: Any  # its type and processor order are static, its knobs traced
    row_keys: jax.Array  # key [batch]  one PRNG key per row
    limits: jax.Array  # int32 [batch]  per-row max new tokens
    eos_ids: jax.Array  # int32 [num_eos]
    pad_id: jax.Array  # int32 []


def _round_keys(settings: Settings, round_index: jax.Array) -> jax.Array:  # key [batch, 2]
    """Per-row keys of a round (round 0 draws the first token): one for the draft, one for acceptance."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(settings.row_keys, round_index)
    return jax.vmap(lambda key: jax.random.split(key, 2))(keys)


def _verify(
    sampler: Any,
    keys: jax.Array,  # key [batch]
    drafts: jax.Array,  # int32 [batch, k]
    draft_log_probs: jax.Array,  # float32 [batch, k, vocab]
    scores: jax.Array,  # float32 [batch, k + 1, vocab]  target logits, masked if constrained
) -> Verdict:
    """The acceptance rule for this sampler, rows independent (run per device)."""
    if isinstance(sampler, Greedy):
        return greedy_accept(drafts, scores)
    return rejection_accept(keys, drafts, draft_log_probs, sampler.log_probs(scores))


def _first_token(
    settings: Settings,
    scores: jax.Array,  # float32 [batch, vocab]  prefill logits, masked if constrained
) -> jax.Array:  # int32 [batch]
    """The first new token: argmax, or a draw from the processed distribution with round-0 keys."""
    if isinstance(settings.sampler, Greedy):
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return sample_rows(_round_keys(settings, jnp.int32(0))[:, 0], settings.sampler.log_probs(scores))


def _stops(
    settings: Settings,
    constraint: Any,
    tokens: jax.Array,  # int32 [...]
    states: jax.Array,  # int32 [...]  automaton states after the tokens
) -> jax.Array:  # bool [...]
    """Whether the token is an EOS id, or the constraint state after it is complete."""
    stop = jnp.any(tokens[..., None] == settings.eos_ids, axis=-1)
    if constraint is not None:
        stop = stop | constraint.is_complete(states)
    return stop


def _record(
    book: Book,
    settings: Settings,
    emitted: jax.Array,  # int32 [batch, T]
    log_probs: jax.Array,  # float32 [batch, T]
    num_emitted: jax.Array,  # int32 [batch]  how many of the T to record (0 for inactive rows)
    stopped: jax.Array,  # bool [batch]  the last recorded token ends the row (EOS, complete)
    active: jax.Array,  # bool [batch]
) -> Book:
    """Writes each row's first ``num_emitted`` tokens after its recorded ones; updates ``done``."""
    batch, width = book.tokens.shape
    slots = jnp.arange(emitted.shape[1])[None, :]
    columns = jnp.where(slots < num_emitted[:, None], book.lengths[:, None] + slots, width)
    rows = jnp.arange(batch)[:, None]
    lengths = book.lengths + num_emitted
    return book.replace(
        done=book.done | (active & stopped) | (lengths >= settings.limits),
        lengths=lengths,
        tokens=book.tokens.at[rows, columns].set(emitted, mode="drop"),
        log_probs=book.log_probs.at[rows, columns].set(log_probs, mode="drop"),
    )


def _verify_drafts(target, params, constraint, settings: Settings, cache, pending, drafts, draft_log_probs, states, keys):
    """The target reads ``[pending, drafts]`` in one call and the acceptance rule judges them.
    Returns the verdict, the target log-probabilities of the emitted tokens (float32 [batch,
    k + 1]) and the cache."""
    batch, k = drafts.shape
    verify = jnp.concatenate([pending[:, None], drafts], axis=1)
    logits, cache = target(params, verify, cache, jnp.full((batch,), k + 1, jnp.int32))
    logits = logits.astype(jnp.float32)
    scores = masked_scores(logits, constraint, states)
    rows = sharding.ROWS
    knobs = jax.tree.map(lambda x: rows if np.ndim(x) else sharding.REPLICATED, settings.sampler)
    verdict = sharding.per_device(_verify, in_specs=(knobs, rows, rows, rows, rows), out_specs=rows)(
        settings.sampler, keys, drafts, draft_log_probs, scores
    )
    return verdict, token_log_probs(logits, emitted_tokens(drafts, verdict)), cache


def _round(target, params, draft, constraint, settings: Settings, k: int, carry: Carry) -> Carry:
    """One draft-verify-accept round for every row (rows already done emit nothing)."""
    book, tgt = carry.book, carry.target
    active = ~book.done
    keys = _round_keys(settings, book.round + 1)
    draft_state, drafts, draft_log_probs = draft.propose(
        carry.draft, k, settings.sampler, keys[:, 0], constraint, tgt.constraint_state
    )
    states = states_along(constraint, tgt.constraint_state, drafts)  # [batch, k + 1]

    start = tgt.cache.lengths
    verdict, emitted_log_probs, cache = _verify_drafts(
        target, params, constraint, settings, tgt.cache, tgt.pending, drafts, draft_log_probs, states, keys[:, 1]
    )

    emitted = emitted_tokens(drafts, verdict)  # [batch, k + 1]
    n = verdict.num_accepted
    at_n = jnp.take_along_axis(states, n[:, None], axis=1)[:, 0]
    bonus_state = advance_constraint(constraint, at_n, verdict.next_token)
    slots = jnp.arange(k + 1)[None, :]
    after = jnp.where(slots < n[:, None], jnp.roll(states, -1, axis=1), bonus_state[:, None])  # state after emitted[j]
    stop = _stops(settings, constraint, emitted, after) & (slots <= n[:, None])
    first_stop = jnp.min(jnp.where(stop, slots, k + 1), axis=1)
    num_emitted = jnp.minimum(jnp.minimum(n + 1, first_stop + 1), settings.limits - book.lengths)
    num_emitted = jnp.where(active, num_emitted, 0)
    last = jnp.maximum(num_emitted - 1, 0)[:, None]

    new_book = _record(book, settings, emitted, emitted_log_probs, num_emitted, first_stop < num_emitted, active)
    return Carry(
        target=TargetState(
            cache=cache.replace(lengths=start + num_emitted),
            pending=jnp.where(active, jnp.take_along_axis(emitted, last, axis=1)[:, 0], tgt.pending),
            constraint_state=jnp.where(active, jnp.take_along_axis(after, last, axis=1)[:, 0], tgt.constraint_state),
        ),
        draft=draft.commit(draft_state, emitted, num_emitted),
        book=new_book.replace(
            round=book.round + 1,
            accepted=book.accepted.at[:, book.round].set(jnp.where(active, n, -1), mode="drop"),
            rounds=book.rounds + active.astype(jnp.int32),
        ),
    )


def speculative_decode(target, k, width, params, cache, prompts, prompt_lengths, draft, constraint, settings):
    """The traceable core of :func:`speculative_generate` (prefill, first token, then the round
    loop): call it inside your own jit with inputs prepared outside (prompts padded to a
    bucket, a normalized sampler and per-row keys in :class:`Settings`). ``target``, ``k`` and
    ``width`` are static; the rest is traced."""
    batch = prompts.shape[0]
    first_logits, cache = prefill(target, params, cache, prompts, prompt_lengths)
    cstate = jnp.zeros((batch,), jnp.int32) if constraint is None else constraint.initial_state((batch,))
    first = _first_token(settings, masked_scores(first_logits, constraint, cstate))
    cstate = advance_constraint(constraint, cstate, first)
    book = Book(
        round=jnp.zeros((), jnp.int32),
        done=settings.limits <= 0,
        lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, width), settings.pad_id, jnp.int32),
        log_probs=jnp.zeros((batch, width), jnp.float32),
        accepted=jnp.full((batch, width), -1, jnp.int32),
        rounds=jnp.zeros((batch,), jnp.int32),
    )
    active = ~book.done
    book = _record(
        book,
        settings,
        first[:, None],
        token_log_probs(first_logits, first)[:, None],
        active.astype(jnp.int32),
        _stops(settings, constraint, first, cstate),
        active,
    )
    carry = Carry(
        target=TargetState(cache=cache, pending=first, constraint_state=cstate),
        draft=draft.start(prompts, prompt_lengths, first, prompts.shape[1] + width),
        book=book,
    )
    carry = jax.lax.while_loop(
        lambda c: ~jnp.all(c.book.done) & (c.book.round < width),
        functools.partial(_round, target, params, draft, constraint, settings, k),
        carry,
    )
    book = carry.book
    stats = SpeculativeStats(accepted=book.accepted, rounds=book.rounds)
    nonfinite = validation.nonfinite_emitted(book.log_probs, book.lengths)
    return SpeculativeOutput(book.tokens, book.lengths, book.log_probs, carry.target.cache, stats, nonfinite)


_speculative_jit = jax.jit(speculative_decode, static_argnames=("target", "k", "width"), donate_argnames=("cache",))


def _run_sharded(mesh, target, k, width, args):
    """Runs :func:`speculative_decode` with rows over the mesh's ``data`` axis and weights replicated
    (or split on ``model``); verification runs per device (:func:`sharding.per_device`)."""
    params, _, prompts, _, draft, _, settings = args
    sharding.check_rows(prompts.shape[0], mesh)
    rows, replicated = (jax.sharding.NamedSharding(mesh, spec) for spec in (sharding.ROWS, sharding.REPLICATED))
    in_shardings = (
        sharding.param_shardings(params, mesh),  # params
        rows,  # cache
        rows,  # prompts
        rows,  # prompt_lengths
        draft.shardings(rows, replicated, lambda tree: sharding.param_shardings(tree, mesh)),
        replicated,  # constraint
        Settings(sharding.row_shardings(settings.sampler, mesh), rows, rows, replicated, replicated),
    )
    # Every output leaf is batch-leading.
    return sharding.run_on_mesh(speculative_decode, (target, k, width), args, mesh, in_shardings, rows, (1,))


def speculative_generate(
    target: Any,
    target_params: Any,
    target_cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    draft: ModelDraft | PromptLookupDraft,
    num_draft_tokens: int,
    max_new_tokens: Any,
    sampler: Any = Greedy(),
    key: jax.Array | None = None,
    eos_ids: tuple[int, ...] = (),
    constraint: Any = None,
    width: int | None = None,
    pad_id: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
) -> SpeculativeOutput:
    """Speculative decoding in one compiled prefill + ``while_loop`` (see the module docstring).

    Args:
      target: hashable :class:`decoding.protocol.DecodeModel`. Static.
      target_params: traced. target_cache: traced and *donated* (reused for ``out.cache``);
        every row needs room for cached + prompt + max_new_tokens + num_draft_tokens + 1.
      prompts: int [batch, P] right-padded, bucketed as in ``generate`` (the bucket is static).
      prompt_lengths: int [batch], each >= 1. Traced.
      draft: a :class:`decoding.drafts.ModelDraft` (its model static, params and cache traced,
        not donated; the cache needs the same room as the target's) or a
        :class:`decoding.drafts.PromptLookupDraft` (static).
      num_draft_tokens: k, drafts per round. Static.
      max_new_tokens: an int (also the output width) or an int array [batch] of per-row limits
        (traced), with ``width`` static (default: their maximum).
      sampler: ``Greedy()`` (greedy acceptance: token-identical to greedy ``generate``) or
        ``Categorical(processors)`` (rejection sampling against the processed distribution).
        Its type and processor order are static, its knobs traced.
      key: PRNG key (traced), required unless greedy. Row b uses ``split(key, batch)[b]``.
      eos_ids: stop-token ids; their number is static, their values traced.
      constraint: an optional :class:`constraints.TrieIndex` or other automaton with
        :data:`decoding.beam_helpers.DENSE_API`, e.g. a :class:`constraints.TokenDFA` (arrays
        traced, metadata static);
        a row also stops when its automaton state is complete.
      pad_id: fills ``out.tokens`` after each row's end. Traced.
      mesh: optional mesh from :func:`decoding.sharding.data_mesh` (``Auto`` axes): rows are
        split over its ``data`` axis (the batch must divide evenly), weights replicated or split
        on ``model``; acceptance runs per device. Per-row keys give the same tokens as no mesh.
      min_bucket: the smallest prompt bucket. Static.

    Returns:
      :class:`SpeculativeOutput`: tokens, lengths, log_probs, the target cache,
      :class:`SpeculativeStats`, and ``nonfinite`` bool [batch] (rows for which the target
      read non-finite logits; their tokens are meaningless).

    Raises:
      ValueError (before tracing) on malformed prompts, ids outside the vocabulary or int32,
        caches too small or with lengths outside [0, capacity], a draft whose vocabulary
        differs, a bad ``num_draft_tokens``, a knob out of range or not finite, a missing key.
      decoding.validation.DonatedCacheError: a cache (target or draft) was donated before.
      decoding.validation.TracedCallError: called under ``jax.jit``; call
        :func:`speculative_decode` there instead.
    """
    prompts_np, lengths_np, cache_lengths = validation.check_call(
        "speculative_generate", "decoding.speculative.speculative_decode", target_params, target_cache, prompts,
        prompt_lengths,
    )
    k = check_num_draft_tokens(num_draft_tokens)
    batch = prompts_np.shape[0]
    limits, width = validation.check_new_tokens(max_new_tokens, width, batch)
    validation.check_sampler(sampler, key, batch)
    sampler, key = validation.normalize_sampler(sampler), validation.normalize_key(key)
    pad = validation.check_pad_id(pad_id)
    min_bucket = validation.check_int("min_bucket", min_bucket, 1, validation.INT32_MAX)
    validation.check_capacity(cache_lengths, lengths_np, limits, target_cache.capacity)
    check_room("target", cache_lengths, lengths_np, limits, k, target_cache.capacity)
    vocab_size = validation.infer_vocab_size(target, target_params, target_cache)
    validation.check_prompt_tokens(prompts_np, lengths_np, vocab_size)
    eos_ids = validation.check_token_ids("eos_ids", eos_ids, vocab_size)
    check_draft(draft, k, vocab_size, lengths_np, limits)
    if constraint is not None:
        check_constraint(constraint, vocab_size)

    room = target_cache.capacity - int(cache_lengths.max())
    if isinstance(draft, ModelDraft):
        room = min(room, draft.cache.capacity - int(np.max(np.asarray(draft.cache.lengths))))
    bucket = bucket_length(int(lengths_np.max()), room, min_bucket)
    settings = Settings(
        sampler=sampler,
        row_keys=jax.random.split(jax.random.key(0) if key is None else key, batch),
        limits=jnp.asarray(limits),
        eos_ids=jnp.asarray(eos_ids, jnp.int32).reshape(len(eos_ids)),
        pad_id=pad,
    )
    padded = jnp.asarray(pad_prompts(prompts_np, lengths_np, bucket))
    args = (target_params, target_cache, padded, jnp.asarray(lengths_np), draft, constraint, settings)
    if mesh is None:
        return _speculative_jit(target, k, width, *args)
    return _run_sharded(mesh, target, k, width, args)
