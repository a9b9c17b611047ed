"""Regular expressions over a token vocabulary, compiled to a :class:`constraints.dfa.TokenDFA`.

``compile_regex(pattern, token_strings, eos_id)`` accepts exactly the token sequences whose
concatenated strings ``re.fullmatch`` the pattern, followed by EOS.

1. The pattern becomes a character DFA with ``interegular`` (a well-kept regex-to-FSM library,
   used by outlines and others, rather than a regex compiler of our own).
2. Every token's string is walked over that DFA vectorized in NumPy: for all character states
   at once, all tokens at once, one character position at a time.
3. Token-level states are the character states reachable from the start by whole tokens and
   from which an accepting state is reachable by whole tokens (so no state is a dead end, even
   when the vocabulary lacks characters the pattern would allow).

Tokens with an empty string are never allowed (except the EOS id, whose string is ignored).
A leading ``^`` / ``\\A`` and a trailing ``$`` / ``\\Z`` are dropped (the match is a full match
anyway); anchors elsewhere are not supported by interegular and raise ValueError.

Example::

    dfa = compile_regex(r"-?\\d{1,5}", [chr(i) for i in range(128)] + [""], eos_id=128)
    # dfa.depth == 7: a sign, five digits, EOS
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from constraints.dfa import DEFAULT_CYCLIC_DEPTH, TokenDFA, build_token_dfa


def _strip_anchors(pattern: str) -> str:
    body = pattern
    for head in ("^", "\\A"):
        if body.startswith(head):
            body = body[len(head) :]
            break
    for tail in ("$", "\\Z"):
        if body.endswith(tail) and not body.endswith("\\" + tail):
            body = body[: -len(tail)]
            break
    return body


def _char_dfa(pattern: str) -> tuple[np.ndarray, np.ndarray, int, object]:
    """(table int64 [char_states, classes] with -1 = no transition, finals bool [char_states],
    initial, alphabet) from interegular, with ValueError on a pattern it rejects."""
    import interegular

    try:
        fsm = interegular.parse_pattern(_strip_anchors(pattern)).to_fsm()
    except Exception as error:  # interegular's InvalidSyntax, Unsupported, ...
        raise ValueError(f"cannot compile regular expression {pattern!r}: {type(error).__name__}: {error}") from error
    states = sorted(fsm.states)
    number = {s: i for i, s in enumerate(states)}
    classes = 1 + max([c for row in fsm.map.values() for c in row] + [int(v) for _, v in fsm.alphabet.items()])
    table = np.full((len(states), classes), -1, np.int64)
    for s, row in fsm.map.items():
        for c, d in row.items():
            table[number[s], c] = number[d]
    finals = np.zeros(len(states), bool)
    finals[[number[s] for s in fsm.finals]] = True
    return table, finals, number[fsm.initial], fsm.alphabet


def _char_classes(alphabet: object, chars: list[str]) -> dict[str, int]:
    """Symbol class of each character (-1: no transition anywhere)."""
    from interegular.fsm import anything_else

    out = {}
    for ch in chars:
        try:
            out[ch] = int(alphabet[ch])
        except KeyError:
            try:
                out[ch] = int(alphabet[anything_else])
            except KeyError:
                out[ch] = -1
    return out


def token_transitions(
    table: np.ndarray,  # int64 [char_states, classes], -1 = none
    token_strings: Sequence[str],
    alphabet: object,
    skip: int | None = None,
) -> np.ndarray:  # int64 [char_states, vocab]
    """Where each token's string leads from each character state (-1: dead or empty string)."""
    vocab = len(token_strings)
    lengths = np.array([len(s) for s in token_strings], np.int64)
    width = int(lengths.max(initial=0))
    classes = _char_classes(alphabet, sorted({ch for s in token_strings for ch in s}))
    codes = np.full((vocab, max(width, 1)), -1, np.int64)
    for t, s in enumerate(token_strings):
        codes[t, : len(s)] = [classes[ch] for ch in s]
    n = table.shape[0]
    current = np.broadcast_to(np.arange(n)[:, None], (n, vocab)).copy()  # [char_states, vocab]
    for j in range(width):
        active = j < lengths  # [vocab]
        cls = codes[:, j]
        alive = (current >= 0) & (cls >= 0)[None, :]
        step = np.where(alive, table[np.clip(current, 0, None), np.clip(cls, 0, None)[None, :]], -1)
        current = np.where(active[None, :], step, current)
    current[:, lengths == 0] = -1
    if skip is not None:
        current[:, skip] = -1
    return current


