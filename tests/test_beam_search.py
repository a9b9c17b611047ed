"""beam_search (unconstrained): the worked example, brute-force top-k over every sequence, a
NumPy reference beam search (full recompute, no early stop), greedy, ragged batches, length
penalty by hand, and input validation."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from decoding.beam_search import beam_search, compiled_variants
from fake_models import BigramModel, HistoryModel, TokenCache, counting_params, random_params

CAPACITY = 32


def next_log_probs(model, params: np.ndarray, prefix: tuple[int, ...]) -> np.ndarray:
    """float64 [vocab]: the fake model's next-token log-softmax after ``prefix``, in NumPy."""
    row = prefix[-1] if isinstance(model, BigramModel) else sum(prefix) % params.shape[0]
    logits = params[row].astype(np.float64)
    return logits - np.logaddexp.reduce(logits)


def score_sequences(model, params, prompt, seqs) -> np.ndarray:
    """float64 [n]: the summed model log-prob of each token sequence in ``seqs`` after
    ``prompt``, by one no-cache model call over the full (prompt + sequence) rows."""
    width = len(prompt) + max(len(seq) for seq in seqs)
    full = np.zeros((len(seqs), width), np.int32)
    for i, seq in enumerate(seqs):
        full[i, : len(prompt) + len(seq)] = list(prompt) + list(seq)
    logits, _ = model(params, full, TokenCache.empty(len(seqs), width), np.full(len(seqs), width))
    log_softmax = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    return np.array([
        np.sum(log_softmax[i, np.arange(len(prompt) - 1, len(prompt) - 1 + len(seq)), list(seq)])
        for i, seq in enumerate(seqs)
    ])


def ranked(model, params, prompt, seqs, alpha):
    """(score, log_prob, tokens) of every sequence, best first; score = log_prob / len ** alpha."""
    seqs = [tuple(int(t) for t in seq) for seq in seqs]
    log_probs = score_sequences(model, params, prompt, seqs)
    return sorted(((lp / len(seq) ** alpha, lp, seq) for lp, seq in zip(log_probs, seqs)), key=lambda h: -h[0])


def brute_force(model, params, prompt, vocab, width, eos, alpha):
    """Every hypothesis (ends in EOS, or max length), scored without a cache, best first."""
    hyps = set()
    for seq in itertools.product(range(vocab), repeat=width):
        ends = [i for i, token in enumerate(seq) if token in eos]
        hyps.add(seq[: ends[0] + 1] if ends else seq)
    return ranked(model, params, prompt, sorted(hyps), alpha)


def reference_beam_search(model, params, prompt, num_beams, width, eos, alpha):
    """A plain Python beam search: all EOS continuations kept, no early stop, NumPy log-probs."""
    params = np.asarray(params)
    live, finished = [((), 0.0)], []
    for step in range(width):
        candidates = []
        for tokens, total in live:
            log_probs = next_log_probs(model, params, tuple(prompt) + tokens)
            for token, log_prob in enumerate(log_probs):
                hyp = (tokens + (token,), total + log_prob)
                (finished if token in eos else candidates).append(hyp)
        live = sorted(candidates, key=lambda h: -h[1])[:num_beams]
    finished += live
    scored = [((total / len(tokens) ** alpha), total, tokens) for tokens, total in finished]
    return sorted(scored, key=lambda h: -h[0])


def run(model, params, prompts, lengths, **kwargs):
    prompts = np.asarray(prompts)
    return beam_search(model, params, TokenCache.empty(prompts.shape[0], CAPACITY), prompts, np.asarray(lengths), **kwargs)


