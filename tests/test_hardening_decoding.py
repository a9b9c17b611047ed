"""No silent wrong answers from the decoding entry points (issue 11).

* Non-finite model output: every entry point flags exactly the rows that read non-finite
  logits (``out.nonfinite``, bool [batch]); a model that masks a token with -inf is fine.
* Non-finite or out-of-range knobs, integers that do not fit int32, caller state that is
  wrong, and misuse that used to surface as an internal error: each raises a named error
  before compiling, and the message names the problem (and the row or field).

Fake bigram models keep the compiles small: logits after token t are ``params[t]``, so
poisoning one table row poisons exactly the rows of the batch that read that token. Row 0's
prompt ends in ``POISON``; row 1 never reads it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from constraints import build_fixed_length_index
from decoding import (
    Categorical,
    DonatedCacheError,
    ModelDraft,
    PromptLookupDraft,
    Temperature,
    TopK,
    TracedCallError,
    beam_search,
    diverse_beam_search,
    generate,
    speculative_generate,
)
from fake_models import BigramModel, TokenCache, counting_params

VOCAB = 16
POISON = 7
PROMPTS = np.array([[POISON], [12]])
LENGTHS = np.array([1, 1])
NEW = 3
INDEX = build_fixed_length_index([[8, 9, 10], [13, 14, 15]], VOCAB)


def _poisoned(kind: str) -> jax.Array:
    table = np.array(counting_params(VOCAB))
    if kind == "nan":
        table[POISON, 3] = np.nan
    elif kind == "inf":
        table[POISON, 3] = np.inf
    elif kind == "all -inf":
        table[POISON, :] = -np.inf
    elif kind == "one -inf (a mask, fine)":
        table[POISON, 0] = -np.inf
    return jnp.asarray(table)


def _cache() -> TokenCache:
    return TokenCache.empty(2, 16)


ENTRY_POINTS = {
    "generate": lambda params: generate(BigramModel(), params, _cache(), PROMPTS, LENGTHS, max_new_tokens=NEW),
    "beam_search": lambda params: beam_search(
        BigramModel(), params, _cache(), PROMPTS, LENGTHS, num_beams=2, max_new_tokens=NEW
    ),
    "beam_search (sparse, constrained)": lambda params: beam_search(
        BigramModel(), params, _cache(), PROMPTS, LENGTHS, num_beams=2, constraint=INDEX
    ),
    "diverse_beam_search": lambda params: diverse_beam_search(
        BigramModel(), params, _cache(), PROMPTS, LENGTHS, num_beams=2, num_groups=2, diversity_strength=1.0,
        max_new_tokens=NEW,
    ),
    "generate (constrained)": lambda params: generate(BigramModel(), params, _cache(), PROMPTS, LENGTHS, constraint=INDEX),
    "speculative_generate (model draft)": lambda params: speculative_generate(
        BigramModel(), params, _cache(), PROMPTS, LENGTHS, num_draft_tokens=2, max_new_tokens=NEW,
        draft=ModelDraft(BigramModel(), counting_params(VOCAB), _cache()),
    ),
    "speculative_generate (prompt lookup)": lambda params: speculative_generate(
        BigramModel(), params, _cache(), PROMPTS, LENGTHS, num_draft_tokens=2, max_new_tokens=NEW,
        draft=PromptLookupDraft(ngram=1, vocab_size=VOCAB),
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_nonfinite_logits_are_flagged_per_row(entry):
    run = ENTRY_POINTS[entry]
    assert np.asarray(run(_poisoned("clean")).nonfinite).tolist() == [False, False]
    for kind in ("nan", "inf", "all -inf"):
        flags = np.asarray(run(_poisoned(kind)).nonfinite)
        assert flags.dtype == bool and flags.tolist() == [True, False], (entry, kind)
    assert np.asarray(run(_poisoned("one -inf (a mask, fine)")).nonfinite).tolist() == [False, False]


def test_nan_draft_model_cannot_change_speculative_output():
    """Only the target is watched: a non-finite draft's proposals are all rejected."""
    reference = generate(BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, LENGTHS, max_new_tokens=NEW)
    nan_draft = jnp.full((VOCAB, VOCAB), jnp.nan)
    out = speculative_generate(
        BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, LENGTHS, num_draft_tokens=2, max_new_tokens=NEW,
        draft=ModelDraft(BigramModel(), nan_draft, _cache()),
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(reference.tokens))
    assert not np.asarray(out.nonfinite).any()


def _generate(**overrides):
    args = dict(params=counting_params(VOCAB), cache=_cache(), prompts=PROMPTS, prompt_lengths=LENGTHS,
                max_new_tokens=NEW)
    args.update(overrides)
    return generate(BigramModel(), args.pop("params"), args.pop("cache"), args.pop("prompts"),
                    args.pop("prompt_lengths"), **args)


