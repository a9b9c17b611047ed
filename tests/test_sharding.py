"""Sharded speculative decoding over 8 virtual CPU devices gives the same tokens as 1 device.

Rows are split over the ``data`` axis; per-row PRNG keys (``split(key, batch)[b]``) make seeded
sampling independent of the split, so sampled tokens match too. One case also splits the
weights on a ``model`` axis (a 4 x 2 mesh).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_models import BigramModel, HistoryModel, TokenCache, random_params
from jax.sharding import PartitionSpec

from decoding import sharding
from decoding.acceptance import rejection_accept
from decoding.drafts import ModelDraft
from decoding.samplers import Categorical, Greedy, Temperature, TopP
from decoding.speculative import speculative_generate

VOCAB, BATCH, CAPACITY, WIDTH = 16, 16, 48, 12


def test_mesh_helpers():
    assert jax.device_count() == 8, "tests/conftest.py asks XLA for 8 CPU devices"
    mesh = sharding.data_mesh()
    assert dict(mesh.shape) == {"data": 8, "model": 1}
    rows = sharding.shard_rows({"x": jnp.zeros((16, 3)), "n": jnp.zeros(())}, mesh)
    assert rows["x"].sharding.spec == PartitionSpec("data")
    assert rows["x"].addressable_shards[0].data.shape == (2, 3)
    assert rows["n"].sharding.spec == PartitionSpec()
    with pytest.raises(ValueError, match="split evenly"):
        sharding.shard_rows(jnp.zeros((12, 2)), mesh)
    with pytest.raises(ValueError, match="devices"):
        sharding.data_mesh(16)
    split = sharding.param_shardings({"w": jnp.zeros((4, 6)), "b": jnp.zeros(5)}, sharding.data_mesh(4, 2))
    assert split["w"].spec == PartitionSpec(None, "model")
    assert split["b"].spec == PartitionSpec()
    assert sharding.context_data_size() == 0
    with jax.set_mesh(mesh):
        assert sharding.context_data_size() == 8


def test_per_device_acceptance_equals_the_plain_call():
    """``jax.shard_map`` over the data axis with one spec per argument, vs no mesh."""
    batch, k, vocab = 16, 3, 6
    rng = np.random.default_rng(0)
    target = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(batch, k + 1, vocab)), jnp.float32))
    draft_q = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(batch, k, vocab)), jnp.float32))
    draft = jnp.asarray(rng.integers(0, vocab, size=(batch, k)), jnp.int32)
    keys = jax.random.split(jax.random.key(0), batch)
    plain = jax.jit(rejection_accept)(keys, draft, draft_q, target)
    mesh = sharding.data_mesh()
    rows = sharding.ROWS
    assert sharding.per_device(rejection_accept, in_specs=(rows,) * 4, out_specs=rows) is rejection_accept
    with jax.set_mesh(mesh):
        mapped = sharding.per_device(rejection_accept, in_specs=(rows,) * 4, out_specs=rows)
        assert mapped is not rejection_accept  # a shard_map over the data axis
        run = jax.jit(mapped)
        per_device = run(*sharding.shard_rows((keys, draft, draft_q, target), mesh))
    np.testing.assert_array_equal(np.asarray(per_device.num_accepted), np.asarray(plain.num_accepted))
    np.testing.assert_array_equal(np.asarray(per_device.next_token), np.asarray(plain.next_token))


def _run(target, params, draft_params, sampler, mesh):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 8, size=BATCH).astype(np.int32)
    prompts = rng.integers(0, VOCAB, size=(BATCH, 7)).astype(np.int32)
    limits = rng.integers(1, WIDTH + 1, size=BATCH).astype(np.int32)
    return speculative_generate(
        target,
        params,
        TokenCache.empty(BATCH, CAPACITY),
        prompts,
        lengths,
        draft=ModelDraft(target, draft_params, TokenCache.empty(BATCH, CAPACITY)),
        num_draft_tokens=3,
        max_new_tokens=limits,
        width=WIDTH,
        sampler=sampler,
        key=jax.random.key(42),
        eos_ids=(1,),
        mesh=mesh,
    )


def _assert_same(a, b):
    for field in ("tokens", "lengths"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
    np.testing.assert_allclose(np.asarray(a.log_probs), np.asarray(b.log_probs), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.stats.accepted), np.asarray(b.stats.accepted))
    np.testing.assert_array_equal(np.asarray(a.cache.lengths), np.asarray(b.cache.lengths))


def test_greedy_on_8_devices_equals_one_device():
    params = random_params(VOCAB, seed=0)
    draft_params = params + random_params(VOCAB, seed=1, scale=1.0)
    single = _run(HistoryModel(), params, draft_params, Greedy(), None)
    sharded = _run(HistoryModel(), params, draft_params, Greedy(), sharding.data_mesh())
    assert sharded.tokens.sharding.spec == PartitionSpec("data")
    assert len(sharded.cache.tokens.sharding.device_set) == 8
    _assert_same(sharded, single)


def test_seeded_sampling_on_a_data_by_model_mesh_equals_one_device():
    """Rows on 4 devices, weights split in two on the model axis; per-row temperatures."""
    params = random_params(VOCAB, seed=2, scale=1.5)
    draft_params = params + random_params(VOCAB, seed=3, scale=1.0)
    sampler = Categorical((Temperature(jnp.linspace(0.5, 1.5, BATCH)), TopP(0.9)))
    single = _run(BigramModel(), params, draft_params, sampler, None)
    sharded = _run(BigramModel(), params, draft_params, sampler, sharding.data_mesh(4, 2))
    assert sharded.tokens.sharding.spec == PartitionSpec("data")
    _assert_same(sharded, single)
    accepted = np.asarray(single.stats.accepted)
    assert 0 < accepted[accepted >= 0].mean() < 3


# ---------------------------------------------------------------- generate and beam search


def _generate(mesh, keys, batch=BATCH, prompts=None, sampler=None, constraint=None):
    from decoding.generate import generate

    rng = np.random.default_rng(7)
    if prompts is None:
        prompts = rng.integers(0, VOCAB, size=(BATCH, 5))[:batch]
    lengths = np.full(len(prompts), prompts.shape[1])
    sampler = Categorical((Temperature(jnp.linspace(0.5, 1.5, batch)), TopP(0.95))) if sampler is None else sampler
    return generate(BigramModel(), random_params(VOCAB, seed=2, scale=1.5), TokenCache.empty(len(prompts), CAPACITY),
                    prompts, lengths, max_new_tokens=WIDTH, sampler=sampler, key=keys, mesh=mesh,
                    constraint=constraint)


def test_sampled_generate_on_8_devices_equals_one_device():
    """Sampled generate with per-row temperatures: rows split over 8 devices give the tokens of
    one device, because each row draws with its own key."""
    key = jax.random.key(11)
    single = _generate(None, key)
    sharded = _generate(sharding.data_mesh(), key)
    assert sharded.tokens.sharding.spec == PartitionSpec("data")
    for field in ("tokens", "lengths", "log_probs", "complete", "nonfinite"):
        np.testing.assert_array_equal(np.asarray(getattr(sharded, field)), np.asarray(getattr(single, field)))
    assert len(np.unique(np.asarray(single.tokens))) > 4  # it sampled, not a constant


def test_a_row_samples_the_same_alone_and_in_a_batch():
    """Per-row keys: row 5 decoded alone (with its own key) equals row 5 of the batch, under a
    constraint too (the constraint's state is per row)."""
    from constraints import build_fixed_length_index

    keys = jax.random.split(jax.random.key(5), BATCH)
    prompts = np.random.default_rng(7).integers(0, VOCAB, size=(BATCH, 5))
    sampler = Categorical((Temperature(1.2),))
    items = np.random.default_rng(1).integers(0, VOCAB, size=(40, 3))
    for constraint in (None, build_fixed_length_index(items, VOCAB)):
        batch = _generate(None, keys, prompts=prompts, sampler=sampler, constraint=constraint)
        alone = _generate(None, keys[5:6], batch=1, prompts=prompts[5:6], sampler=sampler, constraint=constraint)
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(batch.tokens[5]))
        np.testing.assert_array_equal(np.asarray(alone.log_probs[0]), np.asarray(batch.log_probs[5]))
    # The keys do matter: another key for row 5 gives another sample (with overwhelming odds).
    other = _generate(None, jax.random.split(jax.random.key(6), 1), batch=1, prompts=prompts[5:6], sampler=sampler)
    assert not np.array_equal(np.asarray(other.tokens[0]), np.asarray(batch.tokens[5]))


