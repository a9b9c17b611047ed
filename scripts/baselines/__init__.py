"""Constrained-decoding baselines behind one mask interface, measured against STATIC.

* :func:`build_cpu_trie` -> :class:`CpuTrie`: a Python dict-of-dicts trie walked on the host
  through ``jax.pure_callback`` every step (the HF ``prefix_allowed_tokens_fn`` pattern);
* :func:`build_ppv` -> :class:`PPVIndex`: binary search over the sorted packed items, exact
  or approximate (``.approximate(k)``: k samples per prefix range);
* :func:`build_hash_bitmap` -> :class:`HashBitmap`: hashed (prefix, token) pairs in a bit array
  (no false negatives, some false positives);
* :class:`StaticMask`: the STATIC ``TrieIndex`` behind the same interface;
* :func:`dense_beam_search`: the one jitted beam loop all of them plug into.

The interface (state is a pytree whose leaves lead with ``shape``)::

    state = method.initial_state(shape)
    mask = method.allowed_mask(state)        # bool [*shape, vocab]
    state = method.advance(state, token)     # token int32 [*shape]
    done = method.is_complete(state)         # bool [*shape]
"""

from baselines.common import PrefixState, check_items
from baselines.cpu_trie import CpuTrie, HostTrie, build_cpu_trie
from baselines.dense_beam import BeamResult, dense_beam_search
from baselines.hash_bitmap import HashBitmap, HashState, build_hash_bitmap
from baselines.ppv import PPVIndex, build_ppv
from baselines.static_adapter import StaticMask

__all__ = [
    "BeamResult",
    "CpuTrie",
    "HashBitmap",
    "HashState",
    "HostTrie",
    "PPVIndex",
    "PrefixState",
    "StaticMask",
    "build_cpu_trie",
    "build_hash_bitmap",
    "build_ppv",
    "check_items",
    "dense_beam_search",
]
