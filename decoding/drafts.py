"""Draft sources for speculative decoding, behind one small interface (:class:`DraftSource`).

A draft source is a pytree (its arrays traced, its configuration static) with these methods:

* ``check(target_vocab, prompt_lengths, limits, k)``: host-side checks before tracing (a
  ValueError naming what is wrong);
* ``caches()``: the decode caches it fills (their free room caps the prompt bucket);
* ``start(prompts, prompt_lengths, first_tokens, context_width)`` -> its state, after the
  prompt and the first emitted token;
* ``propose(state, num_tokens, sampler, keys, constraint, constraint_state)`` -> the state
  and a :class:`Proposal`: ``k`` draft tokens, the draft distributions ``q`` they were drawn
  from (``sampler.log_probs`` after the constraint's restriction, as the target's) and the
  constraint states along the drafts (a source that walks the automaton anyway returns the
  states it computed; :func:`states_along` computes them otherwise);
* ``commit(state, emitted, num_emitted)`` -> the state after each row emitted
  ``emitted[b, :num_emitted[b]]`` (0 for rows that are done: they keep their state);
* ``shardings(rows, replicated, params)`` -> where its arrays go in a sharded run.

A new source is one class with these methods; :mod:`decoding.speculative` needs no edit.
Two are built in:

* :class:`ModelDraft`: a smaller model with its own cache, kept in step with the target by
  lowering its lengths after each round (nothing is copied).
* :class:`PromptLookupDraft`: n-gram prompt lookup, no model: copies what followed the most
  recent earlier occurrence of the context's last ``ngram`` tokens.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from decoding import validation
from decoding.acceptance import NEG_INF
from decoding.cache_rows import set_lengths
from decoding.constrained import restrict
from decoding.prefill import last_valid
from decoding.samplers import Greedy, sample_rows


def states_along(
    constraint: Any,
    state: Any,  # the constraint state after the last emitted token, leaves [batch, ...]
    tokens: jax.Array,  # int32 [batch, k]
) -> Any:  # leaves [batch, k + 1, ...]
    """``[:, j]``: the constraint state after the first ``j`` of ``tokens`` (``[:, 0]`` = ``state``)."""

    def step(current, token):
        following = constraint.advance(current, token)
        return following, following

    _, later = jax.lax.scan(step, state, tokens.T)
    return stack_states(state, later)


def stack_states(
    first: Any,  # leaves [batch, ...]
    later: Any,  # leaves [k, batch, ...] (scan-major)
) -> Any:  # leaves [batch, k + 1, ...]
    return jax.tree.map(lambda a, b: jnp.concatenate([a[:, None], jnp.moveaxis(b, 0, 1)], axis=1), first, later)


@struct.dataclass
class Proposal:
    """One round's drafts."""

    tokens: jax.Array  # int32 [batch, k]
    log_probs: jax.Array  # float32 [batch, k, vocab]  the processed q each token was drawn from
    states: Any  # constraint states after 0 .. k of the tokens, leaves [batch, k + 1, ...]


class DraftSource(Protocol):
    """The interface the speculative loop drives (see the module docstring)."""

    def check(
        self,
        target_vocab: int,
        prompt_lengths: np.ndarray,  # int32 [batch]
        limits: np.ndarray,  # int32 [batch]
        num_draft_tokens: int,
    ) -> None: ...

    def caches(self) -> tuple: ...

    def start(
        self,
        prompts: jax.Array,  # int32 [batch, P], right-padded
        prompt_lengths: jax.Array,  # int32 [batch]
        first_tokens: jax.Array,  # int32 [batch]
        context_width: int,
    ) -> Any: ...

    def propose(
        self,
        state: Any,
        num_tokens: int,
        sampler: Any,
        keys: jax.Array,  # key [batch]
        constraint: Any,
        constraint_state: Any,  # leaves [batch, ...]
    ) -> tuple[Any, Proposal]: ...

    def commit(
        self,
        state: Any,
        emitted: jax.Array,  # int32 [batch, k + 1]
        num_emitted: jax.Array,  # int32 [batch]
    ) -> Any: ...

    def shardings(self, rows: Any, replicated: Any, params: Any) -> Any:
        """A prefix pytree of shardings for this source: ``rows`` for batch-leading arrays,
        ``params(tree)`` for model weights, ``replicated`` for anything shared."""
        ...


DRAFT_METHODS = ("check", "caches", "start", "propose", "commit", "shardings")


@struct.dataclass
class ModelDraftState:
    """A draft model's cache plus the context tokens it has not read yet.

    The draft has read the whole context except its last ``num_pending`` tokens (1, or 2
    after a round that accepted every draft: the last draft, never fed, and the target's
    token). Its next round feeds them in one call with ``num_valid = num_pending``.
    """

    cache: Any  # the draft model's decode cache; lengths int32 [batch]
    pending: jax.Array  # int32 [batch, 2]  unread context tokens, left-aligned
    num_pending: jax.Array  # int32 [batch]  1 or 2