def test_beam_search_on_8_devices_equals_one_device():
    """Dense (unconstrained) and sparse (trie) beam search, and diverse beam search, with rows
    split over 8 devices."""
    from constraints import build_fixed_length_index
    from decoding.beam_search import beam_search
    from decoding.diverse_beam_search import diverse_beam_search

    rng = np.random.default_rng(3)
    prompts = rng.integers(0, VOCAB, size=(BATCH, 4))
    index = build_fixed_length_index(rng.integers(0, VOCAB, size=(60, 3)), VOCAB)
    params = random_params(VOCAB, seed=4, scale=1.5)
    for constraint, width in ((None, 5), (index, 3)):
        outs = [
            beam_search(HistoryModel(), params, TokenCache.empty(BATCH, CAPACITY), prompts, np.full(BATCH, 4),
                        num_beams=3, max_new_tokens=width, constraint=constraint, mesh=mesh)
            for mesh in (None, sharding.data_mesh())
        ]
        assert outs[1].sequences.sharding.spec == PartitionSpec("data")
        for field in ("sequences", "lengths", "valid"):
            np.testing.assert_array_equal(np.asarray(getattr(outs[1], field)), np.asarray(getattr(outs[0], field)))
        np.testing.assert_allclose(np.asarray(outs[1].scores), np.asarray(outs[0].scores), rtol=1e-6)
    diverse = [
        diverse_beam_search(HistoryModel(), params, TokenCache.empty(BATCH, CAPACITY), prompts, np.full(BATCH, 4),
                            num_beams=4, num_groups=2, diversity_strength=2.0, max_new_tokens=3, mesh=mesh)
        for mesh in (None, sharding.data_mesh())
    ]
    assert diverse[1].sequences.sharding.spec == PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(diverse[1].sequences), np.asarray(diverse[0].sequences))
    np.testing.assert_array_equal(np.asarray(diverse[1].valid), np.asarray(diverse[0].valid))
