"""Regular-expression constraints (constraints.regex -> constraints.dfa.TokenDFA) through the
dense constraint protocol: every decoded output fully matches the pattern, and the allowed mask
equals a brute-force walk of interegular's character automaton in plain Python."""

from __future__ import annotations

import re

import interegular
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_models import BigramModel, TokenCache, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

from constraints import DEAD_STATE, TokenDFA, compile_regex, load_dfa, save_dfa
from decoding.beam_search import beam_search
from decoding.generate import generate
from decoding.drafts import PromptLookupDraft
from decoding.samplers import Categorical
from decoding.speculative import speculative_generate

BYTE_VOCAB = [chr(i) for i in range(128)] + [""]
BYTE_EOS = 128
MULTI_VOCAB = ["a", "b", "ab", "ba", "@", ".", "com", "org", "-", *"0123456789"]
MULTI_VOCAB += ["c", "o", "m", "r", "g", "", "xyz", "b@a", ".c"]
MULTI_EOS = MULTI_VOCAB.index("")
EMAIL = r"[a-z]+@[a-z]+\.(com|org)"
NUMBER = r"-?\d{1,5}"
ALTERNATIVES = r"(ab|ba)+|-(0|1)|c(o|r)m"
ANCHORED = r"^a(b|-)*\.org$"
PATTERNS = [EMAIL, NUMBER, ALTERNATIVES, ANCHORED]
VOCABS = {"bytes": (BYTE_VOCAB, BYTE_EOS), "multi": (MULTI_VOCAB, MULTI_EOS)}
BATCH, CAPACITY = 6, 48


def _cache():
    return TokenCache.empty(BATCH, CAPACITY)


def _params(vocab, eos, strings, seed=0):
    """Random bigram logits, nudged towards EOS and the separators so that unbounded patterns end."""
    table = np.array(random_params(len(vocab), seed=seed, scale=2.0))
    table[:, eos] += 4.0
    for ch in "@.":
        if ch in strings:
            table[:, strings.index(ch)] += 3.0
    return jnp.asarray(table)


def _prompts(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, vocab_size, size=(BATCH, 4)).astype(np.int32)
    return prompts, rng.integers(1, 5, size=BATCH).astype(np.int32)


def _decode(strings, eos, tokens, length):
    tokens = [int(t) for t in np.asarray(tokens)[: int(length)]]
    assert tokens and tokens[-1] == eos, tokens
    assert eos not in tokens[:-1]
    return "".join(strings[t] for t in tokens[:-1])


def _check_rows(pattern, strings, eos, dfa, tokens, lengths, complete):
    complete = np.asarray(complete)
    if dfa.acyclic:
        assert complete.all()
    assert complete.any()
    for row in np.flatnonzero(complete):
        text = _decode(strings, eos, tokens[row], lengths[row])
        assert re.fullmatch(pattern, text), (pattern, text)


@pytest.mark.parametrize("vocab_name", list(VOCABS))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_decoder_output_fully_matches(vocab_name, pattern):
    strings, eos = VOCABS[vocab_name]
    vocab = len(strings)
    dfa = compile_regex(pattern, strings, eos)
    params = _params(strings, eos, strings)
    prompts, lengths = _prompts(vocab)
    width = min(dfa.depth, 24)
    model = BigramModel()

    for kwargs in [{}, {"sampler": Categorical(), "key": jax.random.key(3)}]:
        out = generate(model, params, _cache(), prompts, lengths, constraint=dfa, max_new_tokens=width, **kwargs)
        complete = out.complete
        _check_rows(pattern, strings, eos, dfa, np.asarray(out.tokens), np.asarray(out.lengths), complete)

    beams = beam_search(
        model, params, _cache(), prompts, lengths, num_beams=3, max_new_tokens=width, constraint=dfa
    )
    valid = np.asarray(beams.valid)
    if dfa.acyclic:  # a cyclic pattern's beams may all loop (e.g. letters without "@") to the end
        assert valid[:, 0].all()
    for row, beam in zip(*np.nonzero(valid)):
        text = _decode(strings, eos, np.asarray(beams.sequences)[row, beam], np.asarray(beams.lengths)[row, beam])
        assert re.fullmatch(pattern, text), (pattern, text)

    spec = speculative_generate(
        model,
        params,
        TokenCache.empty(BATCH, CAPACITY),
        prompts,
        lengths,
        draft=PromptLookupDraft(ngram=1, vocab_size=vocab),
        num_draft_tokens=2,
        max_new_tokens=width,
        constraint=dfa,
    )
    reference = generate(
        model, params, TokenCache.empty(BATCH, CAPACITY), prompts, lengths, constraint=dfa, max_new_tokens=width
    )
    complete = reference.complete
    np.testing.assert_array_equal(np.asarray(spec.tokens), np.asarray(reference.tokens))
    np.testing.assert_array_equal(np.asarray(spec.lengths), np.asarray(reference.lengths))
    _check_rows(pattern, strings, eos, dfa, np.asarray(spec.tokens), np.asarray(spec.lengths), complete)


