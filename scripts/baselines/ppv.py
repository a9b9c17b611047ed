"""Baseline 2: PPV, binary search over the sorted item set on device.

The items are sorted, deduplicated and packed into integer keys (``bits`` bits per token,
the first token in the most significant bits, ``words`` uint32 words per item), so numeric
order of the keys is the lexicographic order of the items. For a prefix, the items that share
it form one contiguous range ``[lo, hi)``, found by two vectorized binary searches (a
multi-word ``searchsorted``: ``lo`` = first key >= prefix padded with zeros, ``hi`` = first
key > prefix padded with all-ones tokens). The next tokens allowed after the prefix are the
distinct tokens at position ``length`` inside that range:

* exact (``sample_window == 0``): jump through the range one distinct token at a time: read
  the token at ``lo``, then binary-search past every item that continues with it (a
  ``lax.while_loop`` that stops when every row's range is exhausted: as many jumps as the
  widest row has next tokens);
* approximate (``sample_window = k``): read only ``k`` evenly spaced items of the range, one
  gather, no loop. Every token it allows is valid, but tokens between the samples are missed
  (recall < 1 on wide ranges).

State: :class:`~baselines.common.PrefixState`. Fixed-length items only; a constraint in the
library's protocol (no ``candidates``: beam search's dense path).

Example (vocab 4, items [[0, 1], [0, 2], [3, 3]])::

    ppv = build_ppv(np.array([[0, 1], [0, 2], [3, 3]]), vocab_size=4)
    s = ppv.advance(ppv.initial_state(()), jnp.int32(0))
    ppv.allowed_mask(s)                # [False, True, True, False]  (range [0, 2) of the keys)
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from baselines.common import PrefixState, check_items
from constraints.lexsort import sorted_unique_rows


def _lex_less(row: jax.Array, query: jax.Array, or_equal: bool) -> jax.Array:
    """row, query: uint32 [..., words] -> bool [...]: row < query (or <= with ``or_equal``)."""
    less = jnp.zeros(row.shape[:-1], bool)
    equal = jnp.ones(row.shape[:-1], bool)
    for w in range(row.shape[-1]):
        less = less | (equal & (row[..., w] < query[..., w]))
        equal = equal & (row[..., w] == query[..., w])
    return (less | equal) if or_equal else less


def _search(keys: jax.Array, query: jax.Array, past_equal: bool) -> jax.Array:
    """Vectorized multi-word searchsorted over sorted ``keys`` (uint32 [num_items, words]).

    query: uint32 [..., words] -> int32 [...]: the first index whose key is >= query, or
    > query when ``past_equal`` (static). ``log2(num_items) + 1`` halving steps.
    """
    num_items = keys.shape[0]

    def halve(_, bounds):
        lo, hi = bounds  # int32 [...], int32 [...]
        active = lo < hi
        mid = (lo + hi) // 2
        row = jnp.take(keys, jnp.minimum(mid, num_items - 1), axis=0)
        right = _lex_less(row, query, or_equal=past_equal)
        return jnp.where(active & right, mid + 1, lo), jnp.where(active & ~right, mid, hi)

    lo = jnp.zeros(query.shape[:-1], jnp.int32)
    hi = jnp.full(query.shape[:-1], num_items, jnp.int32)
    return jax.lax.fori_loop(0, num_items.bit_length(), halve, (lo, hi))[0]


def _scatter_mask(mask: jax.Array, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """mask bool [S, vocab], tokens int32 [S, k], valid bool [S, k] -> mask with the valid tokens set."""
    rows = jnp.arange(tokens.shape[0])[:, None]
    cols = jnp.where(valid, tokens, mask.shape[1])
    return mask.at[rows, cols].set(True, mode="drop")


@struct.dataclass
class PPVIndex:
    """Sorted packed item keys plus the static layout.

    Static fields (a new value recompiles): vocab_size, depth, bits, per_word, sample_window.
    The keys are traced.
    """

    keys: jax.Array  # uint32 [num_items, words]   sorted, unique, first token in the high bits
    vocab_size: int = struct.field(pytree_node=False)
    depth: int = struct.field(pytree_node=False)
    bits: int = struct.field(pytree_node=False)  # bits per token
    per_word: int = struct.field(pytree_node=False)  # tokens per uint32 word
    sample_window: int = struct.field(pytree_node=False, default=0)  # 0: exact; k: k samples per range
    fixed_length: ClassVar[bool] = True
    eos_id: ClassVar[None] = None

    def approximate(self, sample_window: int) -> "PPVIndex":
        """The same index read approximately: ``sample_window`` evenly spaced items per range."""
        if not isinstance(sample_window, int) or sample_window < 1:
            raise ValueError(f"sample_window must be a positive int, got {sample_window!r}")
        return self.replace(sample_window=sample_window)

    def nbytes(self) -> int:
        return int(self.keys.nbytes)

    def _pack(self, prefix: jax.Array, length: jax.Array, fill: int) -> jax.Array:
        """prefix int32 [..., depth], length int32 [...] -> uint32 [..., words]; positions at or past
        ``length`` hold ``fill``."""
        words = self.keys.shape[1]
        slots = words * self.per_word
        positions = jnp.arange(slots, dtype=jnp.int32)
        padded = jnp.pad(prefix, [(0, 0)] * (prefix.ndim - 1) + [(0, slots - self.depth)])
        tokens = jnp.where(positions < length[..., None], padded, fill).astype(jnp.uint32)
        tokens = tokens.reshape(tokens.shape[:-1] + (words, self.per_word))
        packed = jnp.zeros(tokens.shape[:-1], jnp.uint32)
        for j in range(self.per_word):
            packed = packed | (tokens[..., j] << jnp.uint32((self.per_word - 1 - j) * self.bits))
        return packed

    def _token_at(self, rows: jax.Array, position: jax.Array) -> jax.Array:
        """rows uint32 [..., words], position int32 [...] -> int32 [...]: the token at ``position``."""
        position = jnp.clip(position, 0, self.depth - 1)
        word = jnp.take_along_axis(rows, (position // self.per_word)[..., None], axis=-1)[..., 0]
        shift = ((self.per_word - 1 - position % self.per_word) * self.bits).astype(jnp.uint32)
        return ((word >> shift) & jnp.uint32((1 << self.bits) - 1)).astype(jnp.int32)

    def prefix_range(self, state: PrefixState) -> tuple[jax.Array, jax.Array]:
        """int32 [...] pair ``lo, hi``: the items sharing each row's prefix (empty when dead)."""
        top = (1 << self.bits) - 1
        lo = _search(self.keys, self._pack(state.prefix, state.length, 0), past_equal=False)
        hi = _search(self.keys, self._pack(state.prefix, state.length, top), past_equal=True)
        return lo, jnp.where(state.length > self.depth, lo, hi)

    def initial_state(self, shape: int | tuple[int, ...]) -> PrefixState:
        return PrefixState.empty(shape, self.depth)

    def advance(self, state: PrefixState, token: jax.Array) -> PrefixState:  # token: int32 [...]
        return state.append(token)

    def is_complete(self, state: PrefixState) -> jax.Array:  # bool [...]
        lo, hi = self.prefix_range(state)
        return (state.length == self.depth) & (lo < hi)

    def allowed_mask(self, state: PrefixState) -> jax.Array:  # bool [..., vocab]
        shape = state.length.shape
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(shape) :]), state)
        lo, hi = self.prefix_range(flat)
        hi = jnp.where(flat.length < self.depth, hi, lo)
        if self.sample_window:
            mask = self._sampled_mask(flat, lo, hi)
        else:
            mask = self._exact_mask(flat, lo, hi)
        return mask.reshape(shape + (self.vocab_size,))

    def _sampled_mask(self, state: PrefixState, lo: jax.Array, hi: jax.Array) -> jax.Array:
        """bool [S, vocab] from ``sample_window`` evenly spaced items of each range [lo, hi) (int32 [S])."""
        count = hi - lo
        steps = jnp.arange(self.sample_window, dtype=jnp.float32)
        offsets = (steps[None, :] * (count.astype(jnp.float32)[:, None] / self.sample_window)).astype(jnp.int32)
        offsets = jnp.minimum(offsets, jnp.maximum(count - 1, 0)[:, None])
        rows = jnp.take(self.keys, jnp.minimum(lo[:, None] + offsets, self.keys.shape[0] - 1), axis=0)
        tokens = self._token_at(rows, jnp.broadcast_to(state.length[:, None], offsets.shape))
        valid = jnp.broadcast_to((count > 0)[:, None], offsets.shape)
        return _scatter_mask(jnp.zeros((lo.shape[0], self.vocab_size), bool), tokens, valid)

    def _exact_mask(self, state: PrefixState, lo: jax.Array, hi: jax.Array) -> jax.Array:
        """bool [S, vocab]: every distinct token at position ``length`` within [lo, hi) (int32 [S])."""
        num_rows = lo.shape[0]
        top = (1 << self.bits) - 1

        def cond(carry):
            position, _ = carry
            return jnp.any(position < hi)

        def body(carry):
            # Each jump lands strictly past ``position`` (past every item that shares the prefix
            # and the token at ``position``), so every row's range runs out.
            position, mask = carry  # int32 [S], bool [S, vocab]
            active = position < hi
            row = jnp.take(self.keys, jnp.minimum(position, self.keys.shape[0] - 1), axis=0)
            token = self._token_at(row, state.length)
            mask = _scatter_mask(mask, token[:, None], active[:, None])
            longer = state.append(token)
            past = _search(self.keys, self._pack(longer.prefix, longer.length, top), past_equal=True)
            return jnp.where(active, past, position), mask

        init = (lo, jnp.zeros((num_rows, self.vocab_size), bool))
        return jax.lax.while_loop(cond, body, init)[1]


