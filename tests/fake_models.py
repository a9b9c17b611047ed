"""Deterministic fake models that satisfy ``decoding.protocol`` (for exact expected outputs).

* :class:`BigramModel`: logits of a position depend only on that position's token
  (``params`` is a float32 [vocab, vocab] table). Sequence log-probabilities are easy to
  enumerate by brute force, which makes it the oracle model for beam search.
* :class:`HistoryModel`: logits depend on the sum of every visible token in the cache, so a
  cache whose stale entries leak, or whose rows are reordered wrongly, changes the output.
* :func:`counting_params`: a bigram table whose argmax after token t is (t + 1) % vocab.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class TokenCache:
    """Stores the raw tokens of each row; follows the decoding cache contract."""

    tokens: jax.Array  # int32 [batch, capacity]
    lengths: jax.Array  # int32 [batch]

    @property
    def capacity(self) -> int:
        return self.tokens.shape[1]

    @classmethod
    def empty(cls, batch: int, capacity: int) -> "TokenCache":
        return cls(
            tokens=jnp.zeros((batch, capacity), jnp.int32),
            lengths=jnp.zeros((batch,), jnp.int32),
        )


def _append(cache: TokenCache, tokens: jax.Array, num_valid: jax.Array) -> tuple[jax.Array, TokenCache]:
    """Writes tokens [batch, T] at each row's length; returns positions [batch, T] and the cache."""
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1])[None, :]
    rows = jnp.arange(tokens.shape[0])[:, None]
    written = cache.tokens.at[rows, positions].set(tokens, mode="drop")
    return positions, cache.replace(tokens=written, lengths=cache.lengths + num_valid)


@dataclasses.dataclass(frozen=True)
class BigramModel:
    """logits[b, t] = params[tokens[b, t]]; ``params``: float32 [vocab, vocab]."""

    def __call__(self, params, tokens, cache, num_valid):
        _, cache = _append(cache, tokens, num_valid)
        return params[tokens].astype(jnp.float32), cache


@dataclasses.dataclass(frozen=True)
class HistoryModel:
    """logits[b, t] = params[(sum of the row's tokens at positions <= p) % vocab].

    ``params``: float32 [vocab, vocab]. Reads the whole visible cache, so stale entries past
    a row's length must be masked for the output to be right.
    """

    def __call__(self, params, tokens, cache, num_valid):
        positions, cache = _append(cache, tokens, num_valid)
        slots = jnp.arange(cache.capacity)
        visible = slots[None, None, :] <= positions[:, :, None]  # [batch, T, capacity]
        history = jnp.sum(jnp.where(visible, cache.tokens[:, None, :], 0), axis=-1)
        vocab = params.shape[0]
        return params[history % vocab].astype(jnp.float32), cache


def random_params(vocab: int, seed: int = 0, scale: float = 3.0) -> jax.Array:
    """A random float32 [vocab, vocab] logit table."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(vocab, vocab)) * scale, jnp.float32)


def counting_params(vocab: int) -> jax.Array:
    """A float32 [vocab, vocab] table whose argmax after token t is (t + 1) % vocab."""
    table = np.full((vocab, vocab), -5.0, np.float32)
    table[np.arange(vocab), (np.arange(vocab) + 1) % vocab] = 5.0
    return jnp.asarray(table)
