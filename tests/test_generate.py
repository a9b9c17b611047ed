"""generate(): jit loop vs a plain Python reference loop, oracles, ragged batches, EOS, limits,
seeded determinism, recompilation, and input validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.generate import compiled_variants, generate
from decoding.prefill import bucket_length, pad_prompts, prefill
from decoding.samplers import Categorical, Greedy, MinP, Temperature, TopK, TopP
from decoding.validation import check_capacity
from fake_models import BigramModel, HistoryModel, TokenCache, counting_params, random_params

VOCAB = 32


# ---------------------------------------------------------------- oracles


@functools.lru_cache(maxsize=None)
def _jitted(model):
    """One jitted model call per model, so oracle runs in several tests share compiles."""
    return jax.jit(model)


def reference_generate(model, params, cache, prompts, prompt_lengths, limits, *, sampler=Greedy(), key=None,
                       eos_ids=(), pad_id=0):
    """The oracle: a host loop calling the model one step at a time, NumPy bookkeeping, no
    while_loop, no bucketing (the prompt array is fed at its own width). Same key schedule as
    generate: row b draws step i with fold_in(split(key, batch)[b], i), or with its own key
    when ``key`` holds one per row."""
    call = _jitted(model)
    prompt_lengths = np.asarray(prompt_lengths)
    limits = np.asarray(limits)
    batch, width = len(prompt_lengths), int(limits.max())
    key = jax.random.key(0) if key is None else key
    row_keys = key if key.ndim == 1 else jax.random.split(key, batch)
    logits, cache = call(params, jnp.asarray(prompts, jnp.int32), cache, jnp.asarray(prompt_lengths, jnp.int32))
    logits = logits[jnp.arange(batch), jnp.asarray(prompt_lengths) - 1]
    tokens = np.full((batch, width), pad_id, np.int32)
    log_probs = np.zeros((batch, width), np.float32)
    lengths = np.zeros(batch, np.int32)
    done = limits <= 0
    last = None
    for step in range(width):
        if done.all():
            break
        if step > 0:
            logits, cache = call(params, jnp.asarray(last)[:, None], cache, jnp.asarray(~done, jnp.int32))
            logits = logits[:, 0]
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
        token = np.asarray(sampler.sample(step_keys, logits))
        log_p = np.asarray(jax.nn.log_softmax(logits, axis=-1))[np.arange(batch), token]
        for row in np.flatnonzero(~done):
            tokens[row, lengths[row]] = token[row]
            log_probs[row, lengths[row]] = log_p[row]
            lengths[row] += 1
            done[row] = token[row] in eos_ids or lengths[row] >= limits[row]
        last = token
    return tokens, lengths, log_probs


def numpy_greedy(table, prompt, limit, eos_ids=(), history=True):
    """No-cache greedy decoding of the fake models in NumPy (HistoryModel if ``history``, else
    BigramModel); returns the new tokens and their log-probabilities."""
    table = np.asarray(table, np.float64)
    seq, out, log_probs = list(prompt), [], []
    for _ in range(limit):
        logits = table[sum(seq) % table.shape[0]] if history else table[seq[-1]]
        token = int(np.argmax(logits))
        log_probs.append(logits[token] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
        out.append(token)
        seq.append(token)
        if token in eos_ids:
            break
    return out, log_probs


def assert_outputs_match(out, tokens, lengths, log_probs):
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), lengths)
    np.testing.assert_allclose(np.asarray(out.log_probs), log_probs, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def history_params():
    return random_params(VOCAB, seed=4)


RAGGED_PROMPTS = np.array(
    [[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7, -1, -1, -1, -1, -1, -1, -1], [1, 8, 2, 8, 1, -1, -1, -1, -1], [9, -1, -1, -1, -1, -1, -1, -1, -1]]
)  # int [4, 9]: -1 marks padding (never read)
RAGGED_LENGTHS = np.array([9, 2, 5, 1])


# ---------------------------------------------------------------- worked examples


def test_worked_docstring_examples():
    model, params = BigramModel(), counting_params(16)
    prompts, lengths = np.array([[5, 6, 0], [3, 0, 0]]), np.array([2, 1])
    out = generate(model, params, TokenCache.empty(2, 32), prompts, lengths, max_new_tokens=4, eos_ids=(9,))
    np.testing.assert_array_equal(np.asarray(out.tokens), [[7, 8, 9, 0], [4, 5, 6, 7]])
    np.testing.assert_array_equal(np.asarray(out.lengths), [3, 4])
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), [2 + 3 - 1, 1 + 4 - 1])
    # decoding.prefill's example.
    assert bucket_length(2, capacity=64) == 16
    assert [bucket_length(5, 256), bucket_length(17, 256), bucket_length(200, 256), bucket_length(3, 8)] == [16, 32, 256, 8]
    padded = pad_prompts(np.array([[5, 6, 0, 0], [9, 0, 0, 0]]), np.array([2, 1]), 16)
    last_logits, cache = prefill(model, params, TokenCache.empty(2, 64), jnp.asarray(padded), jnp.array([2, 1]))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(last_logits, -1)), [7, 10])
    np.testing.assert_array_equal(np.asarray(cache.lengths), [2, 1])


# ---------------------------------------------------------------- fakes: oracles and semantics


def test_greedy_matches_numpy_no_cache_oracle(history_params):
    limits = np.array([6, 3, 6, 5])
    out = generate(HistoryModel(), history_params, TokenCache.empty(4, 32), RAGGED_PROMPTS, RAGGED_LENGTHS,
                   max_new_tokens=limits)
    for row in range(4):
        expected, expected_log_p = numpy_greedy(history_params, RAGGED_PROMPTS[row, : RAGGED_LENGTHS[row]], limits[row])
        n = len(expected)
        assert int(out.lengths[row]) == n
        np.testing.assert_array_equal(np.asarray(out.tokens[row, :n]), expected)
        np.testing.assert_allclose(np.asarray(out.log_probs[row, :n]), expected_log_p, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8), min_size=3, max_size=3),
    limits=st.lists(st.integers(0, 6), min_size=3, max_size=3),
    eos_ids=st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=2, unique=True).map(tuple),
)
def test_property_matches_numpy_oracle(history_params, prompts, limits, eos_ids):
    """Random ragged prompts, per-row limits and two stop ids (fixed shapes: one compile)."""
    lengths = np.array([len(p) for p in prompts])
    padded = np.zeros((3, 8), np.int32)
    for row, prompt in enumerate(prompts):
        padded[row, : len(prompt)] = prompt
    out = generate(HistoryModel(), history_params, TokenCache.empty(3, 16), padded, lengths,
                   max_new_tokens=np.asarray(limits, np.int32), width=6, eos_ids=eos_ids, pad_id=-1)
    for row in range(3):
        expected = numpy_greedy(history_params, prompts[row], limits[row], eos_ids)[0] if limits[row] else []
        assert np.asarray(out.tokens[row]).tolist() == expected + [-1] * (6 - len(expected))
        assert int(out.lengths[row]) == len(expected)


@pytest.mark.parametrize(
    "sampler, key",
    [(Greedy(), None), (Categorical((Temperature(jnp.float32(1.2)), TopK(jnp.int32(12)))), jax.random.key(7))],
    ids=["greedy", "sampled"],
)
def test_jit_loop_matches_python_reference_loop(history_params, sampler, key):
    limits = np.array([7, 2, 7, 5])
    eos_ids = (3, 17)
    out = generate(HistoryModel(), history_params, TokenCache.empty(4, 32), RAGGED_PROMPTS, RAGGED_LENGTHS,
                   max_new_tokens=limits, sampler=sampler, key=key, eos_ids=eos_ids)
    expected = reference_generate(HistoryModel(), history_params, TokenCache.empty(4, 32), np.maximum(RAGGED_PROMPTS, 0),
                                  RAGGED_LENGTHS, limits, sampler=sampler, key=key, eos_ids=eos_ids)
    assert_outputs_match(out, *expected)


def test_ragged_batch_equals_each_prompt_alone(history_params):
    together = generate(HistoryModel(), history_params, TokenCache.empty(4, 32), RAGGED_PROMPTS, RAGGED_LENGTHS,
                        max_new_tokens=6)
    for row in range(4):
        alone = generate(HistoryModel(), history_params, TokenCache.empty(1, 32), RAGGED_PROMPTS[row : row + 1],
                         RAGGED_LENGTHS[row : row + 1], max_new_tokens=6)
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(together.tokens[row]))
        np.testing.assert_allclose(np.asarray(alone.log_probs[0]), np.asarray(together.log_probs[row]), atol=1e-6)


@pytest.mark.parametrize("eos_ids, expected_length", [((4,), 3), ((6, 3), 2), ((30,), 8)])
def test_eos_one_or_several_stop_ids(eos_ids, expected_length):
    """The counting model from prompt [1] emits 2, 3, 4, ...; the first stop id ends the row."""
    out = generate(BigramModel(), counting_params(VOCAB), TokenCache.empty(1, 16), np.array([[1]]), np.array([1]),
                   max_new_tokens=8, eos_ids=eos_ids, pad_id=-1)
    expected = list(range(2, 2 + expected_length)) + [-1] * (8 - expected_length)
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), expected)
    assert int(out.lengths[0]) == expected_length
    log_probs = np.asarray(out.log_probs[0])
    assert np.all(log_probs[:expected_length] < 0) and np.all(log_probs[expected_length:] == 0)


def test_per_row_max_new_tokens():
    limits = np.array([0, 1, 3, 5], np.int32)
    out = generate(BigramModel(), counting_params(VOCAB), TokenCache.empty(4, 16), np.array([[1], [5], [9], [20]]),
                   np.ones(4, np.int32), max_new_tokens=limits, width=6, pad_id=-1)
    np.testing.assert_array_equal(np.asarray(out.lengths), limits)
    np.testing.assert_array_equal(
        np.asarray(out.tokens),
        [[-1] * 6, [6] + [-1] * 5, [10, 11, 12] + [-1] * 3, [21, 22, 23, 24, 25, -1]],
    )
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), [1, 1, 1 + 3 - 1, 1 + 5 - 1])


def test_seeded_determinism(history_params):
    sampler = Categorical((Temperature(jnp.float32(1.0)),))

    def run(key):
        return generate(HistoryModel(), history_params, TokenCache.empty(4, 32), RAGGED_PROMPTS, RAGGED_LENGTHS,
                        max_new_tokens=8, sampler=sampler, key=key)

    first, again, other = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
    np.testing.assert_array_equal(np.asarray(first.log_probs), np.asarray(again.log_probs))
    assert not np.array_equal(np.asarray(first.tokens), np.asarray(other.tokens))


def test_no_recompile_within_a_bucket(history_params):
    """Prompt lengths 3 and 7 share bucket 16; knob values, stop ids, limits and pad id are
    traced. A prompt of 20 tokens moves to bucket 32: exactly one more compile."""
    model, batch, capacity = HistoryModel(), 3, 48

    def run(length, temperature, eos, limits, pad_id):
        prompts = np.arange(batch * length).reshape(batch, length) % VOCAB
        sampler = Categorical((Temperature(jnp.float32(temperature)), MinP(jnp.float32(0.01))))
        return generate(model, history_params, TokenCache.empty(batch, capacity), prompts, np.full(batch, length),
                        max_new_tokens=np.asarray(limits, np.int32), width=5, sampler=sampler,
                        key=jax.random.key(length), eos_ids=eos, pad_id=pad_id)

    before = compiled_variants()
    run(3, 0.7, (1, 2), [5, 5, 5], 0)
    run(7, 1.3, (4, 9), [1, 3, 5], -1)
    assert compiled_variants() == before + 1
    run(20, 1.0, (1, 2), [5, 5, 5], 0)
    assert compiled_variants() == before + 2


def test_knob_types_and_key_kinds_share_one_compile():
    """Python float/int, NumPy and jnp scalars of one knob, and raw or typed keys, are cast to
    one dtype before jit: one compile per structure (knob shapes), not per Python type."""
    model, params = BigramModel(), random_params(VOCAB, seed=9)
    prompts, lengths = np.array([[1, 2, 3], [4, 0, 0]]), np.array([3, 1])

    def run(temperature, top_k, key):
        sampler = Categorical((Temperature(temperature), TopK(top_k)))
        return generate(model, params, TokenCache.empty(2, 11), prompts, lengths, max_new_tokens=5, sampler=sampler,
                        key=key)

    before = compiled_variants()
    scalars = [(0.7, 5), (1, 5), (jnp.float32(1), jnp.int32(5)), (np.float64(1), np.int64(5)), (jnp.asarray(1.0), 5.0)]
    outs = [run(t, k, jax.random.key(3)) for t, k in scalars]
    raw = run(1, 5, jax.random.PRNGKey(3))
    assert compiled_variants() == before + 1
    for out in outs[2:] + [raw]:  # temperature 1, top-k 5, the same key bits: the same tokens
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(outs[1].tokens))
    run(np.array([0.7, 1.0]), np.array([3, 5]), jax.random.key(3))
    run(jnp.array([1, 2]), jnp.array([4.0, 6.0]), jax.random.PRNGKey(4))  # per-row, other dtypes
    assert compiled_variants() == before + 2


def test_cache_that_fits_exactly_is_accepted():
    """The last new token is never fed: prompt + limit - 1 positions suffice (limit 0 rows need
    only their prompt), one fewer is rejected, and the tokens equal a roomy cache's."""
    model, params = BigramModel(), counting_params(VOCAB)
    prompts, lengths = np.array([[1, 2, 3], [4, 5, 0], [6, 7, 8]]), np.array([3, 2, 3])
    limits = np.array([5, 6, 0], np.int32)  # needs 3 + 4, 2 + 5, 3 + 0 positions
    tight = generate(model, params, TokenCache.empty(3, 7), prompts, lengths, max_new_tokens=limits)
    roomy = generate(model, params, TokenCache.empty(3, 16), prompts, lengths, max_new_tokens=limits)
    np.testing.assert_array_equal(np.asarray(tight.tokens), np.asarray(roomy.tokens))
    np.testing.assert_array_equal(np.asarray(tight.tokens[:2]), [[4, 5, 6, 7, 8, 0], [6, 7, 8, 9, 10, 11]])
    np.testing.assert_array_equal(np.asarray(tight.cache.lengths), [7, 7, 3])
    with pytest.raises(ValueError, match="exceeds the free cache capacity"):
        generate(model, params, TokenCache.empty(3, 6), prompts, lengths, max_new_tokens=limits)


