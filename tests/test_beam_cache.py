"""models.BeamKVCache (one prompt prefix per query, a per-beam suffix): the Decoder's logits
against the no-cache forward, the row methods decoding calls, beam search (sparse constrained
and dense paths) equal to the same search with the per-beam KVCache, and its size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from constraints import build_fixed_length_index
from decoding.beam_search import beam_search
from decoding.cache_rows import gather_rows, repeat_rows
from decoding.diverse_beam_search import diverse_beam_search
from decoding.protocol import DecodeCache
from models import BeamKVCache, Decoder, beam_cache_nbytes, forward, init_beam_cache, init_cache, preset
from test_models_decoder import random_params, random_tokens

TOL = 1e-4
TINY = preset("tiny")
MODEL = Decoder(TINY)
QUERIES, BEAMS, PREFIX, SUFFIX = 2, 3, 8, 4
ROWS = QUERIES * BEAMS

_step = jax.jit(lambda params, tokens, cache, num_valid: MODEL(params, tokens, cache, num_valid))
_forward = jax.jit(forward, static_argnums=0)


def no_cache_logits(params, sequence: np.ndarray) -> np.ndarray:
    """float32 [len, vocab]: the full forward over one row's whole sequence."""
    return np.asarray(_forward(TINY, params, jnp.asarray(sequence, jnp.int32)[None]))[0]


def test_protocol_and_static_fields():
    cache = init_beam_cache(TINY, QUERIES, BEAMS, PREFIX, SUFFIX)
    assert isinstance(cache, DecodeCache)
    assert cache.capacity == PREFIX + SUFFIX and (cache.queries, cache.rows) == (QUERIES, QUERIES)
    leaves, treedef = jax.tree.flatten(cache)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)  # beams and the phase are metadata
    expanded = repeat_rows(cache, BEAMS)
    assert jax.tree.structure(expanded) != treedef  # the phase is static: a new program
    assert jax.tree.structure(gather_rows(expanded, jnp.arange(ROWS))) == jax.tree.structure(expanded)
    with pytest.raises(ValueError, match="positive int"):
        init_beam_cache(TINY, QUERIES, 0, PREFIX, SUFFIX)


def test_decoder_logits_equal_the_no_cache_forward():
    """Ragged prefill (one query with an empty prefix, as the dense loop makes for a 1-token
    prompt), the expansion, a step, a reorder by parent within each query, a 2-token step:
    every row's logits equal the full forward over its prompt + its own suffix tokens."""
    params = random_params(TINY, seed=1)
    prompts = np.asarray(random_tokens((QUERIES, PREFIX), seed=2))
    prefix_lengths = np.array([6, 0])
    cache = init_beam_cache(TINY, QUERIES, BEAMS, PREFIX, SUFFIX)
    first, cache = _step(params, jnp.asarray(prompts), cache, jnp.asarray(prefix_lengths, jnp.int32))
    np.testing.assert_array_equal(cache.prefix_lengths, prefix_lengths)
    np.testing.assert_allclose(first[0, :6], no_cache_logits(params, prompts[0, :6]), atol=TOL, rtol=TOL)

    cache = repeat_rows(cache, BEAMS)
    steps = np.asarray(random_tokens((ROWS, 3), seed=3))
    second, cache = _step(params, jnp.asarray(steps[:, :1]), cache, jnp.ones((ROWS,), jnp.int32))
    parents = np.array([2, 2, 0, 4, 3, 3])  # each row continues a row of its own query
    cache = gather_rows(cache, jnp.asarray(parents, jnp.int32))
    third, cache = _step(params, jnp.asarray(steps[:, 1:]), cache, jnp.full((ROWS,), 2, jnp.int32))
    np.testing.assert_array_equal(cache.lengths, np.repeat(prefix_lengths, BEAMS) + 3)
    np.testing.assert_array_equal(cache.prefix_lengths, prefix_lengths)
    assert np.asarray(second).std() > 0.5  # logits vary enough for the comparison to mean something
    for row in range(ROWS):
        query, parent = row // BEAMS, parents[row]
        n = prefix_lengths[query]
        sequence = np.concatenate([prompts[query, :n], steps[parent, :1], steps[row, 1:]])
        expected = no_cache_logits(params, sequence)
        np.testing.assert_allclose(second[parent, 0], expected[n], atol=TOL, rtol=TOL)
        np.testing.assert_allclose(third[row], expected[n + 1 : n + 3], atol=TOL, rtol=TOL)


