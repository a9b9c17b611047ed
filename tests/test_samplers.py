"""Samplers and logits processors against NumPy references, sampling statistics, recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from decoding.samplers import Categorical, Greedy, MinP, Temperature, TopK, TopP
from decoding.validation import normalize_key, normalize_sampler

NEG_INF = -np.inf


# ---------------------------------------------------------------- NumPy references (float64)


def np_softmax(logits: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(logits), logits, -np.inf)
    shifted = np.exp(finite - finite.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def np_temperature(logits: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.empty_like(logits)
    for row, value in enumerate(t):
        if value <= 0:
            out[row] = np.where(logits[row] == logits[row].max(), 0.0, NEG_INF)
        else:
            out[row] = logits[row] / value
    return out


def np_top_k(logits: np.ndarray, k: np.ndarray) -> np.ndarray:
    out = np.full_like(logits, NEG_INF)
    for row, value in enumerate(k):
        value = logits.shape[1] if value <= 0 else min(value, logits.shape[1])
        kth = np.sort(logits[row])[::-1][value - 1]
        keep = logits[row] >= kth
        out[row, keep] = logits[row, keep]
    return out


def np_top_p(logits: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Brute force: add tokens from the most likely down until their mass reaches p; ties with
    the last added token stay too."""
    out = np.full_like(logits, NEG_INF)
    for row, value in enumerate(p):
        if value >= 1:
            out[row] = logits[row]
            continue
        probs = np_softmax(logits[row])
        mass, last = 0.0, None
        for token in np.argsort(-logits[row], kind="stable"):
            mass += probs[token]
            last = logits[row, token]
            if mass >= value:
                break
        keep = logits[row] >= last
        out[row, keep] = logits[row, keep]
    return out


def np_min_p(logits: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.full_like(logits, NEG_INF)
    for row, value in enumerate(p):
        probs = np_softmax(logits[row])
        keep = (probs >= value * probs.max()) | (value <= 0)
        out[row, keep] = logits[row, keep]
    return out


def assert_same_logits(actual, expected, rtol=1e-5):
    actual = np.asarray(actual, np.float64)
    np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=1e-5)


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    """float32 [4, 32] random logits with distinct values."""
    return np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32) * 2.0


@pytest.fixture(scope="module")
def tied_logits() -> np.ndarray:
    """float32 [4, 12] small-integer logits, full of ties (including at the top)."""
    rng = np.random.default_rng(1)
    out = rng.integers(0, 4, size=(4, 12)).astype(np.float32)
    out[:, 0] = out[:, 1] = 5.0  # a tie at the maximum of every row
    return out


# ---------------------------------------------------------------- processors


def test_temperature_per_row_and_zero_is_greedy(logits, tied_logits):
    t = np.array([0.5, 1.0, 2.0, 0.0], np.float32)
    assert_same_logits(Temperature(jnp.asarray(t))(jnp.asarray(logits)), np_temperature(logits, t))
    assert_same_logits(Temperature(0.0)(jnp.asarray(tied_logits)), np_temperature(tied_logits, np.zeros(4)))
    # A zero-temperature row samples its argmax whatever the key.
    sampler = Categorical((Temperature(jnp.asarray(t)),))
    keys = jax.random.split(jax.random.key(0), 64)
    draws = jax.vmap(lambda k: sampler.sample(jnp.broadcast_to(k, (4,)), jnp.asarray(logits)))(keys)
    np.testing.assert_array_equal(np.asarray(draws[:, 3]), np.full(64, np.argmax(logits[3])))
    assert len(np.unique(np.asarray(draws[:, 2]))) > 1  # the hot row does vary


def test_top_k_per_row_with_ties(logits, tied_logits):
    k = np.array([1, 3, 0, 100], np.int32)  # 0 keeps all, k > vocab keeps all
    assert_same_logits(TopK(jnp.asarray(k))(jnp.asarray(logits)), np_top_k(logits, k))
    k = np.array([1, 2, 3, 5], np.int32)
    out = np.asarray(TopK(jnp.asarray(k))(jnp.asarray(tied_logits)))
    assert_same_logits(out, np_top_k(tied_logits, k))
    assert np.isfinite(out[0]).sum() == 2  # k=1 on a two-way tie at the top keeps both


