"""The decode step (``Decoder``), its cache (``KVCache``), parameter init and a no-cache forward.

``Decoder(config)`` follows ``decoding.protocol.DecodeModel``::

    model = Decoder(preset("tiny"))
    params = init_params(model.config, jax.random.key(0))
    cache = init_cache(model.config, batch=2, capacity=64)
    logits, cache = model(params, prompts, cache, prompt_lengths)   # prefill, right-padded
    logits, cache = model(params, next_tokens[:, None], cache, jnp.ones(2, jnp.int32))  # one step
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from models.beam_cache import BeamKVCache
from models.config import LlamaConfig
from models.layers import Transformer

Params = Any  # the nested dict returned by init_params (see models.layers for its layout)


@struct.dataclass
class KVCache:
    """Per-layer key/value buffers and per-row valid lengths (every leaf batch-leading).

    Entries of a row at or beyond ``lengths[row]`` are stale: attention never reads them.
    """

    keys: tuple[jax.Array, ...]  # dtype [batch, n_kv_heads, capacity, head_dim], one per layer
    values: tuple[jax.Array, ...]  # dtype [batch, n_kv_heads, capacity, head_dim], one per layer
    lengths: jax.Array  # int32 [batch]

    @property
    def capacity(self) -> int:
        """Positions per row (static)."""
        return self.keys[0].shape[2]


def init_cache(config: LlamaConfig, batch: int, capacity: int) -> KVCache:
    """An empty cache (all lengths 0) in ``config.dtype``.

    ``batch`` and ``capacity`` are Python ints; they fix the cache shapes, so a new value
    recompiles every jitted function that takes the cache.
    """
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"init_cache: batch must be a positive int, got {batch!r}")
    if not isinstance(capacity, int) or capacity <= 0:
        raise ValueError(f"init_cache: capacity must be a positive int, got {capacity!r}")
    config.check_length(capacity, "init_cache: a cache capacity")
    shape = (batch, config.n_kv_heads, capacity, config.head_dim)
    return KVCache(
        keys=tuple(jnp.zeros(shape, config.dtype) for _ in range(config.n_layers)),
        values=tuple(jnp.zeros(shape, config.dtype) for _ in range(config.n_layers)),
        lengths=jnp.zeros((batch,), jnp.int32),
    )


def init_params(config: LlamaConfig, key: jax.Array) -> Params:
    """Random parameters (normal(0.02) weights, unit norm scales) in ``config.param_dtype``.

    ``config`` is static; ``key`` is a traced PRNG key.
    """
    return _init_params_jit(config, key)


@functools.partial(jax.jit, static_argnums=0)
def _init_params_jit(config: LlamaConfig, key: jax.Array) -> Params:
    dummy = jnp.zeros((1, 1), jnp.int32)
    return Transformer(config).init(key, dummy, dummy, None)["params"]


def forward(
    config: LlamaConfig,
    params: Params,
    tokens: jax.Array,  # int32 [batch, S]
) -> jax.Array:  # float32 [batch, S, vocab]
    """Full causal forward over whole sequences starting at position 0, no cache.

    The oracle for the cached path, and the training forward. ``config`` is static (jit it
    with ``static_argnums=0``); ``params`` and ``tokens`` are traced. Right padding is
    harmless: position ``s`` only sees positions ``<= s``.
    """
    if tokens.ndim != 2:
        raise ValueError(f"forward: tokens must be int32 [batch, S], got shape {tokens.shape}")
    config.check_length(tokens.shape[1], "forward: a sequence")
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits, _ = Transformer(config).apply({"params": params}, tokens, positions, None)
    return logits


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A pure decode step for ``config``; hashable, so it can be a static jit argument.

    ``model(params, tokens, cache, num_valid) -> (logits, cache)``:

    * ``tokens``: int32 [batch, T], right-padded; row ``b``'s token ``t`` sits at position
      ``cache.lengths[b] + t``. T (a shape) is static; values are traced.
    * ``num_valid``: int32 [batch] (traced), how many of the T tokens of each row are real;
      it is clipped to ``[0, T]`` and the new lengths are ``cache.lengths + num_valid``.
    * ``cache``: a :class:`KVCache` of this config. The T keys/values of each row are
      scattered at its positions (positions >= capacity are dropped, so valid entries are
      never clobbered); padding tokens land past the new length, where they are stale.
      Or a :class:`models.beam_cache.BeamKVCache`: a call with its ``queries`` rows (before
      the expansion, static) writes the shared prefix; a call with ``queries * beams`` rows
      (after it) writes each row's suffix and reads its query's prefix once for all beams.
    * Returns logits float32 [batch, T, vocab]; entry ``[b, t]`` is the next-token
      distribution after position ``lengths[b] + t``; entries with ``t >= num_valid[b]`` or
      at positions >= capacity are meaningless.
    """

    config: LlamaConfig

    def __call__(
        self,
        params: Params,
        tokens: jax.Array,  # int32 [batch, T]
        cache: KVCache | BeamKVCache,
        num_valid: jax.Array,  # int32 [batch]
    ) -> tuple[jax.Array, KVCache | BeamKVCache]:  # float32 [batch, T, vocab], cache
        tokens = jnp.asarray(tokens, jnp.int32)
        num_valid = jnp.asarray(num_valid, jnp.int32)
        self._check(tokens, cache, num_valid)
        steps = tokens.shape[1]
        positions = cache.lengths[:, None] + jnp.arange(steps, dtype=jnp.int32)[None, :]
        lengths = cache.lengths + jnp.clip(num_valid, 0, steps)
        if isinstance(cache, BeamKVCache):
            logits, layers = Transformer(self.config).apply({"params": params}, tokens, positions, cache.layers())
            return logits, cache.with_layers(layers, lengths)
        kv = tuple(zip(cache.keys, cache.values))
        logits, kv = Transformer(self.config).apply({"params": params}, tokens, positions, kv)
        keys, values = zip(*kv)
        return logits, cache.replace(keys=tuple(keys), values=tuple(values), lengths=lengths)

    def _check(self, tokens: jax.Array, cache: KVCache | BeamKVCache, num_valid: jax.Array) -> None:
        cfg = self.config
        if tokens.ndim != 2:
            raise ValueError(f"Decoder: tokens must be int32 [batch, T], got shape {tokens.shape}")
        if isinstance(cache, BeamKVCache):
            cache.check(cfg, tokens.shape[0])
        else:
            if len(cache.keys) != cfg.n_layers or len(cache.values) != cfg.n_layers:
                raise ValueError(f"Decoder: cache has {len(cache.keys)} layers, config has {cfg.n_layers}")
            expected = (tokens.shape[0], cfg.n_kv_heads, cache.capacity, cfg.head_dim)
            if cache.keys[0].shape != expected:
                raise ValueError(
                    f"Decoder: cache buffers have shape {cache.keys[0].shape}, expected [batch, n_kv_heads, "
                    f"capacity, head_dim] = {expected} for tokens of shape {tokens.shape}"
                )
        if num_valid.shape != (tokens.shape[0],) or cache.lengths.shape != (tokens.shape[0],):
            raise ValueError(
                f"Decoder: num_valid {num_valid.shape} and cache.lengths {cache.lengths.shape} must both be "
                f"[batch] = ({tokens.shape[0]},)"
            )
