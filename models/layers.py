"""Flax linen building blocks of the Llama-family decoder (numerics follow Hugging Face).

Every module is used through ``Module.apply`` with explicit parameters and an explicit
key/value cache in and out: no mutable Flax collections.

Parameter layout (``init_params`` returns this tree; Linear kernels are [in, out])::

    embed/embedding                      [vocab, dim]
    layers_{i}/attn_norm/scale           [dim]
    layers_{i}/attn/{q,k,v}_proj/kernel  [dim, heads * head_dim]   (+ bias [heads * head_dim])
    layers_{i}/attn/o_proj/kernel        [n_heads * head_dim, dim]
    layers_{i}/mlp_norm/scale            [dim]
    layers_{i}/mlp/{gate,up}_proj/kernel [dim, hidden_dim]
    layers_{i}/mlp/down_proj/kernel      [hidden_dim, dim]
    final_norm/scale                     [dim]
    lm_head/kernel                       [dim, vocab]   (absent when embeddings are tied)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from models.config import LlamaConfig

_INIT = nn.initializers.normal(stddev=0.02)

# A layer's cache: keys and values, each dtype [batch, n_kv_heads, capacity, head_dim] (head-major:
# attention reads each (row, kv head) as one contiguous [capacity, head_dim] matrix).
LayerKV = tuple[jax.Array, jax.Array]


@struct.dataclass
class SharedPrefixKV:
    """One layer of a :class:`models.beam_cache.BeamKVCache`: the prompt's keys/values once per
    query, and a short per-beam suffix. Rows are ``queries * beams``, beam-major within a query
    (row ``r`` belongs to query ``r // beams``). ``expanded`` is static (pytree metadata).

    Before the expansion (``expanded=False``) a call has ``queries`` rows and writes the prefix;
    after it, ``queries * beams`` rows that write their own suffix slot ``position -
    prefix_lengths[query]`` and read their query's prefix plus their own suffix.
    """

    prefix_keys: jax.Array  # dtype [queries, n_kv_heads, prefix_capacity, head_dim]
    prefix_values: jax.Array  # dtype [queries, n_kv_heads, prefix_capacity, head_dim]
    prefix_lengths: jax.Array  # int32 [queries]  valid prefix entries (read after the expansion)
    keys: jax.Array  # dtype [queries * beams, n_kv_heads, suffix_capacity, head_dim]
    values: jax.Array  # dtype [queries * beams, n_kv_heads, suffix_capacity, head_dim]
    expanded: bool = struct.field(pytree_node=False)  # static: False = prefill phase, True = beam rows


LayerCache = LayerKV | SharedPrefixKV


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps)`` computed in float32, cast back, times ``scale``."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # x: dtype [..., dim]
        scale = self.param("scale", nn.initializers.ones, (self.config.dim,), self.config.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.norm_eps)
        return normed.astype(self.config.dtype) * scale.astype(self.config.dtype)


def apply_rope(
    x: jax.Array,  # dtype [batch, T, heads, head_dim]
    positions: jax.Array,  # int32 [batch, T]
    config: LlamaConfig,
) -> jax.Array:  # dtype [batch, T, heads, head_dim]
    """Rotary embedding in the rotate_half layout: pairs are (i, i + head_dim // 2)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(config.rope_inv_freq)  # [batch, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


def attend(
    q: jax.Array,  # dtype [batch, T, n_heads, head_dim]
    k: jax.Array,  # dtype [batch, n_kv_heads, S, head_dim]
    v: jax.Array,  # dtype [batch, n_kv_heads, S, head_dim]
    q_positions: jax.Array,  # int32 [batch, T]
    k_positions: jax.Array,  # int32 [batch, S]
) -> jax.Array:  # dtype [batch, T, n_heads * head_dim]
    """Grouped-query attention: query at position p sees keys at positions <= p only.

    Query head h reads kv head ``h // group``. The T x group queries of one kv head form one
    [T * group, head_dim] block, so each (row, kv head) is one matrix product against its
    keys; with keys and values head-major, no key or value is transposed or copied (decoding
    reads the whole cache every step, so this is most of attention's memory traffic).
    """
    batch, t, n_heads, head_dim = q.shape
    n_kv_heads, s = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    blocks = q.reshape(batch, t, n_kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
    blocks = blocks.reshape(batch, n_kv_heads, t * group, head_dim)  # row t * group + g
    by_row_and_head = ((0, 1), (0, 1))
    scores = jax.lax.dot_general(  # float32 [batch, n_kv_heads, T * group, S]
        blocks, k, (((3,), (3,)), by_row_and_head), preferred_element_type=jnp.float32
    )
    scores = scores * (head_dim**-0.5)
    visible = k_positions[:, None, :] <= q_positions[:, :, None]  # [batch, T, S]
    visible = jnp.repeat(visible, group, axis=1)[:, None]  # [batch, 1, T * group, S]
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jax.lax.dot_general(probs, v, (((3,), (2,)), by_row_and_head))  # [batch, n_kv_heads, T * group, head_dim]
    out = out.reshape(batch, n_kv_heads, t, group, head_dim).transpose(0, 2, 1, 3, 4)
    return out.reshape(batch, t, n_heads * head_dim)


def _partial_softmax(
    scores: jax.Array,  # float32 [..., S]  -finfo.max where masked
    v: jax.Array,  # dtype [batch, heads, S, head_dim], matching the leading axes of scores
) -> tuple[jax.Array, jax.Array, jax.Array]:  # float32 [..., 1], [..., 1], [..., head_dim]
    """Max, sum of ``exp(scores - max)`` and the unnormalized ``exp(scores - max) @ v`` of one
    block of keys (softmax over several blocks = these merged by log-sum-exp). A fully masked
    block gives a finite max of -finfo.max, so its weight in the merge is exactly 0."""
    top = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - top)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    by_row_and_head = ((0, 1), (0, 1))
    out = jax.lax.dot_general(
        weights.astype(v.dtype), v, (((3,), (2,)), by_row_and_head), preferred_element_type=jnp.float32
    )
    return top, total, out


def attend_shared_prefix(
    q: jax.Array,  # dtype [rows, T, n_heads, head_dim]  rows = queries * beams, beam-major
    prefix_k: jax.Array,  # dtype [queries, n_kv_heads, P, head_dim]
    prefix_v: jax.Array,  # dtype [queries, n_kv_heads, P, head_dim]
    prefix_lengths: jax.Array,  # int32 [queries]  valid prefix entries (all before every query)
    k: jax.Array,  # dtype [rows, n_kv_heads, S, head_dim]  each row's own suffix
    v: jax.Array,  # dtype [rows, n_kv_heads, S, head_dim]
    q_positions: jax.Array,  # int32 [rows, T]
    k_positions: jax.Array,  # int32 [rows, S]  position of each suffix slot
) -> jax.Array:  # dtype [rows, T, n_heads * head_dim]
    """Grouped-query attention over a shared prefix plus a per-row suffix.

    The prefix is read once per (query, kv head) for all its beams: the ``beams * T * group``
    queries of one query and kv head form one [beams * T * group, head_dim] block, one matrix
    product against the query's [P, head_dim] keys (instead of ``beams`` products against
    ``beams`` copies). The suffix is :func:`attend`'s per-row product. The two score blocks are
    joined by a log-sum-exp merge (one softmax over prefix + suffix), so no score is copied.
    A prefix slot ``j`` is visible iff ``j < prefix_lengths``; a suffix slot iff its position
    is at or before the query's.
    """
    rows, t, n_heads, head_dim = q.shape
    queries, n_kv_heads = prefix_k.shape[0], prefix_k.shape[1]
    beams, group = rows // queries, n_heads // n_kv_heads
    scale, lowest = head_dim**-0.5, jnp.finfo(jnp.float32).min
    by_row_and_head = ((0, 1), (0, 1))
    # Prefix: one block per (query, kv head), rows ordered (beam, t, g).
    blocks = q.reshape(queries, beams, t, n_kv_heads, group, head_dim).transpose(0, 3, 1, 2, 4, 5)
    blocks = blocks.reshape(queries, n_kv_heads, beams * t * group, head_dim)
    scores = jax.lax.dot_general(  # float32 [queries, n_kv_heads, beams * T * group, P]
        blocks, prefix_k, (((3,), (3,)), by_row_and_head), preferred_element_type=jnp.float32
    )
    visible = jnp.arange(prefix_k.shape[2])[None, :] < prefix_lengths[:, None]  # [queries, P]
    scores = jnp.where(visible[:, None, None, :], scores * scale, lowest)
    parts = _partial_softmax(scores, prefix_v)  # [queries, n_kv_heads, beams * T * group, 1 | head_dim]

    def to_rows(x: jax.Array) -> jax.Array:  # [queries, n_kv, beams * T * group, d] -> [rows, n_kv, T * group, d]
        x = x.reshape(queries, n_kv_heads, beams, t * group, x.shape[-1]).transpose(0, 2, 1, 3, 4)
        return x.reshape(rows, n_kv_heads, t * group, x.shape[-1])

    top_p, total_p, out_p = (to_rows(x) for x in parts)
    # Suffix: one block per (row, kv head), as in attend.
    blocks = q.reshape(rows, t, n_kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
    blocks = blocks.reshape(rows, n_kv_heads, t * group, head_dim)
    scores = jax.lax.dot_general(  # float32 [rows, n_kv_heads, T * group, S]
        blocks, k, (((3,), (3,)), by_row_and_head), preferred_element_type=jnp.float32
    )
    visible = k_positions[:, None, :] <= q_positions[:, :, None]  # [rows, T, S]
    visible = jnp.repeat(visible, group, axis=1)[:, None]  # [rows, 1, T * group, S]
    top_s, total_s, out_s = _partial_softmax(jnp.where(visible, scores * scale, lowest), v)
    # One softmax over both blocks: the block holding the max has weight 1, so total >= 1.
    top = jnp.maximum(top_p, top_s)
    w_p, w_s = jnp.exp(top_p - top), jnp.exp(top_s - top)
    out = (out_p * w_p + out_s * w_s) / (total_p * w_p + total_s * w_s)  # [rows, n_kv, T * group, head_dim]
    out = out.astype(v.dtype).reshape(rows, n_kv_heads, t, group, head_dim).transpose(0, 2, 1, 3, 4)
    return out.reshape(rows, t, n_heads * head_dim)


def write_kv(
    buffer: jax.Array,  # dtype [batch, n_kv_heads, capacity, head_dim]
    new: jax.Array,  # dtype [batch, T, n_kv_heads, head_dim]
    positions: jax.Array,  # int32 [batch, T]
) -> jax.Array:  # dtype [batch, n_kv_heads, capacity, head_dim]
    """Scatters ``new`` at each row's ``positions``; positions >= capacity are dropped.

    The scatter runs on the [batch * n_kv_heads, capacity, head_dim] view that attention's
    matrix products read. Scattering into the 4-d buffer instead lets XLA (CPU, JAX 0.10)
    fuse the update once for the loop carry and once more for the products, which costs four
    whole-cache copies per layer per decode step inside ``lax.while_loop``; this form has none.
    """
    batch, heads, capacity, head_dim = buffer.shape
    flat = buffer.reshape(batch * heads, capacity, head_dim)
    flat_rows = (jnp.arange(batch)[:, None] * heads + jnp.arange(heads)[None, :])[:, :, None]  # [batch, heads, 1]
    head_major = new.transpose(0, 2, 1, 3).astype(buffer.dtype)  # [batch, heads, T, head_dim]
    flat = flat.at[flat_rows, positions[:, None, :]].set(head_major, mode="drop")
    return flat.reshape(batch, heads, capacity, head_dim)


def update_shared_prefix(
    kv: SharedPrefixKV,
    q: jax.Array,  # dtype [batch, T, n_heads, head_dim]  batch = queries, or queries * beams once expanded
    k: jax.Array,  # dtype [batch, T, n_kv_heads, head_dim]
    v: jax.Array,  # dtype [batch, T, n_kv_heads, head_dim]
    positions: jax.Array,  # int32 [batch, T]
) -> tuple[jax.Array, SharedPrefixKV]:  # dtype [batch, T, n_heads * head_dim], the updated layer
    """Writes the new keys/values and attends, by phase (static ``kv.expanded``).

    Prefill (``queries`` rows): written into the prefix at ``positions`` and read from it, as
    with a plain cache. Expanded (``queries * beams`` rows): written into each row's suffix at
    slot ``position - prefix_lengths[query]`` (slots outside ``[0, suffix_capacity)`` are
    dropped: a row never writes into the shared prefix) and read by
    :func:`attend_shared_prefix`.
    """
    if not kv.expanded:
        keys = write_kv(kv.prefix_keys, k, positions)
        values = write_kv(kv.prefix_values, v, positions)
        capacity = keys.shape[2]
        slots = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (q.shape[0], capacity))
        return attend(q, keys, values, positions, slots), kv.replace(prefix_keys=keys, prefix_values=values)
    suffix_capacity = kv.keys.shape[2]
    beams = q.shape[0] // kv.prefix_keys.shape[0]
    row_prefix = jnp.repeat(kv.prefix_lengths, beams)[:, None]  # int32 [rows, 1]
    slots = positions - row_prefix
    slots = jnp.where(slots >= 0, slots, suffix_capacity)  # never wrap a negative slot around
    keys = write_kv(kv.keys, k, slots)
    values = write_kv(kv.values, v, slots)
    k_positions = row_prefix + jnp.arange(suffix_capacity, dtype=jnp.int32)[None, :]
    out = attend_shared_prefix(q, kv.prefix_keys, kv.prefix_values, kv.prefix_lengths, keys, values, positions, k_positions)
    return out, kv.replace(keys=keys, values=values)


def _dense(config: LlamaConfig, features: int, name: str, use_bias: bool = False) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=_INIT,
        name=name,
    )


class Attention(nn.Module):
    """Self-attention with RoPE and grouped key/value heads."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # dtype [batch, T, dim]
        positions: jax.Array,  # int32 [batch, T]
        kv: LayerCache | None,
    ) -> tuple[jax.Array, LayerCache | None]:  # dtype [batch, T, dim], the updated layer cache
        """With ``kv=None`` the T tokens attend causally among themselves (no cache).

        Otherwise the new keys/values are written into ``kv`` at ``positions`` and every query
        attends to the cache slots at or before its own position (a :class:`SharedPrefixKV`:
        see :func:`update_shared_prefix`).
        """
        cfg = self.config
        batch, t, _ = x.shape
        bias = cfg.attention_bias
        q = _dense(cfg, cfg.n_heads * cfg.head_dim, "q_proj", bias)(x).reshape(batch, t, cfg.n_heads, cfg.head_dim)
        k = _dense(cfg, cfg.n_kv_heads * cfg.head_dim, "k_proj", bias)(x).reshape(batch, t, cfg.n_kv_heads, -1)
        v = _dense(cfg, cfg.n_kv_heads * cfg.head_dim, "v_proj", bias)(x).reshape(batch, t, cfg.n_kv_heads, -1)
        q = apply_rope(q, positions, cfg)
        k = apply_rope(k, positions, cfg)
        if kv is None:
            out = attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), positions, positions)
            new_kv = None
        elif isinstance(kv, SharedPrefixKV):
            out, new_kv = update_shared_prefix(kv, q, k, v, positions)
        else:
            keys = write_kv(kv[0], k, positions)
            values = write_kv(kv[1], v, positions)
            capacity = keys.shape[2]
            slots = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (batch, capacity))
            out = attend(q, keys, values, positions, slots)
            new_kv = (keys, values)
        return _dense(cfg, cfg.dim, "o_proj")(out), new_kv


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # dtype [batch, T, dim] -> same
        cfg = self.config
        gate = _dense(cfg, cfg.hidden_dim, "gate_proj")(x)
        up = _dense(cfg, cfg.hidden_dim, "up_proj")(x)
        return _dense(cfg, cfg.dim, "down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: ``h = x + attn(norm(x)); out = h + mlp(norm(h))``."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # dtype [batch, T, dim]
        positions: jax.Array,  # int32 [batch, T]
        kv: LayerCache | None,
    ) -> tuple[jax.Array, LayerCache | None]:
        attn_out, kv = Attention(self.config, name="attn")(RMSNorm(self.config, name="attn_norm")(x), positions, kv)
        h = x + attn_out
        return h + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(h)), kv


class Transformer(nn.Module):
    """Token ids -> float32 logits, optionally reading and writing a per-layer cache."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # int32 [batch, T]
        positions: jax.Array,  # int32 [batch, T]
        kv: tuple[LayerCache, ...] | None,  # one (keys, values) or SharedPrefixKV per layer, or None
    ) -> tuple[jax.Array, tuple[LayerCache, ...] | None]:  # float32 [batch, T, vocab], updated caches
        cfg = self.config
        embed = nn.Embed(
            cfg.vocab_size, cfg.dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, embedding_init=_INIT, name="embed"
        )
        x = embed(tokens)
        new_kv = []
        for i in range(cfg.n_layers):
            x, layer_kv = Block(cfg, name=f"layers_{i}")(x, positions, None if kv is None else kv[i])
            new_kv.append(layer_kv)
        x = RMSNorm(cfg, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = _dense(cfg, cfg.vocab_size, "lm_head")(x)
        return logits.astype(jnp.float32), None if kv is None else tuple(new_kv)
