"""Top-K items per query by beam search over semantic IDs: constrained to an allowed subset
with per-query filters (the job and the evaluation), or unconstrained and mapped back.

Every batch has the same shapes (prompts padded to ``1 + max_history * depth`` tokens, the
batch padded with dummy rows up to ``batch_size``), so one program compiles per setting. With a
mesh the batch is split over its ``data`` axis (``jax.jit`` with ``NamedSharding``s through
:func:`decoding.sharding.run_on_mesh`); the per-row filter arrays travel with their rows.

Example::

    allowed = AllowedItems.build(catalog)                       # every item, no segments
    top = constrained_top_k(retriever, allowed, history, k=10, num_beams=20, exclude=history)
    top.items[0]                                                # 10 catalog rows, best first
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from constraints import FilterTables, ItemFilter, TrieIndex, build_fixed_length_index, leaf_ranks
from decoding import beam_search
from decoding.beam_helpers import to_output
from decoding.constrained import sparse_beam_search
from decoding.sharding import REPLICATED, ROWS, data_size, param_shardings, run_on_mesh
from models import Decoder, init_beam_cache, init_cache
from retrieval.catalog import Catalog


@dataclasses.dataclass(frozen=True)
class Retriever:
    """A trained model with its catalog: everything decoding a query needs."""

    model: Decoder  # hashable: static under jit
    params: Any  # pytree of float arrays
    catalog: Catalog
    max_history: int  # items per prompt; fixes the prompt width

    @property
    def prompt_width(self) -> int:
        return 1 + self.max_history * self.catalog.depth

    @property
    def capacity(self) -> int:
        return self.prompt_width + self.catalog.depth


@dataclasses.dataclass(frozen=True)
class AllowedItems:
    """The allowed subset of a catalog as a trie, with its per-row filter tables."""

    rows: np.ndarray  # int32 [allowed]  catalog rows in leaf order (sorted by tokens)
    index: TrieIndex
    tables: FilterTables
    leaf_of_row: np.ndarray  # int32 [items]  leaf rank of each catalog row, -1 if not allowed
    segment_names: tuple[str, ...] | None  # segment id -> name, None without segments

    @classmethod
    def build(
        cls, catalog: Catalog, rows: np.ndarray | None = None, segment_values: np.ndarray | None = None
    ) -> "AllowedItems":
        """``rows``: int catalog rows that may be returned (None: all); ``segment_values``: str
        [items] each item's segment (e.g. a region column), None when queries name no segment."""
        rows = np.arange(catalog.num_items) if rows is None else np.unique(np.asarray(rows, np.int64))
        if rows.size == 0:
            raise ValueError("the allowed item set is empty")
        if rows.min() < 0 or rows.max() >= catalog.num_items:
            raise ValueError(f"allowed rows must be catalog rows in [0, {catalog.num_items})")
        tokens = catalog.tokens[rows]
        index = build_fixed_length_index(tokens, vocab_size=catalog.layout.vocab_size)
        ranks = leaf_ranks(index, tokens)
        in_leaf_order = np.empty_like(rows)
        in_leaf_order[ranks] = rows
        leaf_of_row = np.full(catalog.num_items, -1, np.int32)
        leaf_of_row[rows] = ranks
        names, leaf_segments = None, None
        if segment_values is not None:
            values = np.asarray(segment_values).astype(str)[in_leaf_order]
            unique, leaf_segments = np.unique(values, return_inverse=True)
            names = tuple(unique.tolist())
        tables = FilterTables.build(index, leaf_segments=leaf_segments)
        return cls(in_leaf_order.astype(np.int32), index, tables, leaf_of_row, names)

    @property
    def size(self) -> int:
        return len(self.rows)

    def segment_ids(self, names: np.ndarray) -> np.ndarray:
        """str [n] segment names -> int32 [n] ids; -1 for names no allowed item has (an empty
        segment: such a row gets no result, which the caller reports)."""
        if self.segment_names is None:
            raise ValueError("these allowed items were built without segments")
        known = {name: i for i, name in enumerate(self.segment_names)}
        return np.array([known.get(str(n), -1) for n in names], np.int32)


