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
greedy output equals :func:`decoding.generate.generate`'s with the same constraint.

Worked example (counting target: after t it says t + 1; k = 3; prompt ``[5]``)::

    prefill:  first token 6                          emitted 6
    round 1:  draft proposes 7 8 0; target reads 6 7 8 0, wants 7 8 9 -> keeps 7 8, adds 9
              emitted 7 8 9  (3 tokens for one target call); the target cache drops the 0
    round 2:  draft proposes 10 11 12, all accepted, bonus 13:  emitted 10 11 12 13

Randomness: row ``b`` draws everything with ``fold_in(row_key_b, round)`` (the caller's
per-row keys, or ``split(key, batch)``), so a seed gives the same tokens on one device and on
N (:mod:`decoding.sharding`), and a row's tokens never depend on its batchmates.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from constraints.protocol import Constraint
from decoding import sharding, validation
from decoding.acceptance import Verdict, emitted_tokens, greedy_accept, rejection_accept, token_log_probs
from decoding.constrained import restrict
from decoding.drafts import Proposal, check_draft, check_num_draft_tokens, check_room
from decoding.inputs import CallInputs, prepare
from decoding.prefill import DEFAULT_MIN_BUCKET, prefill
from decoding.record import Bookkeeping, new_book, record, where_rows
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
    # bool [batch]  the row stopped by itself (an EOS id or a complete constraint state), not at its limit
    complete: jax.Array
    # bool [batch]  the target read non-finite logits for the row (NaN, +inf, or all -inf): its
    # tokens are meaningless; report it (decoding.validation, "Non-finite policy"). A draft
    # model's non-finite logits cannot change the output (its drafts are all rejected).
    nonfinite: jax.Array


@struct.dataclass
class TargetState:
    """The target-facing half of the carry."""

    cache: Any  # target decode cache; lengths int32 [batch] exclude the pending token
    pending: jax.Array  # int32 [batch]  newest emitted token, read at the next round
    constraint_state: Any  # the constraint state after every emitted token, leaves [batch, ...]


@struct.dataclass
class Carry:
    """The ``lax.while_loop`` carry (``book.step`` counts rounds)."""

    target: TargetState
    draft: Any  # the draft source's own state pytree
    book: Bookkeeping
    row_keys: jax.Array  # key [batch]
    accepted: jax.Array  # int32 [batch, width]  drafts kept per round, -1 where the row sat out
    rounds: jax.Array  # int32 [batch]  rounds each row took part in


