"""Brute-force oracle for trie indexes and item-set generators shared by the constraints tests.

The oracle enumerates every prefix of every item in plain Python and numbers them breadth
first (by length, then lexicographically), which is the state numbering the builders promise.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Oracle:
    """Plain-Python view of an item set as a trie."""

    items: frozenset[tuple[int, ...]]
    prefixes: tuple[tuple[int, ...], ...]  # breadth-first order: index = expected state id
    state_of: dict
    vocab_size: int

    @classmethod
    def of(cls, items, vocab_size: int) -> "Oracle":
        items = frozenset(tuple(int(t) for t in item) for item in items)
        prefixes = {item[:d] for item in items for d in range(len(item) + 1)}
        ordered = tuple(sorted(prefixes, key=lambda p: (len(p), p)))
        return cls(items, ordered, {p: i for i, p in enumerate(ordered)}, vocab_size)

    @property
    def num_states(self) -> int:
        return len(self.prefixes)

    def child(self, state: int, token: int) -> int:
        """Expected state id after ``token``, or -1."""
        if state < 0:
            return -1
        return self.state_of.get(self.prefixes[state] + (token,), -1)

    def transition_table(self, tokens: np.ndarray) -> np.ndarray:
        """int [num_states + 1, len(tokens)]: row i < num_states is state i, the last row the dead state."""
        states = list(range(self.num_states)) + [-1]
        return np.array([[self.child(s, int(t)) for t in tokens] for s in states])

    def mask_table(self) -> np.ndarray:
        """bool [num_states + 1, vocab]: allowed next tokens (last row: the dead state)."""
        mask = np.zeros((self.num_states + 1, self.vocab_size), dtype=bool)
        for prefix in self.prefixes[1:]:
            mask[self.state_of[prefix[:-1]], prefix[-1]] = True
        return mask

    def complete_table(self) -> np.ndarray:
        """bool [num_states + 1]: the prefix is a whole item (last row: the dead state)."""
        return np.array([p in self.items for p in self.prefixes] + [False])

    def states_at_depth(self, depth: int) -> np.ndarray:
        return np.array([i for i, p in enumerate(self.prefixes) if len(p) == depth], dtype=np.int32)


def random_fixed_items(rng: np.random.Generator, num: int, length: int, vocab: int, skewed: bool) -> np.ndarray:
    """int64 [num, length]. Skewed: a few heavy shared prefixes and a small alphabet in the tails."""
    if not skewed:
        return rng.integers(0, vocab, size=(num, length))
    heads = rng.integers(0, vocab, size=(3, length))
    head_of = rng.choice(3, size=num, p=[0.7, 0.2, 0.1])
    shared = rng.integers(0, length + 1, size=num)
    alphabet = rng.integers(0, vocab, size=2)
    tails = alphabet[rng.integers(0, 2, size=(num, length))]
    keep = np.arange(length)[None, :] < shared[:, None]
    return np.where(keep, heads[head_of], tails)


def random_variable_items(
    rng: np.random.Generator, num: int, max_len: int, vocab: int, eos_id: int, skewed: bool
) -> list[list[int]]:
    """``num`` sequences of 1..max_len tokens each ending in ``eos_id`` (EOS nowhere else)."""
    body_tokens = np.array([t for t in range(vocab) if t != eos_id], dtype=np.int64)
    if body_tokens.size == 0:
        return [[eos_id] for _ in range(num)]
    if skewed:
        body_tokens = body_tokens[: 2 + int(rng.integers(0, 2))]
    seqs = []
    for _ in range(num):
        body = rng.choice(body_tokens, size=int(rng.integers(0, max_len)))
        seqs.append([int(t) for t in body] + [eos_id])
    return seqs


def test_oracle_numbers_states_breadth_first():
    oracle = Oracle.of([[1, 3], [4, 0], [1, 2]], vocab_size=5)
    assert oracle.prefixes == ((), (1,), (4,), (1, 2), (1, 3), (4, 0))
    assert oracle.child(0, 4) == 2 and oracle.child(1, 4) == -1 and oracle.child(-1, 1) == -1
    assert oracle.mask_table()[1].nonzero()[0].tolist() == [2, 3]
    assert oracle.complete_table().tolist() == [False, False, False, True, True, True, False]


def test_generators_respect_their_contracts():
    rng = np.random.default_rng(0)
    fixed = random_fixed_items(rng, 50, 4, 7, skewed=True)
    assert fixed.shape == (50, 4) and fixed.min() >= 0 and fixed.max() < 7
    seqs = random_variable_items(rng, 30, 5, 6, eos_id=2, skewed=False)
    assert all(1 <= len(s) <= 5 and s[-1] == 2 and 2 not in s[:-1] for s in seqs)