def assert_matches(out, row, expected, width, pad_id=0):
    """``out`` row ``row`` is a best-first top-k of the (score, log_prob, tokens) list
    ``expected`` (sorted best first; exact ties may come in either order), then invalid beams."""
    expected_by_tokens = {tokens: (score, log_prob) for score, log_prob, tokens in expected}
    num_beams = out.scores.shape[1]
    k = min(num_beams, len(expected))
    np.testing.assert_allclose(out.scores[row, :k], [h[0] for h in expected[:k]], rtol=1e-5, atol=1e-5)
    seen = set()
    for beam in range(k):
        length = int(out.lengths[row, beam])
        tokens = tuple(int(t) for t in out.sequences[row, beam, :length])
        assert out.valid[row, beam] and tokens in expected_by_tokens and tokens not in seen
        seen.add(tokens)
        np.testing.assert_array_equal(out.sequences[row, beam, length:], pad_id)
        score, log_prob = expected_by_tokens[tokens]
        np.testing.assert_allclose(float(out.scores[row, beam]), score, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(out.log_probs[row, beam]), log_prob, rtol=1e-5, atol=1e-5)
    rest = slice(k, None)
    assert not np.any(out.valid[row, rest])
    assert np.all(np.isneginf(out.scores[row, rest])) and np.all(np.isneginf(out.log_probs[row, rest]))
    assert np.all(out.lengths[row, rest] == 0) and np.all(out.sequences[row, rest] == pad_id)


def test_worked_example():
    """The module docstring's example, replayed."""
    out = run(BigramModel(), counting_params(6), [[1]], [1], num_beams=2, max_new_tokens=3, eos_ids=(4,),
              length_penalty=0.0)
    p = float(np.log1p(5 * np.exp(-10.0)))
    assert_matches(out, 0, [(-3 * p, -3 * p, (2, 3, 4)), (-10 - p, -10 - p, (4,))], width=3)


def test_all_sequences_brute_force():
    """beams >= every hypothesis (V=4, L=3, EOS=3: 40 of them): exactly the brute-force ranking;
    the 24 beams beyond them come back invalid."""
    model = HistoryModel()
    params = random_params(4, seed=3)
    prompt = [1, 2]
    for alpha in (0.0, 1.0):
        out = run(model, params, [prompt], [2], num_beams=64, max_new_tokens=3, eos_ids=(3,), length_penalty=alpha)
        expected = brute_force(model, params, prompt, 4, 3, (3,), alpha)
        assert len(expected) == 40
        assert_matches(out, 0, expected, width=3)


def test_without_eos_equals_brute_force_top_k():
    """No EOS: the top 5 of all V**L sequences by log-prob (HistoryModel: needs the cache
    gathered by parent beam)."""
    params = random_params(5, seed=11)
    out = run(HistoryModel(), params, [[4, 1, 0]], [3], num_beams=5, max_new_tokens=3, length_penalty=0.0)
    expected = brute_force(HistoryModel(), params, [4, 1, 0], 5, 3, (), 0.0)
    assert_matches(out, 0, expected, width=3)


def test_matches_reference_loop():
    """beams < hypotheses: the jit loop (early stop, finished pool, cache gather) equals the
    plain Python reference, for several length penalties (negative too) and seeds; one compile."""
    for seed, alpha in itertools.product(range(3), (0.0, 0.7, 2.0, -0.5)):
        params = random_params(7, seed=seed, scale=2.0)
        prompts = np.array([[3, 1, 4], [5, 0, 0]])
        out = run(HistoryModel(), params, prompts, [3, 1], num_beams=3, max_new_tokens=6, eos_ids=(0, 5),
                  length_penalty=alpha)
        for row, prompt in enumerate(([3, 1, 4], [5])):
            expected = reference_beam_search(HistoryModel(), params, prompt, 3, 6, (0, 5), alpha)
            assert_matches(out, row, expected, width=6)


def test_one_beam_is_greedy():
    """Without EOS, one beam is the greedy path (argmax of the NumPy log-probs each step)."""
    params = random_params(9, seed=5)
    out = run(HistoryModel(), params, [[2, 7]], [2], num_beams=1, max_new_tokens=6, length_penalty=0.0)
    prefix, total = (2, 7), 0.0
    for _ in range(6):
        log_probs = next_log_probs(HistoryModel(), np.asarray(params), prefix)
        prefix, total = prefix + (int(np.argmax(log_probs)),), total + float(np.max(log_probs))
    np.testing.assert_array_equal(out.sequences[0, 0], prefix[2:])
    np.testing.assert_allclose(float(out.log_probs[0, 0]), total, rtol=1e-5)