def _round_keys(row_keys: jax.Array, round_index: jax.Array) -> jax.Array:  # key [batch, 2]
    """Per-row keys of a round (round 0 draws the first token): one for the draft, one for acceptance."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, round_index)
    return jax.vmap(lambda key: jax.random.split(key, 2))(keys)


def _verify(
    sampler: Any,
    keys: jax.Array,  # key [batch]
    drafts: jax.Array,  # int32 [batch, k]
    draft_log_probs: jax.Array,  # float32 [batch, k, vocab]
    scores: jax.Array,  # float32 [batch, k + 1, vocab]  target logits, restricted by the constraint
) -> Verdict:
    """The acceptance rule for this sampler, rows independent (run per device)."""
    if isinstance(sampler, Greedy):
        return greedy_accept(drafts, scores)
    return rejection_accept(keys, drafts, draft_log_probs, sampler.log_probs(scores))


def _stops(
    inputs: CallInputs,
    constraint: Constraint,
    tokens: jax.Array,  # int32 [...]
    states: Any,  # constraint states after the tokens, leaves [...]
) -> jax.Array:  # bool [...]
    """Whether the token is an EOS id, or the constraint state after it is complete."""
    return jnp.any(tokens[..., None] == inputs.eos_ids, axis=-1) | constraint.is_complete(states)


def _column(states: Any, index: jax.Array) -> Any:  # leaves [batch, T, ...], int32 [batch] -> [batch, ...]
    return jax.tree.map(
        lambda x: jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0], states
    )


def _verify_drafts(target, params, constraint, inputs: CallInputs, cache, pending, proposal: Proposal, keys):
    """The target reads ``[pending, drafts]`` in one call and the acceptance rule judges them.
    Returns the verdict, the target log-probabilities of the emitted tokens (float32 [batch,
    k + 1]) and the cache."""
    batch, k = proposal.tokens.shape
    verify = jnp.concatenate([pending[:, None], proposal.tokens], axis=1)
    logits, cache = target(params, verify, cache, jnp.full((batch,), k + 1, jnp.int32))
    logits = logits.astype(jnp.float32)
    scores = restrict(constraint, proposal.states, logits)
    rows = sharding.ROWS
    knobs = jax.tree.map(lambda x: rows if np.ndim(x) else sharding.REPLICATED, inputs.sampler)
    verdict = sharding.per_device(_verify, in_specs=(knobs, rows, rows, rows, rows), out_specs=rows)(
        inputs.sampler, keys, proposal.tokens, proposal.log_probs, scores
    )
    return verdict, token_log_probs(logits, emitted_tokens(proposal.tokens, verdict)), cache


def _round(target, params, draft, constraint, inputs: CallInputs, k: int, carry: Carry) -> Carry:
    """One draft-verify-accept round for every row (rows already done emit nothing)."""
    book, tgt = carry.book, carry.target
    active = ~book.done
    keys = _round_keys(carry.row_keys, book.step + 1)
    draft_state, proposal = draft.propose(carry.draft, k, inputs.sampler, keys[:, 0], constraint, tgt.constraint_state)
    states = proposal.states  # [batch, k + 1]: after 0 .. k drafts

    start = tgt.cache.lengths
    verdict, emitted_log_probs, cache = _verify_drafts(
        target, params, constraint, inputs, tgt.cache, tgt.pending, proposal, keys[:, 1]
    )

    emitted = emitted_tokens(proposal.tokens, verdict)  # [batch, k + 1]
    n = verdict.num_accepted
    bonus_state = constraint.advance(_column(states, n), verdict.next_token)
    slots = jnp.arange(k + 1)[None, :]
    # The state after emitted[j]: after draft j + 1 for the accepted drafts, the bonus state after.
    drafted = slots < n[:, None]  # [batch, k + 1]

    def state_after(along: jax.Array, bonus: jax.Array) -> jax.Array:  # [batch, k + 1, ...], [batch, ...]
        keep = drafted.reshape(drafted.shape + (1,) * (along.ndim - 2))
        return jnp.where(keep, jnp.roll(along, -1, axis=1), bonus[:, None])

    after = jax.tree.map(state_after, states, bonus_state)
    stop = _stops(inputs, constraint, emitted, after) & (slots <= n[:, None])
    first_stop = jnp.min(jnp.where(stop, slots, k + 1), axis=1)
    num_emitted = jnp.minimum(jnp.minimum(n + 1, first_stop + 1), inputs.limits - book.lengths)
    num_emitted = jnp.where(active, num_emitted, 0)
    last = jnp.maximum(num_emitted - 1, 0)

    new_book = record(book, emitted, emitted_log_probs, num_emitted, first_stop < num_emitted, inputs.limits)
    return Carry(
        target=TargetState(
            cache=cache.replace(lengths=start + num_emitted),
            pending=jnp.where(active, jnp.take_along_axis(emitted, last[:, None], axis=1)[:, 0], tgt.pending),
            constraint_state=where_rows(active, _column(after, last), tgt.constraint_state),
        ),
        draft=draft.commit(draft_state, emitted, num_emitted),
        book=new_book.replace(step=book.step + 1),
        row_keys=carry.row_keys,
        accepted=carry.accepted.at[:, book.step].set(jnp.where(active, n, -1), mode="drop"),
        rounds=carry.rounds + active.astype(jnp.int32),
    )


def speculative_decode(target, k, params, cache, inputs: CallInputs, draft, constraint):
    """The traceable core of :func:`speculative_generate` (prefill, first token, then the round
    loop): call it inside your own jit with ``inputs`` from :func:`decoding.inputs.prepare`
    (built outside the trace). ``target``, ``k`` and ``inputs.width`` are static; the rest is
    traced."""
    prompts, prompt_lengths = jnp.asarray(inputs.prompts), jnp.asarray(inputs.prompt_lengths)
    batch, width = prompts.shape[0], inputs.width
    first_logits, cache = prefill(target, params, cache, prompts, prompt_lengths)
    first_logits = first_logits.astype(jnp.float32)
    row_keys = inputs.row_keys()
    cstate = constraint.initial_state((batch,))
    first_keys = _round_keys(row_keys, jnp.int32(0))[:, 0]
    first = inputs.sampler.sample(first_keys, restrict(constraint, cstate, first_logits))
    cstate = constraint.advance(cstate, first)
    book = new_book(jnp.asarray(inputs.limits), width, inputs.pad_id)
    active = ~book.done
    book = record(
        book,
        first[:, None],
        token_log_probs(first_logits, first)[:, None],
        active.astype(jnp.int32),
        _stops(inputs, constraint, first, cstate),
        inputs.limits,
    )
    carry = Carry(
        target=TargetState(cache=cache, pending=first, constraint_state=cstate),
        draft=draft.start(prompts, prompt_lengths, first, prompts.shape[1] + width),
        book=book,
        row_keys=row_keys,
        accepted=jnp.full((batch, width), -1, jnp.int32),
        rounds=jnp.zeros((batch,), jnp.int32),
    )
    carry = jax.lax.while_loop(
        lambda c: ~jnp.all(c.book.done) & (c.book.step < width),
        functools.partial(_round, target, params, draft, constraint, inputs, k),
        carry,
    )
    book = carry.book
    return SpeculativeOutput(
        tokens=book.tokens,
        lengths=book.lengths,
        log_probs=book.log_probs,
        cache=carry.target.cache,
        stats=SpeculativeStats(accepted=carry.accepted, rounds=carry.rounds),
        complete=book.complete,
        nonfinite=validation.nonfinite_emitted(book.log_probs, book.lengths),
    )


_speculative_jit = jax.jit(speculative_decode, static_argnames=("target", "k"), donate_argnames=("cache",))

CORE = "decoding.inputs.prepare (outside the trace), then decoding.speculative.speculative_decode"


def _run_sharded(mesh, target, k, args):
    """Runs :func:`speculative_decode` with rows over the mesh's ``data`` axis and weights replicated
    (or split on ``model``); verification runs per device (:func:`sharding.per_device`)."""
    params, _, inputs, draft, _ = args
    sharding.check_rows(inputs.prompts.shape[0], mesh)
    rows, replicated = sharding.named(mesh)
    in_shardings = (
        sharding.param_shardings(params, mesh),  # params
        rows,  # cache
        sharding.input_shardings(inputs, mesh),
        draft.shardings(rows, replicated, lambda tree: sharding.param_shardings(tree, mesh)),
        replicated,  # constraint
    )
    # Every output leaf is batch-leading.
    return sharding.run_on_mesh(speculative_decode, (target, k), args, mesh, in_shardings, rows, (1,))


def speculative_generate(
    target: Any,
    target_params: Any,
    target_cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    draft: Any,
    num_draft_tokens: int,
    max_new_tokens: Any,
    sampler: Any = Greedy(),
    key: jax.Array | None = None,
    eos_ids: tuple[int, ...] = (),
    constraint: Any = None,
    width: int | None = None,
    pad_id: int = 0,
    vocab_size: int | None = None,
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
      draft: a draft source (:class:`decoding.drafts.DraftSource`): a
        :class:`decoding.drafts.ModelDraft` (its model static, params and cache traced, not
        donated; the cache needs the same room as the target's), a
        :class:`decoding.drafts.PromptLookupDraft` (static), or your own class with the same
        methods.
      num_draft_tokens: k, drafts per round. Static.
      max_new_tokens: an int (also the output width) or an int array [batch] of per-row limits
        (traced), with ``width`` static (default: their maximum).
      sampler: ``Greedy()`` (greedy acceptance: token-identical to greedy ``generate``) or
        ``Categorical(processors)`` (rejection sampling against the processed distribution).
        Its type and processor order are static, its knobs traced.
      key: required unless greedy: one PRNG key (row b uses ``split(key, batch)[b]``) or one
        key per row, shape [batch]. Traced.
      eos_ids: stop-token ids; their number is static, their values traced.
      constraint: None, or any automaton of :mod:`constraints.protocol` (a
        :class:`constraints.TrieIndex`, a :class:`constraints.TokenDFA`, ...; arrays traced,
        metadata static): drafts and target are restricted by the same states, and a row also
        stops when its state is complete.
      pad_id: fills ``out.tokens`` after each row's end. Traced.
      vocab_size: to check token ids; default: the target's.
      mesh: optional mesh from :func:`decoding.sharding.data_mesh` (``Auto`` axes): rows are
        split over its ``data`` axis (the batch must divide evenly), weights replicated or split
        on ``model``; acceptance runs per device. Per-row keys give the same tokens as no mesh.
      min_bucket: the smallest prompt bucket. Static.

    Returns:
      :class:`SpeculativeOutput`: tokens, lengths, log_probs, the target cache,
      :class:`SpeculativeStats`, ``complete`` bool [batch] (as :func:`decoding.generate`'s)
      and ``nonfinite`` bool [batch] (rows for which the target read non-finite logits;
      their tokens are meaningless).

    Raises:
      ValueError (before tracing) on malformed prompts, ids outside the vocabulary or int32,
        caches too small or with lengths outside [0, capacity], a draft whose vocabulary
        differs, a bad ``num_draft_tokens``, a knob out of range or not finite, a missing key.
      decoding.validation.DonatedCacheError: a cache (target or draft) was donated before.
      decoding.validation.TracedCallError: called under ``jax.jit``; call
        :func:`speculative_decode` there instead, with inputs from
        :func:`decoding.inputs.prepare` built outside the trace.
    """
    k = check_num_draft_tokens(num_draft_tokens)
    prepared = prepare(
        "speculative_generate",
        CORE,
        target,
        target_params,
        target_cache,
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
        other_caches=_draft_caches(draft),
    )
    lengths, limits = prepared.host_prompt_lengths, prepared.host_limits
    check_room("target", prepared.cache_lengths, lengths, limits, k, target_cache.capacity)
    check_draft(draft, k, prepared.vocab_size, lengths, limits)
    args = (target_params, target_cache, prepared.inputs, draft, prepared.constraint)
    if mesh is None:
        return _speculative_jit(target, k, *args)
    return _run_sharded(mesh, target, k, args)


def _draft_caches(draft: Any) -> tuple:
    """The caches a draft source fills (none when it is not one: :func:`check_draft` says so)."""
    caches = getattr(draft, "caches", None)
    return caches() if callable(caches) else ()