def test_check_capacity_counts_unfed_tokens_only_when_told():
    """Callers that feed every new token (the default) keep the full prompt + limit requirement."""
    cached, prompt, limits = np.array([1, 0]), np.array([3, 4]), np.array([4, 0])
    check_capacity(cached, prompt, limits, 8)
    check_capacity(cached, prompt, limits, 7, unfed_tokens=1)
    with pytest.raises(ValueError, match="exceeds the free cache capacity"):
        check_capacity(cached, prompt, limits, 7)
    with pytest.raises(ValueError, match="exceeds the free cache capacity"):
        check_capacity(cached, prompt, limits, 6, unfed_tokens=1)


@pytest.mark.parametrize("limit", [np.array(4), np.int64(4), jnp.asarray(4)], ids=["numpy-0d", "numpy-scalar", "jnp-0d"])
def test_zero_d_max_new_tokens_is_a_scalar(limit):
    out = _call(max_new_tokens=limit)
    np.testing.assert_array_equal(np.asarray(out.tokens), [[3, 4, 5, 6], [4, 5, 6, 7]])


def test_cache_is_donated_and_returned():
    cache = TokenCache.empty(2, 16)
    out = generate(BigramModel(), counting_params(VOCAB), cache, np.array([[1, 2], [3, 0]]), np.array([2, 1]),
                   max_new_tokens=3)
    assert cache.tokens.is_deleted()
    np.testing.assert_array_equal(np.asarray(out.cache.tokens[0, :4]), [1, 2, 3, 4])  # prompt + fed tokens


