"""How many bytes an index takes, in all and per million items."""

from __future__ import annotations

import dataclasses

from constraints.index import TrieIndex

_ARRAYS = ("indptr", "tokens", "dense_bits", "dense_rank")


def index_nbytes(index: TrieIndex) -> int:
    """Total bytes of the index's arrays."""
    return sum(getattr(index, name).nbytes for name in _ARRAYS)


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Sizes of one index."""

    num_items: int
    num_states: int
    num_edges: int
    dense_levels: int
    bytes_by_array: dict[str, int]
    total_bytes: int

    @property
    def mb_per_million_items(self) -> float:
        """Megabytes (1e6 bytes) per million items."""
        return self.total_bytes / self.num_items

    def format(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"items {self.num_items:,}  states {self.num_states:,}  edges {self.num_edges:,}  "
            f"dense levels {self.dense_levels}",
            f"total {self.total_bytes / 1e6:.2f} MB  ({self.mb_per_million_items:.2f} MB per 1M items)",
        ]
        lines += [f"  {name:<11} {nbytes / 1e6:10.2f} MB" for name, nbytes in self.bytes_by_array.items()]
        return "\n".join(lines)


def memory_report(index: TrieIndex) -> MemoryReport:
    """The sizes of ``index``'s arrays and the bytes per item."""
    by_array = {name: int(getattr(index, name).nbytes) for name in _ARRAYS}
    return MemoryReport(
        num_items=index.num_items,
        num_states=index.num_states,
        num_edges=index.num_edges,
        dense_levels=index.dense_levels,
        bytes_by_array=by_array,
        total_bytes=sum(by_array.values()),
    )