def test_ragged_batch_equals_each_prompt_alone():
    params = random_params(8, seed=2)
    prompts = np.array([[1, 2, 3, 4, 5], [6, 0, 0, 0, 0], [7, 7, 1, 0, 0]])
    lengths = [5, 1, 3]
    kwargs = dict(num_beams=3, max_new_tokens=4, eos_ids=(2,), length_penalty=0.5)
    batched = run(HistoryModel(), params, prompts, lengths, **kwargs)
    for row in range(3):
        alone = run(HistoryModel(), params, prompts[row : row + 1, : lengths[row]], lengths[row : row + 1], **kwargs)
        np.testing.assert_array_equal(batched.sequences[row], alone.sequences[0])
        np.testing.assert_array_equal(batched.lengths[row], alone.lengths[0])
        np.testing.assert_allclose(batched.scores[row], alone.scores[0], rtol=1e-6)


def test_length_penalty_by_hand():
    """Bigram probabilities chosen so that a length penalty flips the ranking; row 0 has
    alpha = 0, row 1 alpha = 1 (length_penalty is a traced [batch] array); pad_id = 9.

    After the prompt 0: EOS(3) 0.45, token 1 0.35; after 1: token 2 0.9; after 2: EOS 0.9.
    alpha = 0: "EOS" (log .45 = -0.799) beats "1 2 EOS" (log .2835 = -1.261).
    alpha = 1: "1 2 EOS" (log(.2835) / 3 = -0.420) beats "EOS" (-0.799).
    """
    third = 0.1 / 3
    probs = np.array([[0.1, 0.35, 0.1, 0.45], [third, third, 0.9, third], [third, third, third, 0.9], [0.25] * 4])
    params = np.log(probs).astype(np.float32)
    short, long = (3,), (1, 2, 3)
    raw_short, raw_long = np.log(0.45), np.log(0.35 * 0.9 * 0.9)
    out = run(BigramModel(), params, [[0], [0]], [1, 1], num_beams=2, max_new_tokens=3, eos_ids=(3,),
              length_penalty=np.array([0.0, 1.0], np.float32), pad_id=9)
    assert_matches(out, 0, [(raw_short, raw_short, short), (raw_long, raw_long, long)], width=3, pad_id=9)
    assert_matches(out, 1, [(raw_long / 3, raw_long, long), (raw_short, raw_short, short)], width=3, pad_id=9)
    np.testing.assert_array_equal(out.sequences[0], [[3, 9, 9], [1, 2, 3]])


def test_traced_knobs_do_not_recompile():
    """New prompt lengths (same bucket), length penalty, pad_id and EOS values reuse one program."""
    params = counting_params(6)
    run(BigramModel(), params, [[1]], [1], num_beams=2, max_new_tokens=3, eos_ids=(4,), length_penalty=0.0)
    before = compiled_variants()
    for prompt, eos, alpha, pad in (([1, 2, 3], 5, 1.0, 7), ([0, 4], 1, -0.5, 0), ([5] * 9, 0, 2.0, 3)):
        out = run(BigramModel(), params, [prompt], [len(prompt)], num_beams=2, max_new_tokens=3, eos_ids=(eos,),
                  length_penalty=alpha, pad_id=pad)
        assert int(out.sequences[0, 0, 0]) == (prompt[-1] + 1) % 6
    assert compiled_variants() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=0, max_new_tokens=2), "num_beams"),
        (dict(num_beams=2), "max_new_tokens is required"),
        (dict(num_beams=2, max_new_tokens=np.array([2])), "max_new_tokens must be an int"),
        (dict(num_beams=2, max_new_tokens=2, eos_ids=4), "tuple"),
        (dict(num_beams=2, max_new_tokens=2, eos_ids=(4, 4)), "distinct"),
        (dict(num_beams=2, max_new_tokens=2, eos_ids=(6,)), "outside the vocabulary"),
        (dict(num_beams=2, max_new_tokens=40), "capacity"),
        (dict(num_beams=2, max_new_tokens=2, length_penalty=np.zeros(3)), "length_penalty"),
    ],
)
def test_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(BigramModel(), counting_params(6), [[1]], [1], **kwargs)