@dataclasses.dataclass(frozen=True)
class TopItems:
    """The K best items of each query, best first."""

    items: np.ndarray  # int32 [n, k]  catalog rows; -1 where fewer than k were found
    log_probs: np.ndarray  # float32 [n, k]  the model's log-probability of each item's ID; -inf if none
    tokens: np.ndarray  # int32 [n, k, depth]  generated ID tokens (PAD where none)
    invalid: np.ndarray  # int32 [n]  hypotheses that named no item (unconstrained search only)
    nonfinite: np.ndarray  # bool [n]  the model produced NaN/inf logits for the row: its results are meaningless


def _constrained_search(
    model: Any, num_beams: int, params: Any, cache: Any, prompts: jax.Array, lengths: jax.Array, constraint: Any
) -> Any:
    """The sparse beam core, then sorting (traceable; ``model`` and ``num_beams`` static)."""
    batch = prompts.shape[0]
    pad = jnp.zeros((), jnp.int32)
    final = sparse_beam_search(model, params, cache, prompts, lengths, constraint, jnp.zeros((batch,)), pad, num_beams)
    return to_output(final, pad)


def _filter_shardings(constraint: ItemFilter, mesh: Mesh) -> ItemFilter:
    """Replicated catalog tables, per-row arrays split with the rows."""
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, REPLICATED), constraint)
    rows = NamedSharding(mesh, ROWS)
    return replicated.replace(excluded=rows, row_segments=rows)


