"""Exact scoring: the model's log-probability of every candidate item's ID, for every query.

The ceiling of beam search (its oracle): beam search over the same items can at best return
the exact top-K. Each query's prompt is prefilled once; its cache is then repeated for a chunk
of ``C`` items, which are teacher-forced in one call (``depth - 1`` tokens each)::

    log p(item | prompt) = log p(t_0 | prompt) + sum_{d >= 1} log p(t_d | prompt, t_0 .. t_{d-1})

Cost: ``items x (depth - 1)`` forward tokens per query, on device, in batches of
``query_batch x item_chunk`` rows.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from decoding import prefill
from decoding.cache_rows import repeat_rows
from models import init_cache
from retrieval.search import Retriever


@functools.partial(jax.jit, static_argnums=0)
def _prefill(model: Any, params: Any, cache: Any, prompts: jax.Array, lengths: jax.Array) -> tuple[jax.Array, Any]:
    logits, cache = prefill(model, params, cache, prompts, lengths)
    return jax.nn.log_softmax(logits, axis=-1), cache


@functools.partial(jax.jit, static_argnums=0)
def _score_chunk(
    model: Any,
    params: Any,
    cache: Any,  # decode cache with Q rows, prompts prefilled
    first_log_probs: jax.Array,  # float32 [Q, vocab]  next-token log-probs after each prompt
    item_tokens: jax.Array,  # int32 [C, depth]
) -> jax.Array:  # float32 [Q, C]
    queries, chunk = first_log_probs.shape[0], item_tokens.shape[0]
    scores = first_log_probs[:, item_tokens[:, 0]]  # [Q, C]
    if item_tokens.shape[1] > 1:
        rows = repeat_rows(cache, chunk)  # query-major: row q * C + c
        feed = jnp.tile(item_tokens[:, :-1], (queries, 1))  # [Q * C, depth - 1]
        logits, _ = model(params, feed, rows, jnp.full((queries * chunk,), feed.shape[1], jnp.int32))
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        targets = jnp.tile(item_tokens[:, 1:], (queries, 1))
        picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        scores = scores + picked.sum(axis=1).reshape(queries, chunk)
    return scores


def exact_log_probs(
    retriever: Retriever,
    history: np.ndarray,
    item_rows: np.ndarray | None = None,
    *,
    query_batch: int = 8,
    item_chunk: int = 256,
) -> np.ndarray:
    """float32 [n, items]: log p(item's ID | history) for every query and candidate item.

    Args:
      retriever: model (static), params, catalog.
      history: int [n, max_history] catalog rows, oldest first, -1 pads.
      item_rows: int [m] catalog rows to score (default: every item); column j scores row j.
      query_batch, item_chunk: rows per device call (static; padded, so one compile).
    """
    catalog = retriever.catalog
    item_rows = np.arange(catalog.num_items) if item_rows is None else np.asarray(item_rows)
    tokens = catalog.tokens[item_rows]
    n, m = len(history), len(item_rows)
    prompts, lengths = catalog.prompts(np.asarray(history))
    padded_items = -(-m // item_chunk) * item_chunk
    tokens = np.pad(tokens, ((0, padded_items - m), (0, 0)), mode="edge")
    out = np.empty((n, m), np.float32)
    model, params = retriever.model, retriever.params
    for start in range(0, n, query_batch):
        stop = min(start + query_batch, n)
        pad = query_batch - (stop - start)
        cache = init_cache(model.config, query_batch, retriever.capacity)
        first, cache = _prefill(
            model,
            params,
            cache,
            jnp.asarray(np.pad(prompts[start:stop], ((0, pad), (0, 0)))),
            jnp.asarray(np.pad(lengths[start:stop], (0, pad), constant_values=1)),
        )
        chunks = [
            _score_chunk(model, params, cache, first, jnp.asarray(tokens[c : c + item_chunk]))
            for c in range(0, padded_items, item_chunk)
        ]
        out[start:stop] = np.concatenate(jax.device_get(chunks), axis=1)[: stop - start, :m]
    return out


def exact_top_k(
    scores: np.ndarray,  # float32 [n, m]  exact log-probs (exact_log_probs)
    k: int,
    item_rows: np.ndarray | None = None,  # int [m] the catalog row of each column
    history: np.ndarray | None = None,  # int [n, max_history] rows to exclude, -1 pads
) -> tuple[np.ndarray, np.ndarray]:  # int32 [n, k] catalog rows, float32 [n, k]
    """The exact top-``k`` items per query (stable: ties go to the lower column), history excluded."""
    scores = np.array(scores, np.float32, copy=True)
    rows = np.arange(scores.shape[1]) if item_rows is None else np.asarray(item_rows)
    if history is not None:
        column_of = np.full(max(rows.max(), np.max(history, initial=0)) + 1, -1, np.int64)
        column_of[rows] = np.arange(len(rows))
        hist = np.asarray(history)
        cols = np.where(hist >= 0, column_of[np.maximum(hist, 0)], -1)
        q, h = np.nonzero(cols >= 0)
        scores[q, cols[q, h]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(top), rows[order], -1).astype(np.int32), top