# ---------------------------------------------------------------- bad input


def _call(**overrides):
    args = dict(model=BigramModel(), params=counting_params(16), cache=TokenCache.empty(2, 16),
                prompts=np.array([[1, 2], [3, 0]]), prompt_lengths=np.array([2, 1]), max_new_tokens=4)
    args.update(overrides)
    return generate(args.pop("model"), args.pop("params"), args.pop("cache"), args.pop("prompts"),
                    args.pop("prompt_lengths"), **args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(prompt_lengths=np.array([0, 1])), "at least one token"),
        (dict(prompts=np.zeros((2, 0), np.int32)), "non-empty"),
        (dict(prompts=np.array([1, 2])), "2-D"),
        (dict(prompts=np.array([[1.0, 2.0], [3.0, 0.0]])), "integer"),
        (dict(prompt_lengths=np.array([3, 1])), "exceeds the prompts width"),
        (dict(prompt_lengths=np.array([2, 1, 1])), "shape"),
        (dict(prompts=np.ones((2, 20), np.int32), prompt_lengths=np.array([20, 1])), "room for only 16"),
        (dict(max_new_tokens=16), "exceeds the free cache capacity"),
        (dict(max_new_tokens=0), "at least 1"),
        (dict(prompts=np.array([[1, 16], [3, 0]])), "outside the vocabulary"),
        (dict(prompts=np.array([[1, 2], [-3, 0]])), "outside the vocabulary"),
        (dict(eos_ids=(16,)), "eos_ids holds 16"),
        (dict(eos_ids=5), "tuple"),
        (dict(sampler=Categorical((Temperature(-0.5),)), key=jax.random.key(0)), "temperature must be >= 0"),
        (dict(sampler=Categorical((Temperature(jnp.array([1.0, -1.0])),)), key=jax.random.key(0)), "temperature"),
        (dict(sampler=Categorical((MinP(1.5),)), key=jax.random.key(0)), "min-p"),
        (dict(sampler=Categorical(())), "pass key"),
        (dict(sampler=Categorical((TopP(1.5),)), key=jax.random.key(0)), r"top-p must be a number in \[0, 1\]"),
        (dict(sampler=Categorical((TopP(jnp.array([0.5, -0.1])),)), key=jax.random.key(0)), r"\[0, 1\]"),
        (dict(sampler=Categorical((Temperature(np.array([1.0, 1.0, 1.0])),)), key=jax.random.key(0)),
         r"Temperature.value must be a scalar or a per-row array of shape \(2,\)"),
        (dict(sampler=Categorical((TopK(np.array([[3], [4]])),)), key=jax.random.key(0)), r"TopK.k .* shape \(2,\)"),
        (dict(sampler=Categorical((MinP(np.array([0.1])),)), key=jax.random.key(0)), "per-row array"),
        (dict(sampler=Categorical(()), key=np.zeros(2, np.float32)), "uint32"),
        (dict(max_new_tokens=np.array([3, 5]), width=4), "exceed the output width"),
        (dict(max_new_tokens=np.array([3, -1])), ">= 0"),
        (dict(max_new_tokens=np.array([3, 3, 3])), "shape"),
        (dict(max_new_tokens=4, width=6), "differs"),
        (dict(cache=TokenCache.empty(3, 16)), "batch"),
    ],
)
def test_bad_input_raises_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_bucket_capped_at_cache_room():
    """A 10-token prompt in a 14-position cache is bucketed to 14, not 16, and still decodes."""
    out = generate(BigramModel(), counting_params(VOCAB), TokenCache.empty(1, 14), np.arange(10)[None], np.array([10]),
                   max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), [10, 11, 12, 13])


