"""Baseline 3: a hashed set of (prefix, next token) pairs in a bit array (a blocked Bloom filter).

A prefix is represented by a rolling 32-bit hash: ``h(()) = SEED`` and
``h(prefix + (t,)) = child(h(prefix), t)``. Building inserts the child hash of every
(prefix, token) pair of every item; each insertion sets ``num_hashes`` bits inside one
32-bit word chosen by the hash (blocked: one gather per test). A step tests all ``vocab``
children of each state: token ``t`` is allowed when all its bits are set.

No false negatives: every real pair was inserted. False positives: an unrelated pair whose
bits happen to be set is allowed too; after that the beam follows a prefix outside the trie,
and ``is_complete`` (depth reached) cannot tell. The benchmark measures the validity of the
outputs. The bit array has ``next_pow2(num_items * depth * bits_per_entry)`` bits (at most
2**32).

Example::

    bitmap = build_hash_bitmap(np.array([[0, 1], [0, 2], [3, 3]]), vocab_size=4)
    s = bitmap.advance(bitmap.initial_state(()), jnp.int32(0))
    bitmap.allowed_mask(s)             # True at 1 and 2 (and, rarely, a false positive)
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from baselines.common import as_shape, check_items

SEED = np.uint32(0x2545F491)
_WORD_SALT = np.uint32(0x68E31DA4)
_MAX_WORDS = 1 << 27  # 2**32 bits


def _fmix32(h):
    """MurmurHash3's 32-bit finalizer; ``h`` is a uint32 NumPy or JAX array (same result)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def child_hash(parent, token):
    """uint32 hash of ``prefix + (token,)`` from the parent's hash (uint32) and token (uint32)."""
    return _fmix32((parent * np.uint32(0x01000193)) ^ (token + np.uint32(0x9E3779B9)))


def word_and_pattern(child, num_words: int, num_hashes: int):
    """uint32 ``child`` hash -> (word index, uint32 pattern of up to ``num_hashes`` set bits)."""
    word = _fmix32(child ^ _WORD_SALT) & np.uint32(num_words - 1)
    pattern = np.uint32(0)
    for i in range(num_hashes):
        pattern = pattern | (np.uint32(1) << ((child >> np.uint32(5 * i)) & np.uint32(31)))
    return word, pattern


@struct.dataclass
class HashState:
    """A prefix as its rolling hash and its length."""

    hash: jax.Array  # uint32 [...]
    length: jax.Array  # int32 [...]


@struct.dataclass
class HashBitmap:
    """The bit array plus static metadata (vocab_size, depth, num_hashes recompile; words traced).

    A constraint in the library's protocol (fixed length, no EOS); state: :class:`HashState`.
    """

    words: jax.Array  # uint32 [num_words]   num_words a power of two
    vocab_size: int = struct.field(pytree_node=False)
    depth: int = struct.field(pytree_node=False)
    num_hashes: int = struct.field(pytree_node=False)
    fixed_length: ClassVar[bool] = True
    eos_id: ClassVar[None] = None

    def nbytes(self) -> int:
        return int(self.words.nbytes)

    def initial_state(self, shape: int | tuple[int, ...]) -> HashState:
        shape = as_shape(shape)
        return HashState(hash=jnp.full(shape, SEED, jnp.uint32), length=jnp.zeros(shape, jnp.int32))

    def advance(self, state: HashState, token: jax.Array) -> HashState:  # token: int32 [...]
        child = child_hash(state.hash, jnp.asarray(token).astype(jnp.uint32))
        return HashState(hash=child, length=jnp.minimum(state.length + 1, self.depth + 1))

    def is_complete(self, state: HashState) -> jax.Array:  # bool [...]
        return state.length == self.depth

    def allowed_mask(self, state: HashState) -> jax.Array:  # bool [..., vocab]
        tokens = jnp.arange(self.vocab_size, dtype=jnp.uint32)
        child = child_hash(state.hash[..., None], tokens)  # uint32 [..., vocab]
        word, pattern = word_and_pattern(child, self.words.shape[0], self.num_hashes)
        bits = jnp.take(self.words, word.astype(jnp.int32), axis=0)
        return ((bits & pattern) == pattern) & (state.length < self.depth)[..., None]


def build_hash_bitmap(items, vocab_size: int, bits_per_entry: int = 16, num_hashes: int = 3) -> HashBitmap:
    """Builds the bitmap of ``items`` (int [num_items, depth], any order, dups ok).

    ``bits_per_entry``: bit-array bits per inserted pair (num_items * depth pairs);
    ``num_hashes``: bits set per pair, 1 to 6. More of either lowers the false-positive rate.
    """
    items = check_items(items, vocab_size)
    if not isinstance(bits_per_entry, int) or bits_per_entry < 1:
        raise ValueError(f"bits_per_entry must be a positive int, got {bits_per_entry!r}")
    if not isinstance(num_hashes, int) or not 1 <= num_hashes <= 6:
        raise ValueError(f"num_hashes must be an int in [1, 6], got {num_hashes!r}")
    num_items, depth = items.shape
    wanted_words = -(-num_items * depth * bits_per_entry // 32)
    num_words = min(_MAX_WORDS, 1 << max(1, (wanted_words - 1).bit_length()))
    words = np.zeros(num_words, np.uint32)
    parent = np.full(num_items, SEED, np.uint32)
    for position in range(depth):
        child = child_hash(parent, items[:, position].astype(np.uint32))
        word, pattern = word_and_pattern(child, num_words, num_hashes)
        np.bitwise_or.at(words, word, pattern)
        parent = child
    return HashBitmap(words=jnp.asarray(words), vocab_size=int(vocab_size), depth=depth, num_hashes=num_hashes)