@struct.dataclass
class ModelDraft:
    """A draft model (any :class:`decoding.protocol.DecodeModel` with the target's vocabulary).

    ``model`` is static (hashable); ``params`` and ``cache`` (an empty or partly filled decode
    cache of the draft, same batch as the target's) are traced. The draft may be the target
    itself, a smaller model, or a perturbed copy.
    """

    model: Any = struct.field(pytree_node=False)
    params: Any
    cache: Any

    def check(
        self,
        target_vocab: int,
        prompt_lengths: np.ndarray,  # int32 [batch]
        limits: np.ndarray,  # int32 [batch]
        num_draft_tokens: int,
    ) -> None:
        """Live arrays, a well-formed cache with room for the whole run, the target's vocabulary."""
        validation.check_live("speculative_generate", "draft cache", self.cache)
        validation.check_live("speculative_generate", "draft params", self.params)
        draft_lengths = validation.check_cache(self.cache, prompt_lengths.shape[0], "draft cache")
        check_room("draft", draft_lengths, prompt_lengths, limits, num_draft_tokens, self.cache.capacity)
        draft_vocab = validation.infer_vocab_size(self.model, self.params, self.cache)
        if draft_vocab != target_vocab:
            raise ValueError(f"the draft model's vocabulary ({draft_vocab}) differs from the target's ({target_vocab})")

    def caches(self) -> tuple:
        return (self.cache,)

    def start(
        self,
        prompts: jax.Array,  # int32 [batch, P], right-padded
        prompt_lengths: jax.Array,  # int32 [batch]
        first_tokens: jax.Array,  # int32 [batch]
        context_width: int,
    ) -> ModelDraftState:
        """Prefills the draft cache with the prompts; the first token stays pending."""
        del context_width
        _, cache = self.model(self.params, prompts, self.cache, prompt_lengths.astype(jnp.int32))
        pending = jnp.stack([first_tokens, jnp.zeros_like(first_tokens)], axis=1).astype(jnp.int32)
        return ModelDraftState(cache=cache, pending=pending, num_pending=jnp.ones_like(first_tokens, jnp.int32))

    def propose(
        self,
        state: ModelDraftState,
        num_tokens: int,
        sampler: Any,
        keys: jax.Array,  # key [batch]
        constraint: Any,
        constraint_state: Any,  # leaves [batch, ...]
    ) -> tuple[ModelDraftState, Proposal]:
        """``num_tokens`` (static) autoregressive draft steps: the first feeds the pending tokens,
        each later one the previous draft. Draft ``j`` is drawn with ``fold_in(keys[b], j)``.
        The constraint states it walks are returned in the proposal."""

        def draw(logits, cstate, j):
            scores = restrict(constraint, cstate, logits.astype(jnp.float32))
            if isinstance(sampler, Greedy):  # q is one-hot on the argmax: no softmax, no random numbers
                token = jnp.argmax(scores, axis=-1).astype(jnp.int32)
                log_q = jnp.where(jax.nn.one_hot(token, scores.shape[-1], dtype=bool), 0.0, NEG_INF)
            else:
                log_q = sampler.log_probs(scores)
                token = sample_rows(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, j), log_q)
            return token, log_q, constraint.advance(cstate, token)

        logits, cache = self.model(self.params, state.pending, state.cache, state.num_pending)
        token, log_q, cstate = draw(last_valid(logits, state.num_pending), constraint_state, 0)

        def step(carry, j):
            token, cache, cstate = carry
            ones = jnp.ones_like(token)
            logits, cache = self.model(self.params, token[:, None], cache, ones)
            next_token, log_q, next_cstate = draw(logits[:, 0], cstate, j)
            return (next_token, cache, next_cstate), (next_token, log_q, next_cstate)

        # States after d_1 (cstate) and after d_2 .. d_k (the scan's), behind the state before d_1.
        (_, cache, _), (later_tokens, later_log_q, later_states) = jax.lax.scan(
            step, (token, cache, cstate), jnp.arange(1, num_tokens, dtype=jnp.int32)
        )
        tokens = jnp.concatenate([token[:, None], jnp.moveaxis(later_tokens, 0, 1)], axis=1)
        log_q = jnp.concatenate([log_q[:, None], jnp.moveaxis(later_log_q, 0, 1)], axis=1)
        after_first = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), cstate, later_states)
        states = stack_states(constraint_state, after_first)
        return state.replace(cache=cache), Proposal(tokens=tokens, log_probs=log_q, states=states)

    def commit(
        self,
        state: ModelDraftState,
        emitted: jax.Array,  # int32 [batch, k + 1]
        num_emitted: jax.Array,  # int32 [batch]
    ) -> ModelDraftState:
        """Rolls the draft cache back to the accepted context.

        During ``propose`` the draft read its pending tokens and drafts ``d_1 .. d_{k-1}``. With
        ``m = num_emitted`` in ``1 .. k`` every emitted token but the last is a draft it read,
        so it keeps ``m - 1`` of them and the last emitted token becomes pending. With
        ``m = k + 1`` it never read ``d_k``: both ``d_k`` and the target's token are pending.
        Rows with ``m = 0`` return to where they were before ``propose``.
        """
        k = emitted.shape[1] - 1
        fed = state.num_pending + (k - 1)  # tokens read during propose
        before = state.cache.lengths - fed
        m = num_emitted
        both = m == k + 1
        last = jnp.take_along_axis(emitted, jnp.maximum(m - 1, 0)[:, None], axis=1)[:, 0]
        second_last = jnp.take_along_axis(emitted, jnp.maximum(m - 2, 0)[:, None], axis=1)[:, 0]
        pending = jnp.where(
            both[:, None],
            jnp.stack([second_last, last], axis=1),
            jnp.stack([last, jnp.zeros_like(last)], axis=1),
        )
        active = m > 0
        lengths = jnp.where(active, before + state.num_pending + jnp.minimum(m, k) - 1, before)
        return ModelDraftState(
            cache=set_lengths(state.cache, lengths),
            pending=jnp.where(active[:, None], pending, state.pending),
            num_pending=jnp.where(active, 1 + both.astype(jnp.int32), state.num_pending),
        )

    def shardings(self, rows, replicated, params):
        del replicated
        return self.replace(params=params(self.params), cache=rows)


