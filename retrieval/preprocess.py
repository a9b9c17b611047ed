"""The field's standard preprocessing: k-core filter, chronological user sequences, leave-one-out split.

Example, with the catalog ``["a", "b", "c", "d"]`` (rows 0..3) and events (user, item, time)
in file order::

    u1 b 5 | u1 a 1 | u2 a 3 | u1 c 9 | u2 b 3 | u1 d 7

    seqs = user_sequences(inter, np.array(["a", "b", "c", "d"]))
    seqs.user_ids         # ['u1', 'u2']
    seqs.offsets          # [0, 4, 6]
    seqs.items            # [0, 1, 3, 2, 0, 1]   u1: a b d c; u2: a b (a tie at time 3: file order)
    split = leave_one_out(seqs, max_history=2)
    split.num_dropped_users   # 1: u2 has fewer than 3 events
    split.train.items         # [0, 1]     u1 without its last two events
    split.valid.history       # [[0, 1]]   target 3 (d)
    split.test.history        # [[1, 3]]   the last 2 events before target 2 (c)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retrieval.tables import DataError, IdIndex, Interactions


def k_core(inter: Interactions, k: int = 5) -> Interactions:
    """The largest subset of events in which every user and every item has at least ``k`` events.

    Users and items below ``k`` are dropped, which can push others below ``k``, until nothing
    changes. Repeated (user, item) events each count. The kept events stay in file order;
    ``k <= 1`` returns ``inter`` itself.
    """
    if k <= 1:
        return inter
    _, users = np.unique(inter.user_ids, return_inverse=True)
    _, items = np.unique(inter.item_ids, return_inverse=True)
    keep = np.ones(len(inter), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        still = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if np.array_equal(still, keep):
            return inter.select(keep)
        keep = still


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Each user's items in time order, CSR: user ``u``'s are ``items[offsets[u]:offsets[u + 1]]``."""

    user_ids: np.ndarray  # str [users], ascending
    offsets: np.ndarray  # int64 [users + 1], offsets[0] == 0, offsets[-1] == events
    items: np.ndarray  # int32 [events], row in the catalog's item order, oldest first per user

    def __post_init__(self):
        offsets = self.offsets
        if (
            offsets.shape != (self.user_ids.shape[0] + 1,)
            or offsets[0] != 0
            or offsets[-1] != self.items.shape[0]
            or (np.diff(offsets) < 0).any()
        ):
            raise ValueError(
                f"offsets must rise from 0 to {self.items.shape[0]} in {self.user_ids.shape[0] + 1} steps, "
                f"got shape {offsets.shape}"
            )

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:  # int64 [users]
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:  # -> int32 [length]
        """User ``user``'s (a position in ``user_ids``) items, oldest first."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]


def user_sequences(inter: Interactions, item_ids: np.ndarray) -> Sequences:
    """Each user's events as catalog rows, sorted by time; ties keep the file order.

    Args:
      inter: the events.
      item_ids: str [items], unique: the catalog's item order (e.g. ``ItemTable.item_ids``).

    Raises:
      DataError: an event's item is not in ``item_ids`` (naming the event's file and line).
    """
    rows = IdIndex.build(item_ids).rows(inter.item_ids)
    unknown = np.flatnonzero(rows < 0)
    if unknown.size:
        raise DataError(
            inter.source,
            f"item id {str(inter.item_ids[unknown[0]])!r} is not in the catalog "
            f"({unknown.size} events have unknown items)",
            line=int(inter.lines[unknown[0]]),
        )
    user_ids, users = np.unique(inter.user_ids, return_inverse=True)
    order = np.lexsort((np.arange(len(inter)), inter.timestamps, users))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=len(user_ids)), out=offsets[1:])
    return Sequences(user_ids, offsets, rows[order])


@dataclasses.dataclass(frozen=True)
class Examples:
    """(history -> target) pairs, one per user."""

    user_ids: np.ndarray  # str [n]
    history: np.ndarray  # int32 [n, max_history], oldest first, left-aligned, padded with -1
    history_lengths: np.ndarray  # int32 [n]
    targets: np.ndarray  # int32 [n], catalog rows

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class Split:
    """A leave-one-out split; a user's last event is its test target, the one before its valid target."""

    train: Sequences  # each user's events but the last two
    valid: Examples  # target: the second-to-last event; history: the last max_history events before it
    test: Examples  # target: the last event; history: the last max_history events before it
    max_history: int
    num_dropped_users: int  # users with fewer than 3 events, left out of all three parts


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:  # int64 [n], int64 [n] -> int64 [sum(lengths)]
    """The concatenation of ``arange(s, s + l)`` over the pairs."""
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(lengths.sum())


def _examples(
    seqs: Sequences,
    users: np.ndarray,  # int64 [n], positions in seqs
    targets: np.ndarray,  # int64 [n], position of each target in seqs.items
    max_history: int,
) -> Examples:
    """Targets with the (at most) ``max_history`` events of the same user just before them."""
    first = np.maximum(seqs.offsets[users], targets - max_history)
    lengths = targets - first
    columns = np.arange(max_history)
    present = columns[None, :] < lengths[:, None]
    history = np.where(present, seqs.items[np.where(present, first[:, None] + columns, 0)], -1)
    return Examples(
        seqs.user_ids[users], history.astype(np.int32), lengths.astype(np.int32), seqs.items[targets].astype(np.int32)
    )


def leave_one_out(seqs: Sequences, max_history: int = 20) -> Split:
    """Splits each user's sequence into train (all but the last two), valid and test targets.

    Users with fewer than 3 events cannot fill all three parts and are dropped; their number is
    ``Split.num_dropped_users``. No valid or test target event appears in train.
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    lengths = seqs.lengths
    users = np.flatnonzero(lengths >= 3)
    train_lengths = lengths[users] - 2
    train_offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(train_lengths, out=train_offsets[1:])
    train = Sequences(seqs.user_ids[users], train_offsets, seqs.items[_ranges(seqs.offsets[users], train_lengths)])
    ends = seqs.offsets[users + 1]
    return Split(
        train=train,
        valid=_examples(seqs, users, ends - 2, max_history),
        test=_examples(seqs, users, ends - 1, max_history),
        max_history=max_history,
        num_dropped_users=len(seqs) - len(users),
    )