def test_beam_search_equals_the_trie_of_every_match():
    """An acyclic pattern's TokenDFA and the trie of all its matches (enumerated by brute force
    with ``re.fullmatch``) give the same beams: the DFA is a drop-in constraint."""
    import itertools

    from constraints import build_variable_length_index

    strings, eos = VOCABS["multi"]
    pattern = r"-?\d{1,2}|(ab|ba)c?"
    real = [t for t, s in enumerate(strings) if s]
    items = [
        list(seq) + [eos]
        for n in range(1, 4)
        for seq in itertools.product(real, repeat=n)
        if re.fullmatch(pattern, "".join(strings[t] for t in seq))
    ]
    dfa = compile_regex(pattern, strings, eos)
    trie = build_variable_length_index(items, len(strings), eos)
    assert dfa.depth == trie.depth == 4
    params = _params(strings, eos, strings, seed=1)
    prompts, lengths = _prompts(len(strings), seed=1)
    out = [
        beam_search(BigramModel(), params, _cache(), prompts, lengths, num_beams=4, constraint=c)
        for c in (dfa, trie)
    ]
    np.testing.assert_array_equal(np.asarray(out[0].sequences), np.asarray(out[1].sequences))
    np.testing.assert_array_equal(np.asarray(out[0].valid), np.asarray(out[1].valid))
    np.testing.assert_allclose(np.asarray(out[0].scores), np.asarray(out[1].scores), rtol=1e-6)


# -- brute force: interegular's character automaton walked in plain Python -----------------


class BruteForce:
    """Token-level allowed sets straight from interegular's FSM, with no vectorization, CSR
    or dense rows: a token is allowed when its characters lead to a state from which whole
    tokens can reach an accepting state; EOS when the state is accepting."""

    def __init__(self, pattern, strings, eos):
        body = pattern.removeprefix("^").removesuffix("$")
        self.fsm = interegular.parse_pattern(body).to_fsm()
        self.strings, self.eos = strings, eos
        states = list(self.fsm.states)
        self.live = set(self.fsm.finals)
        changed = True
        while changed:
            changed = False
            for q in states:
                reach = (self.walk(q, s) for t, s in enumerate(strings) if self.ok(t))
                if q not in self.live and any(r in self.live for r in reach):
                    self.live.add(q)
                    changed = True

    def ok(self, token):
        return token != self.eos and self.strings[token] != ""

    def walk(self, state, text):
        from interegular.fsm import anything_else

        for ch in text:
            alphabet = self.fsm.alphabet
            cls = alphabet[ch] if ch in alphabet else alphabet[anything_else] if anything_else in alphabet else None
            state = self.fsm.map.get(state, {}).get(cls)
            if state is None:
                return None
        return state

    def allowed(self, state):
        mask = np.zeros(len(self.strings), bool)
        for t, s in enumerate(self.strings):
            mask[t] = self.ok(t) and self.walk(state, s) in self.live
        mask[self.eos] = state in self.fsm.finals
        return mask


_BRUTE = {}


def _brute(pattern, vocab_name):
    if (pattern, vocab_name) not in _BRUTE:
        _BRUTE[pattern, vocab_name] = BruteForce(pattern, *VOCABS[vocab_name])
    return _BRUTE[pattern, vocab_name]


@settings(max_examples=25, deadline=None)
@given(
    pattern=st.sampled_from(PATTERNS),
    vocab_name=st.sampled_from(list(VOCABS)),
    dense=st.sampled_from([None, 1, 10**6]),
    choices=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
)
def test_allowed_mask_equals_brute_force_along_random_walks(pattern, vocab_name, dense, choices):
    strings, eos = VOCABS[vocab_name]
    dfa = compile_regex(pattern, strings, eos, dense_min_degree=dense)
    brute = _brute(pattern, vocab_name)
    state, char_state = dfa.initial_state(()), brute.fsm.initial
    for choice in choices:
        expected = brute.allowed(char_state)
        np.testing.assert_array_equal(np.asarray(dfa.allowed_mask(state)), expected)
        assert not bool(dfa.is_complete(state))
        forbidden = np.flatnonzero(~expected)
        if forbidden.size:
            assert int(dfa.advance(state, int(forbidden[choice % forbidden.size]))) == DEAD_STATE
        allowed = np.flatnonzero(expected)
        token = int(allowed[choice % allowed.size])
        state = dfa.advance(state, token)
        if token == eos:
            assert bool(dfa.is_complete(state))
            assert not np.asarray(dfa.allowed_mask(state)).any()
            assert int(dfa.advance(state, eos)) == DEAD_STATE
            return
        char_state = brute.walk(char_state, strings[token])