@struct.dataclass
class LookupState:
    """Each row's context (prompt, then emitted tokens) for n-gram lookup."""

    context: jax.Array  # int32 [batch, context_width]  left-aligned, zeros past the length
    length: jax.Array  # int32 [batch]  valid tokens of each row's context


@struct.dataclass
class PromptLookupDraft:
    """N-gram prompt lookup on device (no model).

    Finds the most recent earlier occurrence of each row's last ``ngram`` context tokens and
    proposes the tokens that followed it; when fewer than ``k`` followed, the copied span
    repeats (a periodic continuation). Without a match it proposes the last token ``k``
    times. ``q`` is one-hot on each proposal. Under a constraint a proposal the automaton does
    not allow is left as it is: the target gives it probability 0, so verification rejects it.

    ``ngram`` (>= 1) and ``vocab_size`` are static.

    Example, ngram = 2, k = 3, context ``5 6 7 8 5 6``: the last bigram ``5 6`` occurred at
    position 0, followed by ``7 8 5``: the draft is ``7 8 5``.
    """

    ngram: int = struct.field(pytree_node=False)
    vocab_size: int = struct.field(pytree_node=False)

    def check(
        self,
        target_vocab: int,
        prompt_lengths: np.ndarray,  # int32 [batch]
        limits: np.ndarray,  # int32 [batch]
        num_draft_tokens: int,
    ) -> None:
        del prompt_lengths, limits, num_draft_tokens
        if self.vocab_size != target_vocab:
            raise ValueError(f"PromptLookupDraft vocab_size {self.vocab_size} differs from the target's {target_vocab}")

    def caches(self) -> tuple:
        return ()

    def __post_init__(self):
        if self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {self.ngram}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {self.vocab_size}")

    def start(
        self,
        prompts: jax.Array,  # int32 [batch, P], right-padded
        prompt_lengths: jax.Array,  # int32 [batch]
        first_tokens: jax.Array,  # int32 [batch]
        context_width: int,
    ) -> LookupState:
        """The context buffer (``context_width`` static columns) holding prompt + first token."""
        batch, width = prompts.shape
        if context_width < width + 1:
            raise ValueError(f"context_width {context_width} leaves no room after prompts of width {width}")
        columns = jnp.arange(width)[None, :]
        prompts = jnp.where(columns < prompt_lengths[:, None], prompts, 0).astype(jnp.int32)
        context = jnp.zeros((batch, context_width), jnp.int32).at[:, :width].set(prompts)
        context = context.at[jnp.arange(batch), prompt_lengths].set(first_tokens.astype(jnp.int32))
        return LookupState(context=context, length=prompt_lengths.astype(jnp.int32) + 1)

    def _latest_match(self, state: LookupState) -> jax.Array:  # int32 [batch]
        """Where the most recent earlier occurrence of each row's last ``ngram`` tokens starts
        (-1: none)."""
        width = state.context.shape[1]
        n = self.ngram
        if n >= width:  # the context buffer cannot hold an n-gram plus a following token
            return jnp.full(state.length.shape, -1, jnp.int32)
        starts = jnp.arange(width - n + 1, dtype=jnp.int32)
        tail_at = jnp.maximum(state.length[:, None] - n + jnp.arange(n)[None, :], 0)
        tail = jnp.take_along_axis(state.context, tail_at, axis=1)  # [batch, n]
        # An occurrence must end before the last token, so at least one token follows it.
        matches = (starts[None, :] + n < state.length[:, None]) & (state.length[:, None] > n)  # [batch, starts]
        for i in range(n):  # context[b, s + i] == tail[b, i], as shifted slices (one fused compare)
            matches = matches & (state.context[:, i : width - n + 1 + i] == tail[:, i : i + 1])
        return jnp.max(jnp.where(matches, starts[None, :], -1), axis=1)

    def lookup(self, state: LookupState, num_tokens: int) -> jax.Array:  # int32 [batch, k]
        """The proposed tokens (see the class docstring)."""
        latest = self._latest_match(state)
        follow = latest + self.ngram  # [batch]
        available = jnp.maximum(state.length - follow, 1)
        steps = jnp.arange(num_tokens)[None, :]
        copied = jnp.take_along_axis(state.context, follow[:, None] + steps % available[:, None], axis=1)
        last = jnp.take_along_axis(state.context, (state.length - 1)[:, None], axis=1)
        return jnp.where((latest >= 0)[:, None], copied, last).astype(jnp.int32)

    def propose(
        self,
        state: LookupState,
        num_tokens: int,
        sampler: Any,
        keys: jax.Array,  # key [batch]
        constraint: Any,
        constraint_state: Any,  # leaves [batch, ...]
    ) -> tuple[LookupState, Proposal]:
        """Deterministic proposals with one-hot ``q``; the sampler and keys are unused."""
        del sampler, keys
        tokens = self.lookup(state, num_tokens)
        log_q = jnp.where(jax.nn.one_hot(tokens, self.vocab_size, dtype=bool), 0.0, NEG_INF)
        return state, Proposal(tokens=tokens, log_probs=log_q, states=states_along(constraint, constraint_state, tokens))

    def commit(
        self,
        state: LookupState,
        emitted: jax.Array,  # int32 [batch, k + 1]
        num_emitted: jax.Array,  # int32 [batch]
    ) -> LookupState:
        """Appends each row's ``num_emitted`` tokens to its context."""
        batch, width = state.context.shape
        slots = jnp.arange(emitted.shape[1])[None, :]
        columns = jnp.where(slots < num_emitted[:, None], state.length[:, None] + slots, width)
        context = state.context.at[jnp.arange(batch)[:, None], columns].set(emitted, mode="drop")
        return LookupState(context=context, length=state.length + num_emitted)

    def shardings(self, rows, replicated, params):
        del rows, replicated, params
        return self