def constrained_top_k(
    retriever: Retriever,
    allowed: AllowedItems,
    history: np.ndarray,
    *,
    k: int,
    num_beams: int,
    exclude: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> TopItems:
    """The ``k`` best allowed items for each history by constrained beam search.

    Args:
      retriever: model, params, catalog. ``retriever.model`` is static.
      allowed: the allowed subset (its trie's metadata is static: a new subset recompiles).
      history: int [n, max_history] catalog rows, oldest first, -1 pads at the end (the prompt).
      k, num_beams: results per query and beam width (static); ``k <= num_beams``.
      exclude: int [n, E] catalog rows each query must not get back (its whole history, say),
        -1 pads; ``E`` is a static width. None excludes nothing.
      segments: int32 [n] each query's segment id in ``allowed`` (-1: unrestricted), or None.
      batch_size: rows per device call (static; padded with dummy rows); a multiple of the
        mesh's data axis.
      mesh: split each batch over its ``data`` axis; None runs on the default device.
    """
    history = np.asarray(history)
    if not 1 <= k <= num_beams:
        raise ValueError(f"need 1 <= k <= num_beams, got k={k}, num_beams={num_beams}")
    if k > allowed.size:
        raise ValueError(f"k={k} is larger than the allowed item set ({allowed.size} items)")
    if mesh is not None and batch_size % data_size(mesh):
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {data_size(mesh)} devices on 'data'")
    n = history.shape[0]
    prompts, lengths = retriever.catalog.prompts(history)
    exclude = np.full((n, 1), -1) if exclude is None else np.asarray(exclude)
    excluded = np.where(exclude >= 0, allowed.leaf_of_row[np.maximum(exclude, 0)], -1)
    rows_segment = np.full(n, -1, np.int32) if segments is None else np.asarray(segments, np.int32)
    params = retriever.params
    if mesh is not None:
        params = jax.device_put(params, param_shardings(params, mesh))
    outputs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        batch_prompts = np.pad(prompts[start:stop], ((0, pad), (0, 0)))
        batch_prompts[stop - start :, 0] = prompts[0, 0]  # dummy rows: a bare BOS prompt
        batch_lengths = np.pad(lengths[start:stop], (0, pad), constant_values=1)
        constraint = ItemFilter.for_rows(
            allowed.tables,
            allowed.index,
            excluded=np.pad(excluded[start:stop], ((0, pad), (0, 0)), constant_values=-1),
            row_segments=np.pad(rows_segment[start:stop], (0, pad), constant_values=-1)
            if segments is not None
            else None,
            max_excluded=excluded.shape[1],
        )
        # The history's keys/values once per query, only the ID tokens per beam.
        cache = init_beam_cache(
            retriever.model.config, batch_size, num_beams, retriever.prompt_width, retriever.catalog.depth
        )
        args = (params, cache, jnp.asarray(batch_prompts), jnp.asarray(batch_lengths), constraint)
        if mesh is None:
            out = _constrained_jit(retriever.model, num_beams, *args)
        else:
            rows = NamedSharding(mesh, ROWS)
            in_shardings = (param_shardings(params, mesh), rows, rows, rows, _filter_shardings(constraint, mesh))
            out = run_on_mesh(_constrained_search, (retriever.model, num_beams), args, mesh, in_shardings, rows)
        outputs.append(jax.device_get(out))
    sequences = np.concatenate([o.sequences for o in outputs])[:n, :k]
    log_probs = np.concatenate([o.log_probs for o in outputs])[:n, :k]
    valid = np.concatenate([o.valid for o in outputs])[:n, :k]
    nonfinite = np.concatenate([o.nonfinite for o in outputs])[:n]
    items = np.where(valid, retriever.catalog.items_of_tokens(sequences), -1)
    if (valid & (items < 0)).any():
        raise AssertionError("constrained search returned a sequence that names no catalog item")
    log_probs = np.where(valid, log_probs, -np.inf).astype(np.float32)
    return TopItems(items.astype(np.int32), log_probs, sequences, np.zeros(n, np.int32), nonfinite)


_constrained_jit = jax.jit(_constrained_search, static_argnums=(0, 1))


def unconstrained_top_k(
    retriever: Retriever,
    history: np.ndarray,
    *,
    k: int,
    num_beams: int,
    exclude: np.ndarray | None = None,
    batch_size: int = 64,
) -> TopItems:
    """Plain beam search over ``depth`` tokens, each hypothesis mapped back to an item.

    Hypotheses that name no catalog item are counted in ``invalid`` and skipped (so a row may
    end with fewer than ``k`` items, -1 filled); items of ``exclude`` (int [n, E] catalog rows,
    -1 pads) are skipped too, after the search (it cannot exclude them during it).
    """
    history = np.asarray(history)
    if not 1 <= k <= num_beams:
        raise ValueError(f"need 1 <= k <= num_beams, got k={k}, num_beams={num_beams}")
    catalog, n = retriever.catalog, history.shape[0]
    prompts, lengths = catalog.prompts(history)
    items = np.full((n, k), -1, np.int32)
    log_probs = np.full((n, k), -np.inf, np.float32)
    tokens = np.zeros((n, k, catalog.depth), np.int32)
    invalid = np.zeros(n, np.int32)
    nonfinite = np.zeros(n, bool)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        batch_prompts = np.pad(prompts[start:stop], ((0, pad), (0, 0)))
        batch_prompts[stop - start :, 0] = prompts[0, 0]
        out = beam_search(
            retriever.model,
            retriever.params,
            init_cache(retriever.model.config, batch_size, retriever.capacity),
            batch_prompts,
            np.pad(lengths[start:stop], (0, pad), constant_values=1),
            num_beams=num_beams,
            max_new_tokens=catalog.depth,
            length_penalty=0.0,
        )
        out = jax.device_get(out)
        found = catalog.items_of_tokens(out.sequences)  # [batch, beams]
        nonfinite[start:stop] = out.nonfinite[: stop - start]
        for row in range(stop - start):
            q = start + row
            ok = out.valid[row] & (found[row] >= 0)
            invalid[q] = int((out.valid[row] & (found[row] < 0)).sum())
            if exclude is not None:
                ok &= ~np.isin(found[row], exclude[q][exclude[q] >= 0])
            keep = np.flatnonzero(ok)[:k]
            items[q, : len(keep)] = found[row, keep]
            log_probs[q, : len(keep)] = out.log_probs[row, keep]
            tokens[q, : len(keep)] = out.sequences[row, keep]
    return TopItems(items, log_probs, tokens, invalid, nonfinite)
