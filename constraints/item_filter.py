"""Per-row item filters over a fixed-length trie: each query row may exclude items (its own
history) and may be restricted to a segment of the catalog (a region, a category).

Both are expressed as constraint state, not as special cases in the decode loops: an
:class:`ItemFilter` is a layered constraint (the methods decoding's sparse beam path uses,
``initial_state`` / ``candidates`` / ``is_complete``) that drops every candidate whose subtree
holds no item the row may return. A prefix is kept only while at least one allowed item lies
below it, so no beam is spent on a dead prefix and beam search with enough beams returns
exactly the top items of the filtered ranking.

Leaves are the items in the trie's order (sorted token rows); the items below any state are a
contiguous range of leaf ranks ``[leaf_start[s], leaf_stop[s])``. For a row with segment ``g``
and excluded leaf ranks ``b_1 .. b_H`` (already restricted to segment ``g``), the allowed count
under state ``s`` is::

    (leaves of segment g in [lo, hi))  -  #{h : lo <= b_h < hi}

The first term is two binary searches in the segment's sorted leaf ranks (skipped when the
filter has no segments: it is ``hi - lo``); the second compares against the row's ``H``
excluded ranks.

Example (items ``[[0, 1], [0, 2], [1, 0]]``: leaf ranks 0, 1, 2)::

    tables = FilterTables.build(index, leaf_segments=np.array([0, 1, 1]))
    f = ItemFilter.for_rows(tables, index, excluded=[[1], []], row_segments=[1, -1])
    # row 0: segment 1 holds leaves {1, 2}; leaf 1 is excluded -> only item [1, 0] remains,
    #        so token 0 at the root is dropped (its subtree {0, 1} has no allowed leaf)
    # row 1: no segment (-1), nothing excluded -> all three items
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from constraints.index import TrieIndex


def _level_offsets(index: TrieIndex) -> np.ndarray:  # int64 [depth + 2]
    """First state id of each level, and the number of states at the end."""
    return np.concatenate([[0], np.cumsum(index.level_sizes)]).astype(np.int64)


def leaf_ranges(index: TrieIndex) -> tuple[np.ndarray, np.ndarray]:  # int32 [num_states] x 2
    """``(leaf_start, leaf_stop)``: the leaf ranks below each state of a fixed-length trie.

    Walks the levels bottom up: a state's range runs from its first child's start to its last
    child's stop (edge ``e`` leads to state ``e + 1``).
    """
    if not index.fixed_length:
        raise ValueError("item filters need a fixed-length index (every item is one leaf at the same depth)")
    offsets = _level_offsets(index)
    indptr = np.asarray(index.indptr, dtype=np.int64)
    start = np.empty(index.num_states, np.int64)
    stop = np.empty(index.num_states, np.int64)
    leaves = np.arange(index.level_sizes[-1], dtype=np.int64)
    start[offsets[-2] :], stop[offsets[-2] :] = leaves, leaves + 1
    for level in range(index.depth - 1, -1, -1):
        states = np.arange(offsets[level], offsets[level + 1])
        start[states] = start[indptr[states] + 1]
        stop[states] = stop[indptr[states + 1]]
    return start.astype(np.int32), stop.astype(np.int32)


def leaf_ranks(index: TrieIndex, items: np.ndarray) -> np.ndarray:
    """The leaf rank of each item (int [n, depth] token rows); -1 for rows not in the trie.

    Host-side and vectorized: edges are sorted by ``(parent state, token)``, so each level is
    one ``np.searchsorted`` over the keys ``parent * vocab + token``.
    """
    items = np.asarray(items)
    if items.ndim != 2 or items.shape[1] != index.depth:
        raise ValueError(f"items must be int [n, depth={index.depth}], got shape {items.shape}")
    indptr = np.asarray(index.indptr, dtype=np.int64)
    tokens = np.asarray(index.tokens, dtype=np.int64)
    parents = np.repeat(np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr))
    keys = parents * index.vocab_size + tokens  # strictly increasing over edges
    state = np.zeros(items.shape[0], np.int64)
    alive = np.ones(items.shape[0], bool)
    for level in range(index.depth):
        token = items[:, level].astype(np.int64)
        alive &= (token >= 0) & (token < index.vocab_size)
        wanted = state * index.vocab_size + np.where(alive, token, 0)
        edge = np.minimum(np.searchsorted(keys, wanted), keys.shape[0] - 1)
        alive &= keys[edge] == wanted
        state = np.where(alive, edge + 1, 0)
    first_leaf = index.num_states - index.level_sizes[-1]
    return np.where(alive, state - first_leaf, -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class FilterTables:
    """The catalog-wide part of a filter, built once per index (device arrays made once; the
    host copy of the segments serves :meth:`ItemFilter.for_rows`)."""

    leaf_start: jax.Array  # int32 [num_states]  first leaf rank below each state
    leaf_stop: jax.Array  # int32 [num_states]  one past the last leaf rank below each state
    segment_leaves: jax.Array  # int32 [num_leaves or 0]  leaf ranks grouped by segment, sorted in each
    segment_start: jax.Array  # int32 [num_segments + 1 or 0]  segment g: segment_start[g] : [g + 1]
    leaf_segments: np.ndarray | None  # int32 [num_leaves]  host copy; None without segments
    search_steps: int  # binary-search steps; 0 = no segments

    @classmethod
    def build(cls, index: TrieIndex, leaf_segments: np.ndarray | None = None) -> "FilterTables":
        """Tables for ``index``; ``leaf_segments``: int [num_leaves] segment id (>= 0) of each
        leaf rank, or None when rows are never restricted to a segment."""
        start, stop = leaf_ranges(index)
        if leaf_segments is None:
            empty = jnp.zeros((0,), jnp.int32)
            return cls(jnp.asarray(start), jnp.asarray(stop), empty, empty, None, 0)
        leaf_segments = np.asarray(leaf_segments)
        if leaf_segments.shape != (index.level_sizes[-1],):
            raise ValueError(
                f"leaf_segments must be int [num_leaves={index.level_sizes[-1]}], got shape {leaf_segments.shape}"
            )
        if leaf_segments.size and leaf_segments.min() < 0:
            raise ValueError("leaf_segments must be >= 0 (segment ids)")
        leaf_segments = leaf_segments.astype(np.int32)
        order = np.argsort(leaf_segments, kind="stable").astype(np.int32)  # ranks sorted within a segment
        counts = np.bincount(leaf_segments, minlength=1)
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        steps = int(counts.max()).bit_length()
        return cls(jnp.asarray(start), jnp.asarray(stop), jnp.asarray(order), jnp.asarray(bounds), leaf_segments, steps)

    @property
    def num_segments(self) -> int:
        return self.segment_start.shape[0] - 1 if self.search_steps else 0


def _padded(rows: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:  # -> int64 [batch, E], -1 pads
    """Ragged rows of ints as one -1-padded array (an array passes through)."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        return rows.astype(np.int64)
    rows = [np.asarray(r, np.int64).reshape(-1) for r in rows]
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@struct.dataclass
class ItemFilter:
    """A fixed-length trie plus per-row exclusions and segments (a layered constraint).

    Every per-row array leads with ``batch``, the leading axis of the states decoding passes
    (``[batch, beams]`` in beam search), so a data-parallel caller shards them with the rows.
    """

    index: TrieIndex
    leaf_start: jax.Array  # int32 [num_states]  (FilterTables)
    leaf_stop: jax.Array  # int32 [num_states]
    segment_leaves: jax.Array  # int32 [num_leaves or 0]
    segment_start: jax.Array  # int32 [num_segments + 1 or 0]
    excluded: jax.Array  # int32 [batch, max_excluded]  leaf ranks the row may not return; -1 pads
    row_segments: jax.Array  # int32 [batch]  the row's segment, -1 = every item
    search_steps: int = struct.field(pytree_node=False)  # 0 = no segments (static)

    # The layered-constraint metadata decoding reads (static, from the index).
    @property
    def depth(self) -> int:
        return self.index.depth

    @property
    def max_branching(self) -> tuple[int, ...]:
        return self.index.max_branching

    @property
    def fixed_length(self) -> bool:
        return True

    @property
    def vocab_size(self) -> int:
        return self.index.vocab_size

    @property
    def eos_id(self) -> None:
        return None

    @classmethod
    def for_rows(
        cls,
        tables: FilterTables,
        index: TrieIndex,
        excluded: Sequence[Sequence[int]],
        row_segments: Sequence[int] | None = None,
        max_excluded: int | None = None,
    ) -> "ItemFilter":
        """A filter for a batch: ``excluded[r]`` leaf ranks (any order, duplicates and -1 allowed;
        ragged lists or an int [batch, E] array) and ``row_segments[r]`` (-1 or None:
        unrestricted). Exclusions outside the row's segment are dropped here: the segment count
        they would be subtracted from never held them. ``max_excluded`` fixes the padded width
        (a static shape: keep it constant across batches to compile once). Vectorized over rows.
        """
        batch = len(excluded)
        segments = np.full(batch, -1, np.int32) if row_segments is None else np.asarray(row_segments, np.int32)
        if segments.shape != (batch,):
            raise ValueError(f"row_segments must be int [batch={batch}], got shape {segments.shape}")
        if (segments >= 0).any() and not tables.search_steps:
            raise ValueError("rows name segments but the filter tables were built without leaf_segments")
        if (segments >= tables.num_segments).any() and tables.search_steps:
            raise ValueError(f"row_segments must be < {tables.num_segments} (the number of segments)")
        ranks = _padded(excluded)  # int64 [batch, E], -1 pads
        ranks = np.where((ranks >= 0) & (ranks < index.level_sizes[-1]), ranks, -1)
        if (segments >= 0).any():
            off_segment = tables.leaf_segments[np.maximum(ranks, 0)] != segments[:, None]
            ranks = np.where((segments[:, None] >= 0) & off_segment, -1, ranks)
        ranks = -np.sort(-ranks, axis=1)  # descending: kept ranks first, -1 last
        repeats = np.zeros_like(ranks, dtype=bool)
        repeats[:, 1:] = (ranks[:, 1:] == ranks[:, :-1]) & (ranks[:, 1:] >= 0)
        ranks = -np.sort(-np.where(repeats, -1, ranks), axis=1)
        counts = (ranks >= 0).sum(axis=1)
        width = int(counts.max(initial=0)) if max_excluded is None else max_excluded
        if (counts > width).any():
            raise ValueError(f"a row excludes {int(counts.max())} items, more than max_excluded={width}")
        padded = np.full((batch, max(width, 1)), -1, np.int32)
        keep = min(width, ranks.shape[1])
        padded[:, :keep] = ranks[:, :keep]
        return cls(
            index=index,
            leaf_start=tables.leaf_start,
            leaf_stop=tables.leaf_stop,
            segment_leaves=tables.segment_leaves,
            segment_start=tables.segment_start,
            excluded=jnp.asarray(padded),
            row_segments=jnp.asarray(segments),
            search_steps=tables.search_steps,
        )

    def initial_state(self, shape: int | tuple[int, ...]) -> jax.Array:  # int32 [*shape]
        return self.index.initial_state(shape)

    def is_complete(self, state: jax.Array) -> jax.Array:  # int32 [...] -> bool [...]
        return self.index.is_complete(state)

    def candidates(
        self,
        state: jax.Array,  # int32 [batch, ...]
        depth: int,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:  # int32 [batch, ..., K], int32 [..., K], bool [..., K]
        """The trie's candidates with ``valid`` cleared where no allowed item lies below."""
        tokens, next_state, valid = self.index.candidates(state, depth)
        safe = jnp.clip(next_state, 0, self.index.num_states - 1)
        lo, hi = self.leaf_start[safe], self.leaf_stop[safe]  # int32 [batch, ..., K]
        per_row = (slice(None),) + (None,) * (lo.ndim - 1)
        count = self._segment_count(lo, hi, self.row_segments[per_row])
        excluded = self.excluded[per_row + (slice(None),)]  # int32 [batch, 1.., H]
        inside = (excluded >= lo[..., None]) & (excluded < hi[..., None])
        count = count - jnp.sum(inside, axis=-1, dtype=jnp.int32)
        return tokens, next_state, valid & (count > 0)

    def _segment_count(
        self,
        lo: jax.Array,  # int32 [batch, ..., K]
        hi: jax.Array,  # int32 [batch, ..., K]
        segment: jax.Array,  # int32 [batch, 1.., 1]  -1 = unrestricted
    ) -> jax.Array:  # int32 [batch, ..., K]
        """Leaves of the row's segment in ``[lo, hi)`` (``hi - lo`` for unrestricted rows)."""
        if not self.search_steps:
            return hi - lo
        g = jnp.maximum(segment, 0)
        first, last = self.segment_start[g], self.segment_start[g + 1]

        def rank_below(bound: jax.Array) -> jax.Array:
            """Number of the segment's sorted leaf ranks < bound (a fixed-step binary search)."""
            low, high = jnp.broadcast_to(first, bound.shape), jnp.broadcast_to(last, bound.shape)
            for _ in range(self.search_steps + 1):
                mid = (low + high) // 2
                probe = self.segment_leaves[jnp.clip(mid, 0, self.segment_leaves.shape[0] - 1)]
                go_right = (low < high) & (probe < bound)
                low = jnp.where(go_right, mid + 1, low)
                high = jnp.where((low < high) & ~go_right, mid, high)
            return low

        in_segment = rank_below(hi) - rank_below(lo)
        return jnp.where(segment >= 0, in_segment, hi - lo)
