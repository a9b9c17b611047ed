"""The KV-cached decode step against the no-cache full forward (the oracle), tiny configs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding.cache_rows import gather_rows
from decoding.protocol import DecodeCache, DecodeModel
from models import PRESETS, Decoder, KVCache, LlamaConfig, forward, init_cache, init_params, preset

TOL = 1e-4
TINY = preset("tiny")

_step = jax.jit(lambda model, params, tokens, cache, num_valid: model(params, tokens, cache, num_valid),
                static_argnums=0)
_forward = jax.jit(forward, static_argnums=0)


def random_params(config: LlamaConfig, seed: int = 0):
    """Parameters with O(1) activations (the 0.02 init makes attention nearly uniform).

    Built from the init's shapes with NumPy, so no init function is compiled.
    """
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape)
        name = path[-1].key
        if name == "scale":
            value = 1.0 + 0.1 * noise
        elif name == "bias":
            value = 0.3 * noise
        elif name == "embedding":
            value = noise
        else:
            value = noise / np.sqrt(leaf.shape[0])
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_tokens(shape, seed: int, vocab: int = 256) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=shape), jnp.int32)


def decode_in_chunks(model, params, tokens, chunk: int, capacity: int) -> np.ndarray:
    """Feeds ``tokens`` [batch, S] through the cache ``chunk`` tokens at a time."""
    batch, length = tokens.shape
    cache = init_cache(model.config, batch, capacity)
    out = []
    for start in range(0, length, chunk):
        piece = tokens[:, start : start + chunk]
        logits, cache = _step(model, params, piece, cache, jnp.full((batch,), piece.shape[1], jnp.int32))
        out.append(np.asarray(logits))
    np.testing.assert_array_equal(cache.lengths, np.full(batch, length))
    return np.concatenate(out, axis=1)


def test_protocol_and_hashability():
    model = Decoder(TINY)
    assert isinstance(model, DecodeModel)
    assert isinstance(init_cache(TINY, 2, 8), DecodeCache)
    assert hash(model) == hash(Decoder(preset("tiny")))
    assert init_cache(TINY, 2, 8).capacity == 8
    assert model != Decoder(preset("tiny", n_kv_heads=1))


# Shapes shared by the tests below so that jit compiles few programs: batch 2, capacity 16,
# chunks of T = 1, 4 or 8 tokens, full sequences of 12 tokens.
BATCH, CAPACITY, LENGTH = 2, 16, 12


def full_logits(config: LlamaConfig, params, rows: list[np.ndarray]) -> np.ndarray:
    """No-cache logits of each row alone (rows right-padded to LENGTH; causal, so harmless)."""
    padded = np.zeros((len(rows), LENGTH), np.int32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return np.asarray(_forward(config, params, jnp.asarray(padded)))


def test_cached_prefill_then_steps_match_full_forward():
    params = random_params(TINY)
    tokens = random_tokens((BATCH, LENGTH), seed=1)
    expected = np.asarray(_forward(TINY, params, tokens))
    assert expected.std() > 0.5  # logits vary enough for the comparison to mean something
    model = Decoder(TINY)
    cache = init_cache(TINY, BATCH, CAPACITY)
    logits, cache = _step(model, params, tokens[:, :4], cache, jnp.full((BATCH,), 4, jnp.int32))
    got = [np.asarray(logits)]
    for t in range(4, LENGTH):
        logits, cache = _step(model, params, tokens[:, t : t + 1], cache, jnp.ones((BATCH,), jnp.int32))
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(got, axis=1), expected, atol=TOL, rtol=TOL)
    np.testing.assert_array_equal(cache.lengths, [LENGTH, LENGTH])


def test_chunked_prefill_matches_full_forward():
    params = random_params(TINY, seed=2)
    tokens = random_tokens((BATCH, LENGTH), seed=3)
    expected = np.asarray(_forward(TINY, params, tokens))
    got = decode_in_chunks(Decoder(TINY), params, tokens, chunk=4, capacity=CAPACITY)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_ragged_rows_equal_each_row_alone():
    params = random_params(TINY, seed=4)
    model = Decoder(TINY)
    lengths = np.array([7, 3])
    tokens = np.asarray(random_tokens((BATCH, 8), seed=5))  # the padding past each length is junk on purpose
    steps = np.asarray(random_tokens((BATCH, 2), seed=6))
    cache = init_cache(TINY, BATCH, CAPACITY)
    prefill, cache = _step(model, params, jnp.asarray(tokens), cache, jnp.asarray(lengths, jnp.int32))
    np.testing.assert_array_equal(cache.lengths, lengths)
    first, cache = _step(model, params, jnp.asarray(steps[:, :1]), cache, jnp.ones((BATCH,), jnp.int32))
    # Row 0 sits this step out (num_valid 0): its length and its next logits must not change.
    second, cache = _step(model, params, jnp.asarray(steps[:, 1:]), cache, jnp.array([0, 1], jnp.int32))
    np.testing.assert_array_equal(cache.lengths, [8, 5])
    rows = [np.concatenate([tokens[row, :n], steps[row]]) for row, n in enumerate(lengths)]
    expected = full_logits(TINY, params, rows)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(prefill[row, :n], expected[row, :n], atol=TOL, rtol=TOL)
        np.testing.assert_allclose(first[row, 0], expected[row, n], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(second[1, 0], expected[1, 4], atol=TOL, rtol=TOL)
    after_idle, _ = _step(model, params, jnp.asarray(steps[:, 1:]), cache, jnp.ones((BATCH,), jnp.int32))
    np.testing.assert_allclose(after_idle[0, 0], expected[0, 8], atol=TOL, rtol=TOL)


def test_stale_entries_past_length_are_never_read():
    params = random_params(TINY, seed=7)
    model = Decoder(TINY)
    tokens = random_tokens((BATCH, 8), seed=8)
    _, dirty = _step(model, params, tokens, init_cache(TINY, BATCH, CAPACITY), jnp.full((BATCH,), 8, jnp.int32))
    dirty = dirty.replace(lengths=jnp.array([4, 2], jnp.int32))  # slots 4..7 / 2..7 now hold junk
    _, clean = _step(model, params, tokens[:, :4], init_cache(TINY, BATCH, CAPACITY), jnp.array([4, 2], jnp.int32))
    assert not np.allclose(dirty.keys[0][:, :, 4:8], clean.keys[0][:, :, 4:8])  # the junk is really there
    for seed in (9, 10):  # two steps, so the junk stays past the written slot and is then overwritten
        nxt = random_tokens((BATCH, 1), seed=seed)
        got, dirty = _step(model, params, nxt, dirty, jnp.ones((BATCH,), jnp.int32))
        expected, clean = _step(model, params, nxt, clean, jnp.ones((BATCH,), jnp.int32))
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)
    np.testing.assert_array_equal(dirty.lengths, [6, 4])


def test_writes_past_capacity_are_dropped_and_keep_valid_entries():
    params = random_params(TINY, seed=10)
    model = Decoder(TINY)
    cache = init_cache(TINY, BATCH, CAPACITY)
    for seed in (11, 12):
        _, cache = _step(model, params, random_tokens((BATCH, 8), seed=seed), cache, jnp.full((BATCH,), 8, jnp.int32))
    before = [np.asarray(k) for k in cache.keys]
    cache = cache.replace(lengths=jnp.array([14, 12], jnp.int32))
    _, after = _step(model, params, random_tokens((BATCH, 4), seed=13), cache, jnp.full((BATCH,), 4, jnp.int32))
    for old, new in zip(before, after.keys):
        new = np.asarray(new)
        np.testing.assert_array_equal(new[0, :, :14], old[0, :, :14])
        np.testing.assert_array_equal(new[1, :, :12], old[1, :, :12])
        assert not np.allclose(new[0, :, 14:], old[0, :, 14:]) and not np.allclose(new[1, :, 12:], old[1, :, 12:])
    np.testing.assert_array_equal(after.lengths, [18, 16])


@pytest.mark.parametrize(
    "n_kv_heads, tie_embeddings, attention_bias",
    [(4, False, True), (1, True, False)],
    ids=["mha-bias", "mqa-tied"],
)
def test_attention_variants_match_full_forward(n_kv_heads, tie_embeddings, attention_bias):
    """MHA and MQA (the default tiny config is GQA, tested above) against the no-cache forward."""
    config = preset("tiny", n_kv_heads=n_kv_heads, tie_embeddings=tie_embeddings, attention_bias=attention_bias)
    params = random_params(config, seed=13)
    assert ("lm_head" in params) != tie_embeddings
    assert params["layers_0"]["attn"]["k_proj"]["kernel"].shape == (64, n_kv_heads * 16)
    assert ("bias" in params["layers_0"]["attn"]["q_proj"]) == attention_bias
    tokens = random_tokens((BATCH, LENGTH), seed=14)
    expected = np.asarray(_forward(config, params, tokens))
    got = decode_in_chunks(Decoder(config), params, tokens, chunk=4, capacity=CAPACITY)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_gathered_rows_continue_their_source_rows():
    """Beam reordering with decoding.cache_rows.gather_rows works on this cache layout."""
    params = random_params(TINY, seed=15)
    model = Decoder(TINY)
    tokens = random_tokens((BATCH, 4), seed=16)
    _, cache = _step(model, params, tokens, init_cache(TINY, BATCH, CAPACITY), jnp.array([4, 3], jnp.int32))
    rows = jnp.array([1, 0], jnp.int32)  # an involution: source row rows[i] gets token nxt[i] below too
    nxt = random_tokens((BATCH, 1), seed=17)
    got, _ = _step(model, params, nxt, gather_rows(cache, rows), jnp.ones((BATCH,), jnp.int32))
    expected, _ = _step(model, params, nxt[rows], cache, jnp.ones((BATCH,), jnp.int32))
    np.testing.assert_allclose(got, expected[rows], atol=TOL, rtol=TOL)


def test_bfloat16_config_runs_close_to_float32():
    config = preset("tiny", param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    params32 = random_params(TINY, seed=18)
    params16 = random_params(config, seed=18)
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves((shapes, params16)))
    cache = init_cache(config, BATCH, CAPACITY)
    assert cache.keys[0].dtype == jnp.bfloat16
    tokens = random_tokens((BATCH, LENGTH), seed=19)
    logits, cache = _step(Decoder(config), params16, tokens[:, :8], cache, jnp.full((BATCH,), 8, jnp.int32))
    assert logits.dtype == jnp.float32 and cache.values[1].dtype == jnp.bfloat16
    reference = np.asarray(_forward(TINY, params32, tokens))[:, :8]
    assert np.all(np.isfinite(logits))
    assert np.abs(np.asarray(logits) - reference).max() < 0.1 * np.abs(reference).max()


def test_bad_inputs_raise_clear_errors():
    model = Decoder(TINY)
    params = random_params(TINY)
    cache = init_cache(TINY, 2, 8)
    with pytest.raises(ValueError, match="tokens must be"):
        model(params, jnp.zeros((2,), jnp.int32), cache, jnp.ones((2,), jnp.int32))
    with pytest.raises(ValueError, match="layers"):
        model(params, jnp.zeros((2, 1), jnp.int32), init_cache(preset("tiny", n_layers=3), 2, 8), jnp.ones(2, int))
    with pytest.raises(ValueError, match="cache buffers"):
        model(params, jnp.zeros((3, 1), jnp.int32), cache, jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="num_valid"):
        model(params, jnp.zeros((2, 1), jnp.int32), cache, jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="capacity"):
        init_cache(TINY, 2, 0)
    with pytest.raises(ValueError, match="sliding window"):
        init_cache(preset("tiny", sliding_window=4), 1, 8)
    with pytest.raises(ValueError, match="sliding window"):
        forward(preset("tiny", sliding_window=4), params, jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        preset("tiny", n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="dim"):
        dataclasses.replace(TINY, dim=0)


def test_presets_have_the_documented_shapes():
    assert set(PRESETS) >= {"tiny", "small", "medium", "draft", "llama-3.2-1b", "qwen2-0.5b"}
    tiny = PRESETS["tiny"]
    assert (tiny.vocab_size, tiny.dim, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads) == (256, 64, 2, 4, 2)
    sizes = {}
    for name in ("small", "medium", "draft", "llama-3.2-1b", "qwen2-0.5b"):
        config = PRESETS[name]
        shapes = jax.eval_shape(lambda k, c=config: init_params(c, k), jax.random.key(0))
        sizes[name] = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert PRESETS["small"].vocab_size == PRESETS["draft"].vocab_size == 256
    assert sizes["draft"] < sizes["small"] < 10_000_000
    assert PRESETS["medium"].vocab_size == 256
    assert 4 * sizes["medium"] > 64 * 2**20  # float32 weights outgrow a 32 MB L3 cache twice over
    assert 1.2e9 < sizes["llama-3.2-1b"] < 1.3e9  # Llama 3.2 1B has 1.24B parameters
    assert 4.9e8 < sizes["qwen2-0.5b"] < 5.0e8  # Qwen2 0.5B has 494M parameters
    assert isinstance(init_cache(TINY, 1, 4), KVCache)
