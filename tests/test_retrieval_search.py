"""Constrained / unconstrained / exact search of a trained retriever, against brute force."""

import jax
import numpy as np

from models import forward
from retrieval.exact import exact_log_probs, exact_top_k
from retrieval.search import AllowedItems, constrained_top_k, unconstrained_top_k
from retrieval.training import training_windows
from retrieval_helpers import history_rows


def _brute_force_log_probs(run, history):
    """log p(item | prompt) for every (query, item) by one no-cache forward over prompt + item."""
    catalog, config = run.retriever.catalog, run.retriever.model.config
    prompts, lengths = catalog.prompts(history)
    items = catalog.tokens
    depth = catalog.depth
    width = prompts.shape[1] + depth
    rows = []
    for q in range(len(history)):
        seqs = np.zeros((len(items), width), np.int32)
        seqs[:, : lengths[q]] = prompts[q, : lengths[q]]
        seqs[:, lengths[q] : lengths[q] + depth] = items
        rows.append(seqs)
    seqs = np.concatenate(rows)
    log_probs = np.asarray(jax.nn.log_softmax(jax.jit(forward, static_argnums=0)(config, run.retriever.params, seqs)))
    starts = np.repeat(lengths, len(items))
    positions = starts[:, None] - 1 + np.arange(depth)[None, :]
    rows = np.arange(len(seqs))[:, None]
    targets = np.tile(items, (len(history), 1))  # [Q*I, depth]
    scores = log_probs[rows, positions, targets].sum(axis=1)
    return scores.reshape(len(history), len(items))


def test_exact_scoring_equals_brute_force(small_run):
    history = history_rows(small_run, 5)
    exact = exact_log_probs(small_run.retriever, history, query_batch=4, item_chunk=64)
    np.testing.assert_allclose(exact, _brute_force_log_probs(small_run, history), rtol=2e-4, atol=2e-4)


def test_constrained_top_k_equals_exact_with_enough_beams(small_run):
    retriever = small_run.retriever
    history = history_rows(small_run, 12)
    num_items = retriever.catalog.num_items
    top = constrained_top_k(retriever, AllowedItems.build(retriever.catalog), history, k=10, num_beams=num_items,
                            exclude=history, batch_size=8)
    scores = exact_log_probs(retriever, history)
    exact_items, exact_scores = exact_top_k(scores, 10, history=history)
    assert (top.items == exact_items).all()
    np.testing.assert_allclose(top.log_probs, exact_scores, rtol=1e-4, atol=1e-4)
    assert not any(np.isin(top.items[q], history[q][history[q] >= 0]).any() for q in range(len(history)))


def test_constrained_to_a_subset_with_segments(small_run):
    retriever = small_run.retriever
    catalog = retriever.catalog
    history = history_rows(small_run, 8)
    subset = np.arange(0, catalog.num_items, 2)
    segment_values = np.array([f"s{i % 3}" for i in range(catalog.num_items)])
    allowed = AllowedItems.build(catalog, rows=subset, segment_values=segment_values)
    segments = allowed.segment_ids(np.array(["s0", "s1", "s2", "s0", "s1", "s2", "s0", "s1"]))
    top = constrained_top_k(retriever, allowed, history, k=5, num_beams=catalog.num_items, exclude=history,
                            segments=segments, batch_size=8)
    scores = exact_log_probs(retriever, history)
    for q in range(len(history)):
        ok = np.isin(np.arange(catalog.num_items), subset) & (segment_values == allowed.segment_names[segments[q]])
        ok &= ~np.isin(np.arange(catalog.num_items), history[q])
        expected = np.flatnonzero(ok)[np.argsort(-scores[q, ok], kind="stable")][:5]
        assert top.items[q].tolist() == expected.tolist()


def test_unconstrained_maps_back_and_counts_invalid(small_run):
    retriever = small_run.retriever
    history = history_rows(small_run, 6)
    top = unconstrained_top_k(retriever, history, k=5, num_beams=8, exclude=history, batch_size=8)
    found = top.items >= 0
    assert (retriever.catalog.items_of_tokens(top.tokens[found]) == top.items[found]).all()
    assert (top.invalid >= 0).all() and (top.invalid <= 8).all()
    scores = exact_log_probs(retriever, history)
    q, r = np.nonzero(found)
    np.testing.assert_allclose(top.log_probs[q, r], scores[q, top.items[q, r]], rtol=1e-4, atol=1e-4)


def test_cold_items_never_in_training(small_run):
    prepared = small_run.prepared
    cold = prepared.cold_items
    assert len(cold) > 0
    assert not np.isin(prepared.split.train.items, cold).any()
    assert not np.isin(prepared.split.valid.targets, cold).any()
    cold_tokens = {tuple(t) for t in prepared.catalog.tokens[cold].tolist()}
    depth = prepared.catalog.depth
    for step in range(5):
        windows = training_windows(prepared.split.train, prepared.catalog, step, 32, 6, seed=0)
        items = windows[:, 1:].reshape(32, -1, depth)
        assert not any(tuple(item) in cold_tokens for row in items.tolist() for item in row)


def test_training_log_and_selection(small_run):
    import json
    import os

    log = json.load(open(os.path.join(small_run.run_dir, "train.json")))
    assert len(log["losses"]) == 40 and [e["step"] for e in log["evals"]] == [20, 40]
    best = max(log["evals"], key=lambda e: e["valid_recall@10"])
    assert log["best"]["valid_recall@10"] == best["valid_recall@10"]
    assert np.mean(log["losses"][-5:]) < np.mean(log["losses"][:5])