def test_row_methods_move_only_the_suffix():
    params = random_params(TINY, seed=4)
    prompts = random_tokens((QUERIES, PREFIX), seed=5)
    _, cache = _step(params, prompts, init_beam_cache(TINY, QUERIES, BEAMS, PREFIX, SUFFIX), jnp.array([5, 3], jnp.int32))
    # The sparse path expands by a gather (rows[i] = i // beams), the dense loop by a repeat.
    by_gather = gather_rows(cache, jnp.repeat(jnp.arange(QUERIES, dtype=jnp.int32), BEAMS))
    by_repeat = repeat_rows(cache, BEAMS)
    for expanded in (by_gather, by_repeat):
        assert isinstance(expanded, BeamKVCache) and expanded.expanded and expanded.rows == ROWS
        np.testing.assert_array_equal(expanded.lengths, [5, 5, 5, 3, 3, 3])
        assert expanded.prefix_keys[0] is cache.prefix_keys[0]  # the prefix is not copied
        assert expanded.keys[0].shape == (ROWS, TINY.n_kv_heads, SUFFIX, TINY.head_dim)
    _, stepped = _step(params, random_tokens((ROWS, 1), seed=6), by_repeat, jnp.ones((ROWS,), jnp.int32))
    parents = jnp.array([1, 0, 0, 5, 5, 3], jnp.int32)
    moved = gather_rows(stepped, parents)
    assert moved.prefix_keys[0] is stepped.prefix_keys[0]
    for got, source in zip(moved.keys + moved.values, stepped.keys + stepped.values):
        np.testing.assert_array_equal(got, np.asarray(source)[np.asarray(parents)])
    np.testing.assert_array_equal(moved.lengths, np.asarray(stepped.lengths)[np.asarray(parents)])
    with pytest.raises(ValueError, match="expansion"):
        repeat_rows(cache, BEAMS + 1)
    with pytest.raises(ValueError, match="expansion"):
        repeat_rows(by_repeat, BEAMS)
    with pytest.raises(ValueError, match="queries \\* beams"):
        gather_rows(stepped, jnp.arange(QUERIES, dtype=jnp.int32))
    with pytest.raises(ValueError, match="takes 6 rows"):
        MODEL(params, random_tokens((QUERIES, 1), seed=7), by_repeat, jnp.ones((QUERIES,), jnp.int32))


def same_search(out, reference):
    """Two BeamSearchOutputs name the same hypotheses in the same order, log-probs close."""
    np.testing.assert_array_equal(out.valid, reference.valid)
    np.testing.assert_array_equal(out.sequences, reference.sequences)
    np.testing.assert_array_equal(out.lengths, reference.lengths)
    np.testing.assert_allclose(out.log_probs, reference.log_probs, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out.scores, reference.scores, atol=1e-5, rtol=1e-5)


PROMPTS = np.array([[72, 105, 33, 8, 9, 10], [40, 0, 0, 0, 0, 0], [3, 4, 5, 0, 0, 0]], np.int32)
PROMPT_LENGTHS = np.array([6, 1, 3])