@pytest.mark.parametrize("p", [[1.0, 1e-6, 0.5, 0.9], [0.3, 0.99, 0.0, 0.7]])
def test_top_p_matches_brute_force(logits, p):
    p = np.array(p, np.float32)
    out = np.asarray(TopP(jnp.asarray(p))(jnp.asarray(logits)))
    assert_same_logits(out, np_top_p(logits.astype(np.float64), p))
    if p[0] == 1.0:
        assert np.isfinite(out[0]).all()
    if p[1] == 1e-6:
        assert np.isfinite(out[1]).sum() == 1  # tiny p keeps only the top token


def test_min_p(logits):
    p = np.array([0.0, 0.1, 0.5, 1.0], np.float32)
    out = np.asarray(MinP(jnp.asarray(p))(jnp.asarray(logits)))
    assert_same_logits(out, np_min_p(logits.astype(np.float64), p))
    assert np.isfinite(out[3]).sum() == 1  # p = 1 keeps only the top token


def test_greedy_lowest_id_among_ties(tied_logits):
    greedy = Greedy()
    np.testing.assert_array_equal(np.asarray(greedy.sample(None, jnp.asarray(tied_logits))), np.zeros(4))
    log_p = np.asarray(greedy.log_probs(jnp.asarray(tied_logits)))
    expected = np.full(tied_logits.shape, NEG_INF)
    expected[:, 0] = 0.0
    np.testing.assert_array_equal(log_p, expected)