def test_worked_example_and_batched_states():
    dfa = compile_regex("a(b)*", ["a", "b", "ab", ""], 3, dense_min_degree=10**6)
    assert isinstance(dfa, TokenDFA) and not dfa.acyclic and not dfa.fixed_length and dfa.eos_id == 3
    s = dfa.initial_state((2,))
    s = dfa.advance(s, jnp.array([2, 1]))  # "ab" fine, "b" dead
    np.testing.assert_array_equal(np.asarray(dfa.allowed_mask(s)), [[False, True, False, True], [False] * 4])
    s = dfa.advance(s, jnp.array([3, 3]))
    np.testing.assert_array_equal(np.asarray(dfa.is_complete(s)), [True, False])
    assert int(dfa.advance(-1, 0)) == DEAD_STATE and int(dfa.advance(0, 7)) == DEAD_STATE


def test_depth_is_the_longest_match_when_bounded():
    assert compile_regex(NUMBER, BYTE_VOCAB, BYTE_EOS).depth == 7
    assert compile_regex(EMAIL, BYTE_VOCAB, BYTE_EOS, cyclic_depth=33).depth == 33


def test_clear_errors():
    with pytest.raises(ValueError, match=re.escape("'a(b'")):
        compile_regex("a(b", BYTE_VOCAB, BYTE_EOS)
    with pytest.raises(ValueError, match="no sequence"):
        compile_regex("xyz", ["a", "b", ""], 2)
    with pytest.raises(ValueError, match="no sequence"):
        compile_regex(r"\d+", ["a", "b", ""], 2)
    with pytest.raises(ValueError, match="eos_id"):
        compile_regex("a", ["a", ""], 2)
    with pytest.raises(ValueError, match="eos_id"):
        compile_regex("a", ["a", ""], -1)


def test_empty_strings_are_never_allowed():
    dfa = compile_regex("a*", ["a", "", "", "aa"], 2)
    mask = np.asarray(dfa.allowed_mask(dfa.initial_state(())))
    np.testing.assert_array_equal(mask, [True, False, True, True])


@pytest.mark.parametrize("dense", [None, 1, 10**6])
def test_save_load_round_trip(tmp_path, dense):
    dfa = compile_regex(EMAIL, BYTE_VOCAB, BYTE_EOS, dense_min_degree=dense)
    path = tmp_path / "email.npz"
    save_dfa(path, dfa)
    loaded = load_dfa(path)
    assert (loaded.vocab_size, loaded.eos_id, loaded.depth, loaded.acyclic) == (129, BYTE_EOS, dfa.depth, False)
    for name in ("indptr", "tokens", "next_state", "accepting", "dense_row", "dense_bits", "dense_rank"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), np.asarray(getattr(dfa, name)))


def test_load_rejects_edited_and_foreign_files(tmp_path):
    from constraints import build_variable_length_index, save_index

    dfa = compile_regex(NUMBER, BYTE_VOCAB, BYTE_EOS)
    path = tmp_path / "number.npz"
    save_dfa(path, dfa)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["next_state"] = arrays["next_state"].copy()
    arrays["next_state"][0] = 0
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(ValueError, match="next_state does not match its checksum"):
        load_dfa(tmp_path / "edited.npz")
    # Edited together with its checksum: the automaton check still sees it.
    import json

    from constraints.io import _array_checksum

    meta = json.loads(str(arrays["meta"]))
    meta["checksums"]["next_state"] = _array_checksum(arrays["next_state"])
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "consistent.npz", **arrays)
    with pytest.raises(ValueError, match="consistent.npz: "):
        load_dfa(tmp_path / "consistent.npz")
    save_index(tmp_path / "trie.npz", build_variable_length_index([[1, 2, 0]], 4, 0))
    with pytest.raises(ValueError, match="not a TokenDFA file"):
        load_dfa(tmp_path / "trie.npz")


def test_decoders_check_the_protocol_and_the_vocabulary():
    strings, eos = VOCABS["multi"]
    prompts, lengths = _prompts(len(strings))
    params = _params(strings, eos, strings)
    wrong_vocab = compile_regex("a+", strings + ["zz"], eos)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(BigramModel(), params, _cache(), prompts, lengths, constraint=wrong_vocab)
    with pytest.raises(ValueError, match="constraint must be"):
        beam_search(BigramModel(), params, _cache(), prompts, lengths, num_beams=2, max_new_tokens=4, constraint=object())