def _reach(num: int, src: np.ndarray, dst: np.ndarray, start: np.ndarray) -> np.ndarray:
    """bool [num]: states reachable from ``start`` (bool [num]) along ``src -> dst``."""
    seen = start.copy()
    frontier = start.copy()
    while frontier.any():
        nxt = np.zeros(num, bool)
        nxt[dst[frontier[src]]] = True
        frontier = nxt & ~seen
        seen |= nxt
    return seen


def compile_regex(
    pattern: str,
    token_strings: Sequence[str],
    eos_id: int,
    *,
    cyclic_depth: int = DEFAULT_CYCLIC_DEPTH,
    dense_min_degree: int | None = None,
) -> TokenDFA:
    """The :class:`TokenDFA` of ``pattern`` over a vocabulary of ``len(token_strings)`` tokens.

    Args:
      pattern: a Python-style regular expression (the subset interegular parses); the decoded
        string must match it in full.
      token_strings: each token id's string (bytes as ``chr(b)`` for a byte-level vocabulary;
        multi-character tokens welcome). The EOS id's string is ignored.
      eos_id: the token that ends a match, in ``[0, len(token_strings))``.
      cyclic_depth: ``depth`` (decoding's default ``max_new_tokens``) when matches are
        unbounded; for a bounded pattern ``depth`` is the longest match in tokens plus EOS.
      dense_min_degree: see :func:`constraints.dfa.build_token_dfa`.

    Raises:
      ValueError: a pattern interegular rejects (named in the message), an ``eos_id`` out of
        range, or a pattern that no sequence of these tokens matches.
    """
    vocab = len(token_strings)
    if isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer)) or not 0 <= eos_id < vocab:
        raise ValueError(f"eos_id must be an int in [0, {vocab}), got {eos_id!r}")
    if not all(isinstance(s, str) for s in token_strings):
        raise ValueError("token_strings must be strings (one per token id)")
    table, finals, initial, alphabet = _char_dfa(pattern)
    moves = token_transitions(table, token_strings, alphabet, skip=int(eos_id))  # [char_states, vocab]
    n = table.shape[0]
    q, t = np.nonzero(moves >= 0)
    d = moves[q, t]
    start = np.zeros(n, bool)
    start[initial] = True
    reachable = _reach(n, q, d, start)
    coreachable = _reach(n, d, q, finals.copy())
    keep = reachable & coreachable
    if not keep[initial]:
        raise ValueError(f"no sequence of the {vocab} tokens matches the regular expression {pattern!r}")
    # Number kept states breadth first from the initial state (state 0).
    kept_edge = keep[q] & keep[d]
    q, t, d = q[kept_edge], t[kept_edge], d[kept_edge]
    number = np.full(n, -1, np.int64)
    number[initial] = 0
    order = [initial]
    edges_by_src = {}
    for a, b in zip(q.tolist(), d.tolist()):
        edges_by_src.setdefault(a, []).append(b)
    head = 0
    while head < len(order):
        for b in edges_by_src.get(order[head], ()):
            if number[b] < 0:
                number[b] = len(order)
                order.append(b)
        head += 1
    accepting = finals[np.array(order)]
    return build_token_dfa(
        len(order),
        number[q],
        t,
        number[d],
        accepting,
        vocab,
        int(eos_id),
        cyclic_depth=cyclic_depth,
        dense_min_degree=dense_min_degree,
    )