def pack_items(items: np.ndarray, bits: int, per_word: int) -> np.ndarray:
    """Items int32 [num_items, depth] -> keys uint32 [num_items, words] (NumPy), zero padded; key
    order (word by word) is the items' lexicographic order."""
    num_items, depth = items.shape
    words = -(-depth // per_word)
    keys = np.zeros((num_items, words), np.uint32)
    for position in range(depth):
        shift = (per_word - 1 - position % per_word) * bits
        keys[:, position // per_word] |= items[:, position].astype(np.uint32) << np.uint32(shift)
    return keys


def build_ppv(items, vocab_size: int, sample_window: int = 0) -> PPVIndex:
    """Builds the PPV index of ``items`` (int [num_items, depth], any order, dups ok): sorted and
    deduplicated by the STATIC builder's :func:`constraints.lexsort.sorted_unique_rows`, then packed.

    ``sample_window`` 0 gives the exact method; k > 0 the approximate one (see the module doc).
    """
    items = check_items(items, vocab_size)
    if not isinstance(sample_window, int) or sample_window < 0:
        raise ValueError(f"sample_window must be an int >= 0, got {sample_window!r}")
    bits = max(1, int(vocab_size - 1).bit_length())
    per_word = 32 // bits
    keys = pack_items(sorted_unique_rows(items, vocab_size), bits, per_word)
    return PPVIndex(
        keys=jnp.asarray(keys),
        vocab_size=int(vocab_size),
        depth=items.shape[1],
        bits=bits,
        per_word=per_word,
        sample_window=sample_window,
    )