def _beams(**overrides):
    args = dict(num_beams=2, max_new_tokens=NEW)
    args.update(overrides)
    return beam_search(BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, LENGTHS, **args)


KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: _generate(sampler=Categorical((Temperature(np.inf),)), key=KEY), "temperature .* finite"),
        (lambda: _generate(sampler=Categorical((Temperature(np.array([1.0, np.nan])),)), key=KEY), "temperature"),
        (lambda: _generate(sampler=Categorical((TopK(2.5),)), key=KEY), "top-k must be an integer"),
        (lambda: _beams(length_penalty=np.nan), "length_penalty must be finite"),
        (lambda: _beams(length_penalty=np.array([1.0, np.inf])), r"length_penalty must be finite.*\(row 1\)"),
        (lambda: diverse_beam_search(BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, LENGTHS, num_beams=2,
                                     num_groups=2, diversity_strength=np.inf, max_new_tokens=NEW),
         "diversity_strength must be finite"),
    ],
)
def test_non_finite_knobs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(prompts=np.array([[2**32 + 7], [12]], np.int64)), "prompt token 4294967303 at row 0, position 0"),
        (dict(prompts=np.array([[7], [12]], np.uint64) + np.uint64(2**40)), "row 0, position 0"),
        (dict(max_new_tokens=2**40), "max_new_tokens must fit int32"),
        (dict(max_new_tokens=np.array([3, 2**32 + 2], np.int64)), r"max_new_tokens\[1\] = 4294967298"),
        (dict(pad_id=2**40), "pad_id must be in"),
        (dict(pad_id=1.5), "pad_id must be an int"),
        (dict(eos_ids=(2**40,)), "eos_ids holds 1099511627776"),
        (dict(max_new_tokens=np.array([2, 3]), width=2**40), "width must be in"),
    ],
)
def test_integers_are_range_checked_before_narrowing(overrides, message):
    with pytest.raises(ValueError, match=message):
        _generate(**overrides)


def test_caller_state_that_is_wrong():
    negative = _cache().replace(lengths=jnp.array([0, -3], jnp.int32))
    with pytest.raises(ValueError, match=r"cache.lengths\[1\] = -3 is outside \[0, capacity 16\]"):
        _generate(cache=negative)
    overfull = _cache().replace(lengths=jnp.array([17, 0], jnp.int32))
    with pytest.raises(ValueError, match=r"cache.lengths\[0\] = 17"):
        beam_search(BigramModel(), counting_params(VOCAB), overfull, PROMPTS, LENGTHS, num_beams=2, max_new_tokens=NEW)
    with pytest.raises(ValueError, match="vocab_size=32 exceeds the model's vocabulary"):
        _generate(vocab_size=32)
    assert _generate(vocab_size=13).tokens.shape == (2, NEW)  # a smaller (padded-vocab) check is allowed


def test_misuse_gets_a_message_not_an_internal_error():
    with pytest.raises(ValueError, match=r"Temperature, a logits processor.*Categorical\(\(Temperature"):
        _generate(sampler=Temperature(0.7), key=KEY)
    with pytest.raises(ValueError, match="Categorical.processors must be a tuple"):
        _generate(sampler=Categorical(Temperature(0.7)), key=KEY)
    with pytest.raises(ValueError, match="max_new_tokens is required without a constraint"):
        generate(BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, LENGTHS)
    with pytest.raises(ValueError, match="draft must be a draft source.*lacks check, caches, start"):
        speculative_generate(BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, LENGTHS, num_draft_tokens=2,
                             max_new_tokens=NEW, draft=object())


def test_reused_donated_cache():
    cache = _cache()
    out = _generate(cache=cache)
    with pytest.raises(DonatedCacheError, match="donated to an earlier generate"):
        _generate(cache=cache)
    with pytest.raises(DonatedCacheError, match=r"beam_search: the cache holds deleted arrays \(cache.tokens, cache.lengths\)"):
        beam_search(BigramModel(), counting_params(VOCAB), cache, PROMPTS, LENGTHS, num_beams=2, max_new_tokens=NEW)
    assert _generate(cache=out.cache.replace(lengths=jnp.zeros(2, jnp.int32))).tokens.shape == (2, NEW)


def test_entry_point_under_jit_names_the_traceable_core():
    @jax.jit
    def decode(prompts):
        return generate(BigramModel(), counting_params(VOCAB), _cache(), prompts, LENGTHS, max_new_tokens=NEW)

    with pytest.raises(TracedCallError, match=r"generate was called with traced values \(prompts, cache.lengths\).*generate_core"):
        decode(jnp.asarray(PROMPTS))

    @jax.jit
    def search(lengths):
        return beam_search(BigramModel(), counting_params(VOCAB), _cache(), PROMPTS, lengths, num_beams=2,
                           max_new_tokens=NEW)

    with pytest.raises(TracedCallError, match="run_dense"):
        search(jnp.asarray(LENGTHS))
