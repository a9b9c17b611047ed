"""A beam-search KV cache that holds each prompt's keys/values once, not once per beam.

Beam search over ``queries`` prompts runs ``queries * beams`` rows. With the plain
:class:`models.KVCache` every row holds its own copy of its prompt's keys/values (the prompt is
repeated ``beams`` times at the expansion) and every step gathers the whole cache by parent
beam. With :class:`BeamKVCache` the prompt's keys/values (the *prefix*) are stored once per
query and only the few positions decoded after it (the *suffix*) are per beam, so the
expansion and the gathers move the suffix alone, and attention reads each query's prefix
once for all its beams (:func:`models.layers.attend_shared_prefix`).

Life cycle (``decoding.cache_rows`` calls the row methods; ``models.Decoder`` the rest)::

    cache = init_beam_cache(config, queries=2, beams=3, prefix_capacity=16, suffix_capacity=4)
    logits, cache = model(params, prompts, cache, prompt_lengths)  # 2 rows: writes the prefix
    cache = cache.repeat_rows(3)          # or gather_rows(rows) with 6 rows: 6 rows, prefix kept
    logits, cache = model(params, tokens, cache, ones)             # 6 rows: writes the suffixes
    cache = cache.gather_rows(parents)    # reorders the suffixes (and lengths) only

Memory: ``queries * prefix_capacity + queries * beams * suffix_capacity`` positions
(:func:`beam_cache_nbytes`) instead of ``queries * beams * (prefix + suffix)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from models.config import LlamaConfig
from models.layers import SharedPrefixKV


@struct.dataclass
class BeamKVCache:
    """Shared-prefix beam cache; follows ``decoding.protocol.DecodeCache``.

    ``rows`` is ``queries`` before the expansion (``expanded=False``: the prefill phase; model
    calls write the prefix) and ``queries * beams`` after it (model calls write each row's
    suffix). Rows are beam-major within a query: row ``r`` belongs to query ``r // beams``.
    ``lengths`` is each row's total length (prefix + suffix): positions derive from it as with
    any cache, and row ``r``'s suffix slot ``j`` holds position ``prefix_lengths[r // beams] + j``.

    Static (pytree metadata; a new value recompiles): ``beams``, ``expanded``, and every shape
    (``queries``, both capacities). Traced: the arrays.

    Requirements the caller sizes for: the prompt fits the prefix (prefill writes at or past
    ``prefix_capacity`` are dropped) and the decoded tokens fit the suffix (likewise); after
    the expansion a row's length never drops below its query's prefix length (rolling back
    into the shared prefix is not possible).
    """

    prefix_keys: tuple[jax.Array, ...]  # dtype [queries, n_kv_heads, prefix_capacity, head_dim], one per layer
    prefix_values: tuple[jax.Array, ...]  # dtype [queries, n_kv_heads, prefix_capacity, head_dim], one per layer
    prefix_lengths: jax.Array  # int32 [queries]  prompt positions in the prefix (= lengths until the expansion)
    keys: tuple[jax.Array, ...]  # dtype [queries * beams, n_kv_heads, suffix_capacity, head_dim], one per layer
    values: tuple[jax.Array, ...]  # dtype [queries * beams, n_kv_heads, suffix_capacity, head_dim], one per layer
    lengths: jax.Array  # int32 [rows]  total length; rows = queries, or queries * beams once expanded
    beams: int = struct.field(pytree_node=False)  # static: rows per query after the expansion
    expanded: bool = struct.field(pytree_node=False)  # static: False = prefill phase, True = beam rows

    @property
    def capacity(self) -> int:
        """Positions per row, prefix + suffix (static)."""
        return self.prefix_capacity + self.suffix_capacity

    @property
    def prefix_capacity(self) -> int:
        """Prefix positions per query (static)."""
        return self.prefix_keys[0].shape[2]

    @property
    def suffix_capacity(self) -> int:
        """Suffix positions per beam row (static)."""
        return self.keys[0].shape[2]

    @property
    def queries(self) -> int:
        """Prompts, each with one prefix (static)."""
        return self.prefix_lengths.shape[0]

    @property
    def rows(self) -> int:
        """Rows a model call on this cache takes: ``queries`` or ``queries * beams`` (static)."""
        return self.lengths.shape[0]

    def repeat_rows(self, times: int) -> "BeamKVCache":
        """The expansion: each of the ``queries`` rows becomes ``beams`` rows (``times`` must
        equal ``beams``; static). Moves no keys or values: the prefix stays one per query and
        the suffixes are still empty."""
        if self.expanded or times != self.beams:
            raise ValueError(
                f"BeamKVCache.repeat_rows({times}): only the expansion of a prefilled cache by its beams "
                f"({self.beams}) is possible (expanded={self.expanded})"
            )
        return self.replace(lengths=jnp.repeat(self.lengths, times), expanded=True)

    def gather_rows(self, rows: jax.Array) -> "BeamKVCache":
        """Row ``i`` of the result continues row ``rows[i]`` (int32 [queries * beams]).

        ``rows[i]`` must be a row of query ``i // beams`` (beam search's parent rows are): the
        prefix is never moved, only each row's suffix and length. Before the expansion this is
        the expansion itself (``rows[i]`` in ``[0, queries)``, the suffixes still empty); after
        it, the reorder of the beams by parent.
        """
        if rows.shape != (self.queries * self.beams,):
            raise ValueError(
                f"BeamKVCache.gather_rows: rows must be int32 [queries * beams] = ({self.queries * self.beams},), "
                f"got shape {rows.shape}; a shared-prefix cache keeps {self.beams} rows per query"
            )
        lengths = jnp.take(self.lengths, rows, axis=0)
        if not self.expanded:
            return self.replace(lengths=lengths, expanded=True)
        take = lambda leaf: jnp.take(leaf, rows, axis=0)  # noqa: E731
        return self.replace(
            keys=tuple(map(take, self.keys)), values=tuple(map(take, self.values)), lengths=lengths
        )

    def layers(self) -> tuple[SharedPrefixKV, ...]:
        """Per-layer views for :class:`models.layers.Transformer`."""
        return tuple(
            SharedPrefixKV(pk, pv, self.prefix_lengths, k, v, expanded=self.expanded)
            for pk, pv, k, v in zip(self.prefix_keys, self.prefix_values, self.keys, self.values)
        )

    def with_layers(self, layers: tuple[SharedPrefixKV, ...], lengths: jax.Array) -> "BeamKVCache":
        """The cache after a model call: its layers written and each row at ``lengths``
        (int32 [rows]); before the expansion the prefix lengths follow the lengths."""
        return self.replace(
            prefix_keys=tuple(layer.prefix_keys for layer in layers),
            prefix_values=tuple(layer.prefix_values for layer in layers),
            keys=tuple(layer.keys for layer in layers),
            values=tuple(layer.values for layer in layers),
            lengths=lengths,
            prefix_lengths=self.prefix_lengths if self.expanded else lengths,
        )

    def check(self, config: LlamaConfig, batch: int) -> None:
        """Raises ValueError unless the buffers fit ``config`` and a call of ``batch`` rows."""
        if len(self.prefix_keys) != config.n_layers or len(self.keys) != config.n_layers:
            raise ValueError(f"BeamKVCache has {len(self.keys)} layers, config has {config.n_layers}")
        prefix = (self.queries, config.n_kv_heads, self.prefix_capacity, config.head_dim)
        suffix = (self.queries * self.beams, config.n_kv_heads, self.suffix_capacity, config.head_dim)
        if self.prefix_keys[0].shape != prefix or self.keys[0].shape != suffix:
            raise ValueError(
                f"BeamKVCache buffers have shapes {self.prefix_keys[0].shape} (prefix) and {self.keys[0].shape} "
                f"(suffix), expected {prefix} and {suffix} for config {config}"
            )
        expected = self.queries * self.beams if self.expanded else self.queries
        if batch != expected or self.lengths.shape != (expected,):
            phase = "after" if self.expanded else "before"
            raise ValueError(
                f"BeamKVCache {phase} the expansion takes {expected} rows (queries {self.queries}, beams "
                f"{self.beams}); got tokens of batch {batch} and lengths of shape {self.lengths.shape}"
            )


def init_beam_cache(
    config: LlamaConfig, queries: int, beams: int, prefix_capacity: int, suffix_capacity: int
) -> BeamKVCache:
    """An empty shared-prefix cache (all lengths 0, before the expansion) in ``config.dtype``.

    ``queries`` prompts, ``beams`` rows per prompt after the expansion; room for
    ``prefix_capacity`` prompt positions per query and ``suffix_capacity`` decoded positions
    per beam. All are Python ints and static (they fix shapes). For beam search size the prefix
    for the longest prompt and the suffix for the new tokens (``max_new_tokens``; the sparse
    constrained path writes ``depth - 1``).
    """
    sizes = {"queries": queries, "beams": beams, "prefix_capacity": prefix_capacity, "suffix_capacity": suffix_capacity}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"init_beam_cache: {name} must be a positive int, got {value!r}")
    config.check_length(prefix_capacity + suffix_capacity, "init_beam_cache: prefix + suffix capacity")
    prefix = (queries, config.n_kv_heads, prefix_capacity, config.head_dim)
    suffix = (queries * beams, config.n_kv_heads, suffix_capacity, config.head_dim)
    zeros = lambda shape: tuple(jnp.zeros(shape, config.dtype) for _ in range(config.n_layers))  # noqa: E731
    return BeamKVCache(
        prefix_keys=zeros(prefix),
        prefix_values=zeros(prefix),
        prefix_lengths=jnp.zeros((queries,), jnp.int32),
        keys=zeros(suffix),
        values=zeros(suffix),
        lengths=jnp.zeros((queries,), jnp.int32),
        beams=beams,
        expanded=False,
    )


def beam_cache_nbytes(config: LlamaConfig, queries: int, beams: int, prefix_capacity: int, suffix_capacity: int) -> int:
    """Bytes of :func:`init_beam_cache`'s buffers: keys and values of every layer for
    ``queries * prefix_capacity + queries * beams * suffix_capacity`` positions, plus lengths."""
    per_position = 2 * config.n_layers * config.n_kv_heads * config.head_dim * config.dtype.itemsize
    positions = queries * prefix_capacity + queries * beams * suffix_capacity
    return per_position * positions + 4 * (2 * queries)
