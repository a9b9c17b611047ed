"""The generative-retrieval pipeline from raw tables to a trained retriever and its test split.

::

    items, interactions --k-core--> events --embeddings--> RQ-KMeans codes + collision code
        --> Catalog (item <-> semantic ID)    events --chronological, leave-one-out--> Split
    cold items (a seeded ``cold_fraction`` of the catalog) are removed from the training events
    --> train_retriever (resumable)  --> evaluate / the batch job

Embeddings (``DataSettings.embeddings``):

* ``"content"`` (default): a table's own embedding column when it has one (the synthetic data's
  content features), else :func:`retrieval.embeddings.content_embeddings` of its attribute and
  text columns. Cold items have no interactions, so their IDs must come from what they are:
  then they share prefixes with similar warm items.
* ``"hybrid"``: the content embedding concatenated with a collaborative one (truncated SVD of
  item co-occurrence in the *training* events only, so nothing of valid/test leaks into the
  IDs); cold items' collaborative part is zero, so their IDs still come from content.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from retrieval.catalog import Catalog, TokenLayout
from retrieval.embeddings import content_embeddings, cooccurrence_embeddings
from retrieval.movielens import load_movielens_100k
from retrieval.preprocess import Examples, Sequences, Split, k_core, leave_one_out, user_sequences
from retrieval.semantic_ids import CodeStats, build_semantic_ids
from retrieval.synthetic import synthetic_dataset
from retrieval.tables import Interactions, ItemTable

DATASETS = ("synthetic", "movielens-100k")
EMBEDDINGS = ("content", "hybrid")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """How raw tables become a catalog and a split (all deterministic per ``seed``)."""

    dataset: str = "synthetic"  # one of DATASETS (ignored when tables are passed in)
    k_core: int = 5
    max_history: int = 20
    levels: int = 3
    codebook_size: int = 32
    cold_fraction: float = 0.05
    embeddings: str = "content"  # "content" or "hybrid" (see the module docstring)
    seed: int = 0
    synthetic_users: int = 2000  # sizes of the synthetic data set
    synthetic_items: int = 1000

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; built in: {DATASETS}")
        if self.max_history < 1 or self.levels < 1 or self.codebook_size < 2:
            raise ValueError(f"need max_history >= 1, levels >= 1, codebook_size >= 2; got {self}")
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {EMBEDDINGS}, got {self.embeddings!r}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ValueError(f"cold_fraction must be in [0, 1), got {self.cold_fraction}")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything training and evaluation read."""

    catalog: Catalog
    split: Split  # train sequences have the cold items removed
    cold_items: np.ndarray  # int32 [c]  catalog rows never seen in training
    code_stats: CodeStats
    embedding_source: str  # "given" or "content", "+ co-occurrence" for hybrid


def load_tables(settings: DataSettings) -> tuple[ItemTable, Interactions]:
    """The built-in data set named by ``settings.dataset``."""
    settings.validate()
    if settings.dataset == "synthetic":
        return synthetic_dataset(num_users=settings.synthetic_users, num_items=settings.synthetic_items, seed=settings.seed)
    return load_movielens_100k()


def item_embeddings(items: ItemTable, seed: int) -> tuple[np.ndarray, str]:
    """float32 [items, dim] and where they came from ("given" or "content")."""
    if items.embeddings is not None:
        return items.embeddings.astype(np.float32), "given"
    categorical, text, numeric = {}, {}, {}
    for name, values in items.attributes.items():
        if values.dtype.kind in "if":
            numeric[name] = values.astype(np.float64)
        elif np.char.count(values.astype(str), " ").mean() > 1.5:  # several words on average: text
            text[name] = values.astype(str)
        else:
            categorical[name] = values.astype(str)
    if not (categorical or text or numeric):
        raise ValueError("the item table has neither embeddings nor attribute columns to derive them from")
    return content_embeddings(categorical, text, numeric, seed=seed), "content"


def _remove_items(seqs: Sequences, removed: np.ndarray) -> Sequences:
    """The sequences without the events of ``removed`` catalog rows."""
    keep = ~np.isin(seqs.items, removed)
    user_of_event = np.repeat(np.arange(len(seqs.user_ids)), np.diff(seqs.offsets))
    per_user = np.bincount(user_of_event[keep], minlength=len(seqs.user_ids))
    offsets = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64)
    return Sequences(user_ids=seqs.user_ids, offsets=offsets, items=seqs.items[keep])


def _drop_targets(examples: Examples, removed: np.ndarray) -> Examples:
    keep = ~np.isin(examples.targets, removed)
    return Examples(examples.user_ids[keep], examples.history[keep], examples.history_lengths[keep], examples.targets[keep])


def prepare(items: ItemTable, interactions: Interactions, settings: DataSettings) -> Prepared:
    """k-core, the leave-one-out split, the cold items, then semantic IDs (see the module docstring)."""
    settings.validate()
    events = k_core(interactions, settings.k_core)
    if len(events) == 0:
        raise ValueError(f"no events survive the {settings.k_core}-core filter")
    rows = items.index_of(np.unique(events.item_ids))
    attributes = {name: values[rows] for name, values in items.attributes.items()}
    table = ItemTable(items.item_ids[rows], attributes, None if items.embeddings is None else items.embeddings[rows])
    split = leave_one_out(user_sequences(events, table.item_ids), settings.max_history)
    rng = np.random.default_rng((settings.seed, 7))
    num_cold = int(round(settings.cold_fraction * table.num_items))
    cold = np.sort(rng.choice(table.num_items, size=num_cold, replace=False)).astype(np.int32)
    split = dataclasses.replace(split, train=_remove_items(split.train, cold), valid=_drop_targets(split.valid, cold))

    embeddings, source = item_embeddings(table, settings.seed)
    if settings.embeddings == "hybrid":
        train = split.train
        collaborative = cooccurrence_embeddings(train.offsets, train.items, table.num_items, dim=embeddings.shape[1],
                                                seed=settings.seed)
        embeddings, source = np.concatenate([embeddings, collaborative], axis=1), source + " + co-occurrence"
    ids = build_semantic_ids(embeddings, levels=settings.levels, codebook_size=settings.codebook_size, seed=settings.seed)
    catalog = Catalog(table.item_ids, ids.codes, TokenLayout(ids.level_sizes), attributes)
    return Prepared(catalog, split, cold, ids.stats, source)


def summary(prepared: Prepared) -> dict[str, Any]:
    """Sizes and code statistics for reports."""
    stats = prepared.code_stats
    return {
        "items": prepared.catalog.num_items,
        "users": int(len(prepared.split.test.targets)),
        "train_events": int(len(prepared.split.train.items)),
        "cold_items": int(len(prepared.cold_items)),
        "id_levels": list(prepared.catalog.layout.level_sizes),
        "vocab_size": prepared.catalog.layout.vocab_size,
        "codebook_usage": [round(u, 4) for u in stats.usage],
        "collision_rate": round(stats.collision_rate, 4),
        "max_collisions": stats.max_collisions,
        "embeddings": prepared.embedding_source,
    }
