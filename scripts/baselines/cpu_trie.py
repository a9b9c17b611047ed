"""Baseline 1: a Python dict-of-dicts trie walked on the host from a ``jax.pure_callback``.

This is the Hugging Face ``prefix_allowed_tokens_fn`` / GENRE pattern: at every decode step
the device hands the emitted prefixes to the host, the host walks the trie from the root for
each row, and sends back a dense mask. It exists to be measured against (one host round trip
per step), not to be used. :func:`decoding.beam_search.beam_search` runs it on its dense path
(``constraint=build_cpu_trie(items, vocab)``), the callback inside the jitted loop.

Example (vocab 4, items [[0, 1], [0, 2], [3, 3]])::

    trie = build_cpu_trie(np.array([[0, 1], [0, 2], [3, 3]]), vocab_size=4)
    s = trie.initial_state(())
    trie.allowed_mask(s)               # [True, False, False, True]
    s = trie.advance(s, jnp.int32(0))
    trie.allowed_mask(s)               # [False, True, True, False]
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from baselines.common import PrefixState, check_items


class HostTrie:
    """The host-side trie: nested dicts ``{token: child}``; a leaf is an empty dict.

    Compared and hashed by identity, so it can sit in a pytree's static metadata.
    """

    def __init__(self, root: dict, vocab_size: int, depth: int):
        self.root = root
        self.vocab_size = vocab_size
        self.depth = depth

    def node(self, prefix: np.ndarray, length: int) -> dict | None:
        """The node reached by ``prefix[:length]``, or None if that path leaves the trie."""
        if length > self.depth:
            return None
        node = self.root
        for token in prefix[:length].tolist():
            node = node.get(token)
            if node is None:
                return None
        return node

    def mask(self, prefix: np.ndarray, length: np.ndarray) -> np.ndarray:
        """bool [..., vocab] for prefix int32 [..., depth] and length int32 [...] (host arrays)."""
        flat_prefix = np.asarray(prefix).reshape(-1, self.depth)
        flat_length = np.asarray(length).reshape(-1)
        out = np.zeros((flat_length.size, self.vocab_size), bool)
        for row in range(flat_length.size):
            node = self.node(flat_prefix[row], int(flat_length[row]))
            if node:
                out[row, list(node)] = True
        return out.reshape(np.shape(length) + (self.vocab_size,))

    def complete(self, prefix: np.ndarray, length: np.ndarray) -> np.ndarray:
        """bool [...]: the row has emitted a whole item."""
        flat_prefix = np.asarray(prefix).reshape(-1, self.depth)
        flat_length = np.asarray(length).reshape(-1)
        out = np.array(
            [
                int(flat_length[row]) == self.depth and self.node(flat_prefix[row], self.depth) is not None
                for row in range(flat_length.size)
            ],
            bool,
        )
        return out.reshape(np.shape(length))


@struct.dataclass
class CpuTrie:
    """The constraint protocol over a :class:`HostTrie`; the mask is computed on the host every call.

    The whole object is static (no array leaves): passing it to a jitted function bakes the
    trie in by identity. State: :class:`PrefixState`.
    """

    host: HostTrie = struct.field(pytree_node=False)
    fixed_length: ClassVar[bool] = True  # every item has depth tokens
    eos_id: ClassVar[None] = None

    @property
    def vocab_size(self) -> int:
        return self.host.vocab_size

    @property
    def depth(self) -> int:
        return self.host.depth

    def initial_state(self, shape: int | tuple[int, ...]) -> PrefixState:
        return PrefixState.empty(shape, self.depth)

    def allowed_mask(self, state: PrefixState) -> jax.Array:  # bool [..., vocab]
        out = jax.ShapeDtypeStruct(state.length.shape + (self.vocab_size,), jnp.bool_)
        return jax.pure_callback(self.host.mask, out, state.prefix, state.length, vmap_method="broadcast_all")

    def advance(self, state: PrefixState, token: jax.Array) -> PrefixState:  # token: int32 [...]
        return state.append(token)

    def is_complete(self, state: PrefixState) -> jax.Array:  # bool [...]
        out = jax.ShapeDtypeStruct(state.length.shape, jnp.bool_)
        return jax.pure_callback(self.host.complete, out, state.prefix, state.length, vmap_method="broadcast_all")


def build_cpu_trie(items, vocab_size: int) -> CpuTrie:
    """Builds the dict-of-dicts trie of ``items`` (int [num_items, depth], any order, dups ok)."""
    items = check_items(items, vocab_size)
    root: dict = {}
    for item in items.tolist():
        node = root
        for token in item:
            node = node.setdefault(token, {})
    return CpuTrie(host=HostTrie(root, vocab_size, items.shape[1]))