@pytest.mark.parametrize("num_beams", [1, 7])
def test_sparse_constrained_search_equals_the_per_beam_cache(num_beams):
    params = random_params(TINY, seed=8)
    rng = np.random.default_rng(9)
    items = np.unique(rng.integers(0, 5, size=(40, 3)) * 7 + rng.integers(0, 3, size=(40, 3)), axis=0)
    index = build_fixed_length_index(items, TINY.vocab_size)
    batch, width = len(PROMPTS), PROMPTS.shape[1]
    kwargs = dict(num_beams=num_beams, constraint=index, length_penalty=0.0, min_bucket=8)
    reference = beam_search(MODEL, params, init_cache(TINY, batch, width + 3), PROMPTS, PROMPT_LENGTHS, **kwargs)
    # The sparse path writes the whole prompt into the prefix and depth - 1 = 2 tokens per beam.
    cache = init_beam_cache(TINY, batch, num_beams, width, 3)
    out = beam_search(MODEL, params, cache, PROMPTS, PROMPT_LENGTHS, **kwargs)
    same_search(out, reference)
    assert np.asarray(out.valid).sum() == batch * min(num_beams, len(items))


@pytest.mark.parametrize("groups", [1, 2])
def test_dense_search_equals_the_per_beam_cache(groups):
    """Unconstrained, with EOS and early stopping (and diverse groups): the dense loop prefills
    all but the last prompt token (an empty prefix for the 1-token prompt) and feeds it first."""
    params = random_params(TINY, seed=10)
    batch, width, num_beams, new = len(PROMPTS), PROMPTS.shape[1], 4, 5
    run = beam_search if groups == 1 else diverse_beam_search
    kwargs = dict(num_beams=num_beams, max_new_tokens=new, eos_ids=(7, 40), length_penalty=0.6, min_bucket=8)
    if groups > 1:
        kwargs |= dict(num_groups=groups, diversity_strength=0.5)
    reference = run(MODEL, params, init_cache(TINY, batch, width + new), PROMPTS, PROMPT_LENGTHS, **kwargs)
    cache = init_beam_cache(TINY, batch, num_beams, width, new)
    out = run(MODEL, params, cache, PROMPTS, PROMPT_LENGTHS, **kwargs)
    same_search(out, reference)


def test_bytes_are_prefix_per_query_plus_suffix_per_row():
    cache = init_beam_cache(TINY, QUERIES, BEAMS, PREFIX, SUFFIX)
    per_position = 2 * TINY.n_layers * TINY.n_kv_heads * TINY.head_dim * 4  # keys + values, float32
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(cache))
    assert nbytes == beam_cache_nbytes(TINY, QUERIES, BEAMS, PREFIX, SUFFIX)
    assert nbytes == per_position * (QUERIES * PREFIX + ROWS * SUFFIX) + 4 * 2 * QUERIES
    # NVIDIA's shape (16 queries x 200 beams, 2,048-token history, 8 layers, 8 kv heads of 64):
    # shapes only (eval_shape allocates nothing).
    config = preset("tiny", n_layers=8, n_kv_heads=8, n_heads=16, head_dim=64, dim=1024)
    shared = jax.eval_shape(lambda: init_beam_cache(config, 16, 200, 2048, 4))
    shared_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shared))
    per_beam = jax.eval_shape(lambda: init_cache(config, 16 * 200, 2048 + 4))
    per_beam_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(per_beam))
    assert shared_bytes == beam_cache_nbytes(config, 16, 200, 2048, 4)
    assert per_beam_bytes > 210e9 and shared_bytes < 1.5e9  # 215 GB vs 1.07 GB prefix + 0.42 GB suffix


def test_a_prompt_longer_than_the_prefix_is_refused():
    """Regression: the prompt's tail would otherwise be dropped silently."""
    import jax
    import numpy as np
    import pytest

    from decoding import beam_search
    from models import Decoder, init_beam_cache, init_params, preset

    config = preset("tiny")
    params = init_params(config, jax.random.key(0))
    cache = init_beam_cache(config, queries=1, beams=2, prefix_capacity=4, suffix_capacity=8)
    with pytest.raises(ValueError, match="prefix_capacity"):
        beam_search(Decoder(config), params, cache, np.arange(1, 7)[None], np.array([6]), num_beams=2, max_new_tokens=2)