# ---------------------------------------------------------------- the real tiny model

models = pytest.importorskip("models")


@pytest.fixture(scope="module")
def tiny():
    config = models.preset("tiny")
    return models.Decoder(config), models.init_params(config, jax.random.key(0))


REAL_PROMPTS = np.array([[72, 101, 108, 0, 0, 0, 0, 0, 0], [10, 20, 30, 40, 50, 60, 70, 80, 90], [7, 7, 7, 7, 7, 0, 0, 0, 0]])
REAL_LENGTHS = np.array([3, 9, 5])
REAL_LIMITS = np.array([6, 4, 6], np.int32)


def test_real_model_greedy_matches_reference_and_full_recompute(tiny):
    model, params = tiny
    config = model.config
    out = generate(model, params, models.init_cache(config, 3, 32), REAL_PROMPTS, REAL_LENGTHS, max_new_tokens=REAL_LIMITS)
    expected = reference_generate(model, params, models.init_cache(config, 3, 32), REAL_PROMPTS, REAL_LENGTHS, REAL_LIMITS)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected[0])
    np.testing.assert_array_equal(np.asarray(out.lengths), expected[1])
    np.testing.assert_allclose(np.asarray(out.log_probs), expected[2], atol=1e-4)
    # No cache at all: a full causal forward over prompt + new tokens (right-padded, one call)
    # reproduces every choice and its log-probability.
    sequences = np.zeros((3, 16), np.int32)
    for row in range(3):
        p, n = int(REAL_LENGTHS[row]), int(out.lengths[row])
        sequences[row, : p + n] = np.concatenate([REAL_PROMPTS[row, :p], np.asarray(out.tokens[row, :n])])
    log_p = np.asarray(jax.nn.log_softmax(jax.jit(models.forward, static_argnums=0)(config, params, sequences), axis=-1))
    for row in range(3):
        p, n = int(REAL_LENGTHS[row]), int(out.lengths[row])
        predicted = log_p[row, p - 1 : p - 1 + n]
        chosen = sequences[row, p : p + n]
        np.testing.assert_array_equal(np.argmax(predicted, -1), chosen)
        np.testing.assert_allclose(predicted[np.arange(n), chosen], np.asarray(out.log_probs[row, :n]), atol=1e-4)


