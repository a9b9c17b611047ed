"""The seams are open: a new constraint and a new draft source are one class each, defined here,
and every decoder takes them with no edit in ``decoding/``.

* :class:`NoRepeat`: a fixed-length automaton whose state is a pytree (the previous token and
  a count): no token may follow itself. Greedy ``generate`` under it equals a NumPy loop that
  masks the bigram model's logits by hand; beam search (dense path: it has no ``candidates``;
  enough beams to keep every 2-token prefix, so it is exact) returns only sequences without
  repeats, the best of them the brute-force best.
* :class:`EchoDraft`: a draft source proposing the last emitted token ``k`` times (a repeat,
  which ``NoRepeat`` forbids: verification must reject every draft); speculative greedy
  decoding with it equals greedy ``generate``.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from fake_models import BigramModel, TokenCache, random_params
from flax import struct

from decoding import beam_search, generate, speculative_generate
from decoding.drafts import Proposal, states_along

VOCAB, LENGTH, BATCH = 8, 3, 4
PARAMS = random_params(VOCAB, seed=21, scale=2.0)
PROMPTS = np.array([[1, 2], [3, 3], [5, 0], [7, 6]])
PROMPT_LENGTHS = np.array([2, 2, 1, 2])


@struct.dataclass
class RepeatState:
    previous: jax.Array  # int32 [...]  the last token, -1 before the first
    count: jax.Array  # int32 [...]  tokens so far


@struct.dataclass
class NoRepeat:
    """Outputs of exactly ``depth`` tokens in which no token follows itself."""

    vocab_size: int = struct.field(pytree_node=False)
    depth: int = struct.field(pytree_node=False)
    fixed_length: bool = struct.field(pytree_node=False, default=True)
    eos_id: None = struct.field(pytree_node=False, default=None)

    def initial_state(self, shape):
        return RepeatState(previous=jnp.full(shape, -1, jnp.int32), count=jnp.zeros(shape, jnp.int32))

    def allowed_mask(self, state):
        tokens = jnp.arange(self.vocab_size, dtype=jnp.int32)
        return (tokens != state.previous[..., None]) & (state.count < self.depth)[..., None]

    def advance(self, state, token):
        return RepeatState(previous=jnp.asarray(token, jnp.int32), count=state.count + 1)

    def is_complete(self, state):
        return state.count >= self.depth


@struct.dataclass
class EchoState:
    last: jax.Array  # int32 [batch]


@struct.dataclass
class EchoDraft:
    """Proposes the last emitted token ``k`` times (one-hot q)."""

    vocab_size: int = struct.field(pytree_node=False)

    def check(self, target_vocab, prompt_lengths, limits, num_draft_tokens):
        if target_vocab != self.vocab_size:
            raise ValueError("vocabulary mismatch")

    def caches(self):
        return ()

    def start(self, prompts, prompt_lengths, first_tokens, context_width):
        return EchoState(last=first_tokens)

    def propose(self, state, num_tokens, sampler, keys, constraint, constraint_state) -> tuple[Any, Proposal]:
        tokens = jnp.repeat(state.last[:, None], num_tokens, axis=1)
        log_q = jnp.where(jax.nn.one_hot(tokens, self.vocab_size, dtype=bool), 0.0, -jnp.inf)
        return state, Proposal(tokens, log_q, states_along(constraint, constraint_state, tokens))

    def commit(self, state, emitted, num_emitted):
        last = jnp.take_along_axis(emitted, jnp.maximum(num_emitted - 1, 0)[:, None], axis=1)[:, 0]
        return EchoState(last=jnp.where(num_emitted > 0, last, state.last))

    def shardings(self, rows, replicated, params):
        return self  # no arrays of its own


def _numpy_greedy(prompt: list[int], no_repeat: bool = True) -> list[int]:
    table = np.asarray(PARAMS, np.float64)
    out, previous = [], None
    last = prompt[-1]
    for _ in range(LENGTH):
        logits = table[last].copy()
        if previous is not None and no_repeat:
            logits[previous] = -np.inf
        token = int(np.argmax(logits))
        out.append(token)
        previous = last = token
    return out


def _log_prob(prompt: list[int], seq: tuple[int, ...]) -> float:
    table = np.asarray(PARAMS, np.float64)
    log_softmax = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
    context = [prompt[-1], *seq]
    return float(sum(log_softmax[a, b] for a, b in zip(context[:-1], context[1:])))


def test_a_constraint_defined_outside_the_library_drives_generate_and_beam_search():
    constraint = NoRepeat(vocab_size=VOCAB, depth=LENGTH)
    out = generate(BigramModel(), PARAMS, TokenCache.empty(BATCH, 16), PROMPTS, PROMPT_LENGTHS, constraint=constraint)
    assert out.tokens.shape == (BATCH, LENGTH) and np.asarray(out.complete).all()
    repeats = 0
    for row in range(BATCH):
        prompt = PROMPTS[row, : PROMPT_LENGTHS[row]].tolist()
        assert np.asarray(out.tokens[row]).tolist() == _numpy_greedy(prompt)
        free = _numpy_greedy(prompt, no_repeat=False)
        repeats += any(a == b for a, b in zip(free, free[1:]))
    assert repeats > 0  # unconstrained greedy would repeat somewhere: the constraint acted

    beams = beam_search(BigramModel(), PARAMS, TokenCache.empty(BATCH, 16), PROMPTS, PROMPT_LENGTHS, num_beams=VOCAB * VOCAB,
                        constraint=constraint, length_penalty=0.0)  # >= every 2-token prefix: exact
    for row in range(BATCH):
        prompt = PROMPTS[row, : PROMPT_LENGTHS[row]].tolist()
        allowed = [s for s in itertools.product(range(VOCAB), repeat=LENGTH) if all(a != b for a, b in zip(s, s[1:]))]
        best = max(allowed, key=lambda s: _log_prob(prompt, s))
        valid = np.asarray(beams.valid[row])
        sequences = np.asarray(beams.sequences[row])[valid]
        assert all(all(a != b for a, b in zip(s, s[1:])) for s in sequences.tolist())
        assert tuple(sequences[0].tolist()) == best
        np.testing.assert_allclose(float(beams.log_probs[row, 0]), _log_prob(prompt, best), rtol=1e-5)


def test_a_draft_source_defined_outside_the_library_drives_speculative_decoding():
    constraint = NoRepeat(vocab_size=VOCAB, depth=LENGTH)
    reference = generate(BigramModel(), PARAMS, TokenCache.empty(BATCH, 16), PROMPTS, PROMPT_LENGTHS,
                         constraint=constraint)
    spec = speculative_generate(BigramModel(), PARAMS, TokenCache.empty(BATCH, 16), PROMPTS, PROMPT_LENGTHS,
                                draft=EchoDraft(VOCAB), num_draft_tokens=2, max_new_tokens=LENGTH,
                                constraint=constraint)
    np.testing.assert_array_equal(np.asarray(spec.tokens), np.asarray(reference.tokens))
    # Every echo repeats the last token, which the constraint forbids: nothing is accepted.
    accepted = np.asarray(spec.stats.accepted)
    assert (accepted[accepted >= 0] == 0).all() and (accepted >= 0).any()
