"""Token samplers and logits processors: small frozen value objects.

Every numeric knob is a pytree leaf, so it is *traced*: a new temperature, top-k, top-p or
min-p value does not recompile. A knob may be a scalar or a per-row array ``[batch]``.
Which sampler (its Python type) and which processors (their order) are part of the pytree
structure, so changing *those* recompiles. Each knob field declares its dtype with
:func:`knob`; the decoding entry points cast every knob to it
(:func:`decoding.validation.normalize_sampler`), so ``Temperature(1)``, ``Temperature(0.7)``
and ``Temperature(jnp.float32(1))`` share one compiled loop.

Example::

    sampler = Categorical((Temperature(0.7), TopP(0.9)))
    tokens = sampler.sample(keys, logits)    # keys: key [batch], one per row -> int32 [batch]
    log_p = sampler.log_probs(logits)        # float32 [batch, vocab], -inf outside the support

Randomness is per row: row ``b`` is drawn with ``keys[b]`` alone, so its token never depends
on its batchmates or on how the batch is split over devices.

``log_probs`` is the processed distribution actually sampled from; speculative decoding
verifies drafts against it.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from flax import struct

NEG_INF = -jnp.inf
KNOB_DTYPE = "knob_dtype"  # field metadata key read by decoding.validation.normalize_sampler


def knob(dtype=jnp.float32):
    """A traced knob field whose values the decoding entry points cast to ``dtype``
    (float32 unless declared otherwise; integer knobs such as ``TopK.k`` declare int32)."""
    return struct.field(metadata={KNOB_DTYPE: dtype})


def _per_row(value, logits: jax.Array) -> jax.Array:
    """A scalar or [batch] knob as float32 [batch, 1] (or [..., 1]) broadcastable against logits."""
    value = jnp.asarray(value)
    return jnp.broadcast_to(value.reshape(value.shape + (1,) * (logits.ndim - value.ndim)), logits.shape[:-1] + (1,))


class LogitsProcessor(Protocol):
    """Maps logits float32 [batch, vocab] to logits of the same shape; removed tokens get -inf."""

    def __call__(self, logits: jax.Array) -> jax.Array: ...


@struct.dataclass
class Temperature:
    """Divides logits by ``value`` (float32 [] or [batch], traced). A row with 0 becomes greedy."""

    value: jax.Array | float = knob(jnp.float32)

    def __call__(self, logits: jax.Array) -> jax.Array:
        t = _per_row(self.value, logits).astype(logits.dtype)
        is_greedy = t <= 0
        scaled = logits / jnp.where(is_greedy, 1.0, t)
        argmax_only = jnp.where(logits >= jnp.max(logits, axis=-1, keepdims=True), 0.0, NEG_INF)
        return jnp.where(is_greedy, argmax_only, scaled)


@struct.dataclass
class TopK:
    """Keeps the ``k`` largest logits (int32 [] or [batch], traced; k <= 0 keeps all). Ties at the
    k-th value are all kept."""

    k: jax.Array | int = knob(jnp.int32)

    def __call__(self, logits: jax.Array) -> jax.Array:
        vocab = logits.shape[-1]
        k = _per_row(self.k, logits).astype(jnp.int32)
        k = jnp.where(k <= 0, vocab, jnp.minimum(k, vocab))
        descending = -jnp.sort(-logits, axis=-1)
        kth = jnp.take_along_axis(descending, k - 1, axis=-1)
        return jnp.where(logits >= kth, logits, NEG_INF)


@struct.dataclass
class TopP:
    """Nucleus: keeps the smallest set of most likely tokens whose probability reaches ``p``
    (float32 [] or [batch] in [0, 1], traced; 1 keeps all). The most likely token is always kept."""

    p: jax.Array | float = knob(jnp.float32)

    def __call__(self, logits: jax.Array) -> jax.Array:
        p = _per_row(self.p, logits).astype(jnp.float32)
        descending = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(descending.astype(jnp.float32), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = mass_before < p
        kept = kept.at[..., 0].set(True)
        threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
        return jnp.where((logits >= threshold) | (p >= 1.0), logits, NEG_INF)


@struct.dataclass
class MinP:
    """Keeps tokens whose probability is at least ``p`` times the top token's
    (float32 [] or [batch], traced; p <= 0 keeps all)."""

    p: jax.Array | float = knob(jnp.float32)

    def __call__(self, logits: jax.Array) -> jax.Array:
        p = _per_row(self.p, logits).astype(jnp.float32)
        top = jnp.max(logits, axis=-1, keepdims=True)
        # prob / top_prob >= p  <=>  logit - top_logit >= log(p)
        keep = (logits - top).astype(jnp.float32) >= jnp.log(jnp.maximum(p, 1e-38))
        return jnp.where(keep | (p <= 0), logits, NEG_INF)


def sample_rows(
    keys: jax.Array,  # key [batch]
    log_probs: jax.Array,  # float32 [batch, vocab], -inf outside the support
) -> jax.Array:  # int32 [batch]
    """One token per row from ``exp(log_probs)``, row ``b`` drawn with ``keys[b]`` alone
    (Gumbel-max), so the result does not depend on the batch or its split."""
    gumbel = jax.vmap(lambda key: jax.random.gumbel(key, log_probs.shape[-1:], jnp.float32))(keys)
    return jnp.argmax(log_probs + gumbel, axis=-1).astype(jnp.int32)


class Sampler(Protocol):
    """Chooses one token per row from logits float32 [batch, vocab]."""

    def log_probs(self, logits: jax.Array) -> jax.Array:
        """float32 [batch, vocab]: the normalized processed distribution sampled from."""
        ...

    def sample(self, keys: jax.Array, logits: jax.Array) -> jax.Array:
        """int32 [batch]; ``keys``: key [batch], row ``b`` drawn with ``keys[b]`` alone."""
        ...


@struct.dataclass
class Greedy:
    """Always the most likely token (the lowest id among ties). Needs no key."""

    def log_probs(self, logits: jax.Array) -> jax.Array:
        choice = jnp.argmax(logits, axis=-1)
        return jnp.where(jax.nn.one_hot(choice, logits.shape[-1], dtype=bool), 0.0, NEG_INF)

    def sample(self, keys: jax.Array, logits: jax.Array) -> jax.Array:
        del keys
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@struct.dataclass
class Categorical:
    """Samples from softmax of the logits after ``processors`` are applied in order."""

    processors: tuple = ()

    def process(self, logits: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        for processor in self.processors:
            logits = processor(logits)
        return logits

    def log_probs(self, logits: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(self.process(logits), axis=-1)

    def sample(self, keys: jax.Array, logits: jax.Array) -> jax.Array:
        return sample_rows(keys, self.log_probs(logits))