def test_composition_applies_processors_in_order(logits):
    x = logits * 3.0
    t, p = np.full(4, 4.0, np.float32), np.full(4, 0.6, np.float32)
    first_t = Categorical((Temperature(4.0), TopP(0.6)))
    first_p = Categorical((TopP(0.6), Temperature(4.0)))
    ref_first_t = np_top_p(np_temperature(x.astype(np.float64), t), p)
    ref_first_p = np_temperature(np_top_p(x.astype(np.float64), p), t)
    assert_same_logits(first_t.process(jnp.asarray(x)), ref_first_t)
    assert_same_logits(first_p.process(jnp.asarray(x)), ref_first_p)
    assert not np.array_equal(np.isfinite(ref_first_t), np.isfinite(ref_first_p))  # the order matters here
    log_p = np.asarray(first_t.log_probs(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(np.log(np.exp(log_p).sum(-1)), 0.0, atol=1e-5)  # normalized


# ---------------------------------------------------------------- sampling statistics


@pytest.mark.parametrize(
    "processors",
    [(Temperature(0.8), TopK(5)), (TopP(0.8),), (MinP(0.05), Temperature(1.5))],
    ids=["temperature-topk", "topp", "minp-temperature"],
)
def test_categorical_frequencies_match_processed_distribution(processors):
    """G-test of 40,000 draws (one batched call, fixed seed) against the processed softmax."""
    row = np.random.default_rng(2).normal(size=(10,)).astype(np.float32) * 1.5
    sampler = Categorical(processors)
    n = 40_000
    keys = jax.random.split(jax.random.key(3), n)  # one key per row: n independent draws
    draws = np.asarray(sampler.sample(keys, jnp.broadcast_to(jnp.asarray(row), (n, row.size))))
    expected = np.exp(np.asarray(sampler.log_probs(jnp.asarray(row[None])), np.float64)[0])
    counts = np.bincount(draws, minlength=row.size)
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token the processors removed"
    assert support.sum() >= 2
    result = stats.power_divergence(counts[support], n * expected[support] / expected[support].sum(), lambda_="log-likelihood")
    assert result.pvalue > 1e-3, f"G-test rejects the sampler: {result}"


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(-2, 20),
    p=st.floats(0.0, 1.0, allow_nan=False),
)
def test_filters_keep_a_top_set(seed, k, p):
    """Every kept logit is >= every removed one, at least one token survives, and top-k keeps
    at least min(k, vocab) tokens."""
    x = np.random.default_rng(seed).normal(size=(1, 16)).astype(np.float32)
    for processor in (TopK(jnp.int32(k)), TopP(jnp.float32(p)), MinP(jnp.float32(p))):
        kept = np.isfinite(np.asarray(_apply(processor, jnp.asarray(x))))[0]
        assert kept.any()
        if not kept.all():
            assert x[0, kept].min() >= x[0, ~kept].max()
    kept_k = np.isfinite(np.asarray(_apply(TopK(jnp.int32(k)), jnp.asarray(x))))[0].sum()
    assert kept_k >= (16 if k <= 0 else min(k, 16))


@jax.jit
def _apply(processor, x):
    return processor(x)


# ---------------------------------------------------------------- recompilation


def test_new_knob_values_do_not_recompile(logits):
    @jax.jit
    def draw(sampler, key, x):
        return sampler.sample(key, x), sampler.log_probs(x)

    x = jnp.asarray(logits)
    key = jax.random.split(jax.random.key(0), logits.shape[0])
    for t, k, p in [(0.7, 3, 0.9), (1.3, 10, 0.5), (0.0, 0, 1.0)]:
        draw(Categorical((Temperature(jnp.float32(t)), TopK(jnp.int32(k)), TopP(jnp.float32(p)))), key, x)
    assert draw._cache_size() == 1
    for t in ([0.5, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 3.0]):  # per-row values: one more shape, one compile
        draw(Categorical((Temperature(jnp.asarray(t, jnp.float32)), TopK(jnp.int32(3)), TopP(jnp.float32(0.5)))), key, x)
    assert draw._cache_size() == 2
    draw(Categorical((TopK(jnp.int32(3)), Temperature(jnp.float32(0.7)), TopP(jnp.float32(0.5)))), key, x)
    assert draw._cache_size() == 3  # a new processor order is a new structure: static by design


def test_normalize_sampler_casts_by_declared_field_kind():
    """Each knob gets its field's declared dtype whatever value type came in (a float top-k is
    still int32, an int temperature float32); shapes and values are kept, structure too."""
    sampler = Categorical((Temperature(1), TopK(3.0), TopP(np.float64(0.5)), MinP(np.array([0, 1]))))
    out = normalize_sampler(sampler)
    assert jax.tree.structure(out) == jax.tree.structure(sampler)
    expected = [(jnp.float32, (), 1.0), (jnp.int32, (), 3), (jnp.float32, (), 0.5), (jnp.float32, (2,), [0.0, 1.0])]
    for leaf, (dtype, shape, value) in zip(jax.tree.leaves(out), expected):
        assert isinstance(leaf, np.ndarray) and leaf.dtype == dtype and leaf.shape == shape  # NumPy: jit places it
        assert not jax.typeof(leaf).weak_type  # what jit sees: a strong dtype
        np.testing.assert_array_equal(np.asarray(leaf), value)
    assert normalize_sampler(Greedy()) == Greedy()
    np.testing.assert_array_equal(np.asarray(normalize_sampler(TopK(jnp.array([2.0, 7.0]))).k), [2, 7])


def test_normalize_key_wraps_raw_keys_with_the_same_bits():
    raw, typed = jax.random.PRNGKey(5), jax.random.key(5)
    wrapped = normalize_key(raw)
    assert jnp.issubdtype(wrapped.dtype, jax.dtypes.prng_key) and wrapped.dtype == typed.dtype
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(wrapped)), np.asarray(jax.random.key_data(typed)))
    np.testing.assert_array_equal(np.asarray(jax.random.normal(wrapped, (3,))), np.asarray(jax.random.normal(typed, (3,))))
    assert normalize_key(typed) is typed and normalize_key(None) is None
    with pytest.raises(ValueError, match="uint32"):
        normalize_key(np.zeros(2, np.int32))