def check_num_draft_tokens(k: Any) -> int:
    """``k`` as a Python int >= 1, or a ValueError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"num_draft_tokens must be a positive int, got {k!r}")
    return int(k)


def check_room(
    which: str,
    cache_lengths: np.ndarray,  # int32 [batch]
    prompt_lengths: np.ndarray,  # int32 [batch]
    limits: np.ndarray,  # int32 [batch]
    k: int,
    capacity: int,
) -> None:
    """Verification writes ``k + 1`` entries past the last emitted token, so each cache row
    needs room for cached + prompt + max_new_tokens + k + 1 positions (host-side check)."""
    need = cache_lengths + prompt_lengths + limits + k + 1
    if np.any(need > capacity):
        row = int(np.argmax(need - capacity))
        raise ValueError(
            f"the {which} cache (capacity {capacity}) is too small: row {row} needs {cache_lengths[row]} cached + "
            f"{prompt_lengths[row]} prompt + {limits[row]} new + num_draft_tokens {k} + 1 = {need[row]} positions"
        )


def check_draft(
    draft: Any,
    k: int,
    target_vocab: int,
    prompt_lengths: np.ndarray,  # int32 [batch]
    limits: np.ndarray,  # int32 [batch]
) -> None:
    """The draft follows :class:`DraftSource` and passes its own host-side checks."""
    missing = [name for name in DRAFT_METHODS if not callable(getattr(draft, name, None))]
    if missing:
        raise ValueError(
            f"draft must be a draft source (decoding.drafts.DraftSource: {', '.join(DRAFT_METHODS)}), e.g. a "
            f"ModelDraft or a PromptLookupDraft; a {type(draft).__name__} lacks {', '.join(missing)}"
        )
    draft.check(target_vocab, prompt_lengths, limits, k)
