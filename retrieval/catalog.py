"""The catalog: items, their semantic IDs, the token layout, and the item <-> ID maps.

Token layout (TIGER): one vocabulary range per ID level, after the special tokens::

    0                 PAD   (pads prompts; never a target)
    1                 BOS   (starts every sequence)
    2 .. 2+V0-1       level-0 codes
    2+V0 .. ...       level-1 codes, and so on; the last level is the collision code

so token ``t`` of level ``l`` is ``offsets[l] + code``. Example: level sizes ``(4, 4, 2)``
give a vocabulary of 2 + 10 = 12 tokens; codes ``(3, 0, 1)`` are tokens ``(5, 6, 11)``.

A history of items is the prompt ``BOS, item_1 tokens, ..., item_n tokens``; the model decodes the
next item's ``depth`` tokens. :meth:`Catalog.items_of_tokens` maps generated token rows back to
items (the public ID -> item function), -1 where a row names no item.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from retrieval.tables import IdIndex

PAD_ID = 0
BOS_ID = 1
NUM_SPECIAL = 2
CATALOG_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where each ID level's codes sit in the model's vocabulary."""

    level_sizes: tuple[int, ...]  # codes per level (RQ levels, then the collision level)

    def __post_init__(self):
        if not self.level_sizes or any(int(s) < 1 for s in self.level_sizes):
            raise ValueError(f"level_sizes must be positive ints, got {self.level_sizes}")
        object.__setattr__(self, "level_sizes", tuple(int(s) for s in self.level_sizes))

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def offsets(self) -> np.ndarray:  # int64 [depth]
        return NUM_SPECIAL + np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]).astype(np.int64)

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + sum(self.level_sizes)

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """int [..., depth] codes -> int32 [..., depth] tokens."""
        codes = np.asarray(codes)
        if codes.shape[-1:] != (self.depth,):
            raise ValueError(f"codes must be int [..., {self.depth}], got shape {codes.shape}")
        if (codes < 0).any() or (codes >= np.asarray(self.level_sizes)).any():
            raise ValueError(f"codes out of range for level sizes {self.level_sizes}")
        return (codes + self.offsets).astype(np.int32)

    def decode(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int [..., depth] tokens -> (int32 [..., depth] codes, bool [...] every token in its level's range)."""
        tokens = np.asarray(tokens, np.int64)
        codes = tokens - self.offsets
        ok = ((codes >= 0) & (codes < np.asarray(self.level_sizes))).all(axis=-1)
        return np.where(ok[..., None], codes, 0).astype(np.int32), ok


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Items with unique semantic IDs.

    ``item_ids[i]`` is item ``i``'s external id; ``codes[i]`` its semantic ID. Attribute columns
    (category, release time, ...) ride along for allowed-item predicates and segments.
    """

    item_ids: np.ndarray  # str [items]
    codes: np.ndarray  # int32 [items, depth]  unique rows
    layout: TokenLayout
    attributes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [items]

    def __post_init__(self):
        if self.codes.ndim != 2 or self.codes.shape != (len(self.item_ids), self.layout.depth):
            raise ValueError(
                f"codes must be int [items={len(self.item_ids)}, depth={self.layout.depth}], got {self.codes.shape}"
            )
        if len(np.unique(self.codes, axis=0)) != len(self.codes):
            raise ValueError("semantic IDs must be unique (add the collision level)")
        self.layout.encode(self.codes)  # range check
        keys = self._keys(self.codes)
        order = np.argsort(keys)
        object.__setattr__(self, "_sorted_keys", keys[order])
        object.__setattr__(self, "_key_order", order.astype(np.int32))
        object.__setattr__(self, "_rows_of_ids", IdIndex.build(self.item_ids.astype(str)))

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def depth(self) -> int:
        return self.layout.depth

    @property
    def tokens(self) -> np.ndarray:  # int32 [items, depth]
        return self.layout.encode(self.codes)

    def _keys(self, codes: np.ndarray) -> np.ndarray:  # int [..., depth] -> int64 [...]
        """Mixed-radix key of each code row (fits int64 for any realistic layout)."""
        key = np.zeros(codes.shape[:-1], np.int64)
        for level, size in enumerate(self.layout.level_sizes):
            key = key * size + codes[..., level]
        return key

    def items_of_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """ID -> item: int [..., depth] token rows -> int32 [...] item rows, -1 for no item."""
        codes, ok = self.layout.decode(tokens)
        keys = self._keys(codes.astype(np.int64))
        where = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        found = ok & (self._sorted_keys[where] == keys)
        return np.where(found, self._key_order[where], -1).astype(np.int32)

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """External ids -> int32 item rows, -1 for unknown ids."""
        return self._rows_of_ids.rows(np.asarray(item_ids).astype(str))

    def prompts(
        self,
        history: np.ndarray,  # int [n, max_history]  item rows oldest first, -1 pads at the end
    ) -> tuple[np.ndarray, np.ndarray]:  # int32 [n, 1 + max_history * depth], int32 [n]
        """``BOS`` + each history item's tokens, right-padded with PAD; and each prompt's length."""
        history = np.asarray(history)
        n, width = history.shape
        present = history >= 0
        tokens = self.tokens[np.where(present, history, 0)]  # [n, width, depth]
        tokens = np.where(present[..., None], tokens, PAD_ID).reshape(n, width * self.depth)
        # Histories are left-aligned, so the real tokens are already a prefix of each row.
        prompts = np.concatenate([np.full((n, 1), BOS_ID, np.int32), tokens.astype(np.int32)], axis=1)
        return prompts, (1 + present.sum(axis=1) * self.depth).astype(np.int32)

    def fingerprint(self) -> str:
        """A SHA-256 of the ids, codes and layout (the job's manifest records it)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.layout.level_sizes).encode())
        digest.update("\n".join(self.item_ids.tolist()).encode())
        digest.update(np.ascontiguousarray(self.codes, np.int32).tobytes())
        return digest.hexdigest()

    def save(self, folder: str | os.PathLike) -> None:
        """Writes ``catalog.json`` (layout, format, checksum) and ``catalog.npz`` into ``folder``."""
        os.makedirs(folder, exist_ok=True)
        arrays = {"item_ids": self.item_ids.astype(str), "codes": self.codes.astype(np.int32)}
        arrays.update({f"attr.{name}": np.asarray(v) for name, v in self.attributes.items()})
        np.savez(os.path.join(folder, "catalog.npz"), **arrays)
        meta = {"format": CATALOG_FORMAT, "level_sizes": list(self.layout.level_sizes), "sha256": self.fingerprint()}
        with open(os.path.join(folder, "catalog.json"), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Catalog":
        """Reads a saved catalog; ValueError naming the file when it is missing, of another
        format, or its checksum does not match its contents."""
        meta_path, arrays_path = os.path.join(folder, "catalog.json"), os.path.join(folder, "catalog.npz")
        for path in (meta_path, arrays_path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"no catalog at {folder}: {path} is missing")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            with np.load(arrays_path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{folder}: unreadable catalog ({err})") from err
        if meta.get("format") != CATALOG_FORMAT:
            raise ValueError(f"{meta_path}: catalog format {meta.get('format')!r}, this library reads {CATALOG_FORMAT}")
        attributes = {name[5:]: value for name, value in arrays.items() if name.startswith("attr.")}
        catalog = cls(arrays["item_ids"], arrays["codes"], TokenLayout(tuple(meta["level_sizes"])), attributes)
        if catalog.fingerprint() != meta.get("sha256"):
            raise ValueError(f"{arrays_path}: contents do not match the checksum in {meta_path}")
        return catalog