def test_real_model_sampled_matches_reference_and_ragged_invariance(tiny):
    model, params = tiny
    config = model.config
    sampler, key = Categorical((Temperature(jnp.float32(0.8)), TopK(jnp.int32(40)))), jax.random.key(3)
    out = generate(model, params, models.init_cache(config, 3, 32), REAL_PROMPTS, REAL_LENGTHS,
                   max_new_tokens=REAL_LIMITS, sampler=sampler, key=key, eos_ids=(10, 32))
    expected = reference_generate(model, params, models.init_cache(config, 3, 32), REAL_PROMPTS, REAL_LENGTHS,
                                  REAL_LIMITS, sampler=sampler, key=key, eos_ids=(10, 32))
    np.testing.assert_array_equal(np.asarray(out.tokens), expected[0])
    np.testing.assert_allclose(np.asarray(out.log_probs), expected[2], atol=1e-4)
    greedy = generate(model, params, models.init_cache(config, 3, 32), REAL_PROMPTS, REAL_LENGTHS, max_new_tokens=6)
    for row in range(3):
        alone = generate(model, params, models.init_cache(config, 1, 32), REAL_PROMPTS[row : row + 1],
                         REAL_LENGTHS[row : row + 1], max_new_tokens=6)
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(greedy.tokens[row]))
        np.testing.assert_allclose(np.asarray(alone.log_probs[0]), np.asarray(greedy.log_probs[row]), atol=1e-4)


def test_package_exports_resolve():
    import decoding

    import decoding.beam_search  # noqa: F401  (a submodule import must not shadow the function)

    for name in decoding.__all__:
        assert getattr(decoding, name) is not None, name
    assert decoding.generate is generate
    assert callable(decoding.beam_search) and not isinstance(decoding.beam_search, type(decoding))


def test_continues_a_partly_filled_cache(history_params):
    """Rows that already hold different numbers of tokens (a second turn) decode as if the whole
    history had been the prompt. Row 0 has room for 10 more tokens, row 1's prompt has 12: the
    bucket is 12 and row 0's padding falls past its capacity."""
    first = np.array([[4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8], [6] + [0] * 13])
    _, cache = prefill(HistoryModel(), history_params, TokenCache.empty(2, 24), jnp.asarray(first), jnp.array([14, 1]))
    second = np.array([[7] + [0] * 11, [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]])
    out = generate(HistoryModel(), history_params, cache, second, np.array([1, 12]), max_new_tokens=4)
    for row, history in enumerate([list(first[0]) + [7], [6] + list(second[1])]):
        expected, _ = numpy_greedy(history_params, history, 4)
        np.testing.assert_array_equal(np.asarray(out.tokens[row]), expected)
