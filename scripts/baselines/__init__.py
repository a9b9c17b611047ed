"""Constrained-decoding baselines, measured against STATIC by ``scripts/bench_constraints.py``.

Not part of the library (nothing here ships in the wheel): the scripts and tests import it as
``baselines`` with ``scripts/`` on ``sys.path``. Each baseline is a constraint in the library's
protocol (/work/shared/DESIGN.md, "Constraints as automata"), so the library's own
:func:`decoding.beam_search.beam_search` runs it, on its dense path, like any automaton:

* :func:`build_cpu_trie` -> :class:`CpuTrie`: a Python dict-of-dicts trie walked on the host
  through ``jax.pure_callback`` every step (the HF ``prefix_allowed_tokens_fn`` pattern);
* :func:`build_ppv` -> :class:`PPVIndex`: binary search over the sorted packed items, exact
  or approximate (``.approximate(k)``: k samples per prefix range);
* :func:`build_hash_bitmap` -> :class:`HashBitmap`: hashed (prefix, token) pairs in a bit array
  (no false negatives, some false positives);
* :class:`StaticMask`: the STATIC ``TrieIndex`` with its dense mask only (a ``TrieIndex``
  passed as is takes beam search's sparse path).

Example::

    trie = build_cpu_trie(items, vocab_size)
    out = beam_search(model, params, cache, prompts, lengths, num_beams=8, constraint=trie)
"""

from baselines.common import PrefixState, check_items
from baselines.cpu_trie import CpuTrie, HostTrie, build_cpu_trie
from baselines.hash_bitmap import HashBitmap, HashState, build_hash_bitmap
from baselines.ppv import PPVIndex, build_ppv
from baselines.static_adapter import StaticMask

__all__ = [
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
]
