"""Diverse beam search with Hamming diversity (Vijayakumar et al. 2016, arXiv:1610.02424).

The ``num_beams`` beams of a prompt are split into ``G = num_groups`` groups of
``num_beams / G``. At every step the groups choose in order ``g = 0 .. G-1``; group ``g``
ranks its continuations by

    summed log-prob  -  diversity_strength * (times the token was chosen at this step by groups < g)

The penalty only steers which live continuations a group keeps at this step (as in the paper,
it is not added to the sequence's score). Each group keeps its own finished pool of
``num_beams / G`` hypotheses ranked by the usual length-penalized model score; the outputs of
all groups are then sorted together, best first; a hypothesis that several groups reached is
reported once (its repeats come back invalid, sorted last), so a top-K list never names an
item twice. With ``diversity_strength = 0`` every group is an ordinary beam search with
``num_beams / G`` beams.

Worked example (``BigramModel()``, ``counting_params(6)``: the top token after t is t+1 with
log-prob ``-p``, every other token ``-10 - p``)::

    prompts = [[1]], num_beams = 2, num_groups = 2, max_new_tokens = 2, length_penalty = 0
    group 0, step 0: "2" (-p)
    group 1, step 0: "2" would score -p - strength; with strength = 20, "0" (-10-p) wins
    step 1 (both groups have 1 beam; "3" and "1" were not chosen before): "2 3", "0 1"
    out.sequences = [[[2, 3], [0, 1]]], out.log_probs = [[-2p, -10-2p]]
    with strength = 0 both groups say [2, 3]: out.sequences = [[[2, 3], [0, 0]]], valid [[True, False]].

``tests/test_diverse_beam_search.py`` replays this example.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from decoding.beam_helpers import BeamSearchOutput, take_candidates, top_beams
from decoding.beam_search import check_num_beams, prepare_search, run_program
from decoding.prefill import DEFAULT_MIN_BUCKET
from decoding.validation import check_finite

CORE = (
    "decoding.inputs.prepare (outside the trace), then decoding.beam_search.run_dense with "
    "BeamSettings(selector=HammingDiversity(...)) and decoding.beam_helpers.to_output"
)


@struct.dataclass
class HammingDiversity:
    """A :class:`decoding.beam_helpers.BeamSelector`: groups choose in order, each penalized by
    ``strength`` per earlier-group choice of the same token at this step."""

    strength: jax.Array  # float32 []  traced
    num_groups: int = struct.field(pytree_node=False)  # static

    def select(
        self,
        scores: jax.Array,  # float32 [batch * groups, beams, vocab]
    ) -> tuple[jax.Array, jax.Array]:  # parent int32 [batch * groups, beams], token int32 [same]
        rows, beams, vocab = scores.shape
        batch = rows // self.num_groups
        grouped = scores.reshape(batch, self.num_groups, beams, vocab)
        counts = jnp.zeros((batch, vocab), jnp.float32)
        parents, tokens = [], []
        for group in range(self.num_groups):
            group_scores = grouped[:, group]
            parent, token = top_beams(group_scores - self.strength * counts[:, None, :], beams)
            alive = jnp.isfinite(take_candidates(group_scores, parent, token))
            counts = counts.at[jnp.arange(batch)[:, None], token].add(alive.astype(jnp.float32))
            parents.append(parent)
            tokens.append(token)
        return jnp.stack(parents, axis=1).reshape(rows, beams), jnp.stack(tokens, axis=1).reshape(rows, beams)


def diverse_beam_search(
    model: Any,
    params: Any,
    cache: Any,
    prompts: Any,
    prompt_lengths: Any,
    *,
    num_beams: int,
    num_groups: int,
    diversity_strength: Any,
    max_new_tokens: int | None = None,
    eos_ids: tuple[int, ...] = (),
    length_penalty: Any = 1.0,
    constraint: Any = None,
    pad_id: int = 0,
    vocab_size: int | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
    mesh: jax.sharding.Mesh | None = None,
) -> BeamSearchOutput:
    """Diverse beam search (see the module docstring); the arguments of
    :func:`decoding.beam_search.beam_search` plus:

    Args:
      num_groups: number of groups G (static); must divide ``num_beams``.
      diversity_strength: the Hamming penalty per earlier-group choice, float >= 0. Traced.

    Every path is the dense one: a constraint (fixed- or variable-length) is applied as a
    mask over the vocabulary. Returns a :class:`decoding.beam_helpers.BeamSearchOutput` with all
    groups' hypotheses sorted best first by length-penalized model score, and ``nonfinite``
    bool [batch] (rows whose search read non-finite logits).

    Raises what :func:`decoding.beam_search.beam_search` raises, and ValueError for a
    ``diversity_strength`` that is negative, not finite or not a scalar. Under ``jax.jit``
    (:class:`decoding.validation.TracedCallError`) call :func:`decoding.beam_search.run_dense`
    with ``BeamSettings(selector=HammingDiversity(...))``, then
    :func:`decoding.beam_helpers.to_output`.
    """
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if check_num_beams(num_beams) % num_groups:
        raise ValueError(f"num_beams={num_beams!r} must be a multiple of num_groups={num_groups}")
    if np.ndim(diversity_strength):
        raise ValueError(f"diversity_strength must be a scalar float >= 0, got shape {np.shape(diversity_strength)}")
    strength = check_finite("diversity_strength", diversity_strength, 1, minimum=0.0)[0]
    prepared, settings = prepare_search(
        "diverse_beam_search",
        CORE,
        model,
        params,
        cache,
        prompts,
        prompt_lengths,
        selector=HammingDiversity(strength=strength, num_groups=num_groups),
        length_penalty=length_penalty,
        layered_ok=False,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        constraint=constraint,
        pad_id=pad_id,
        vocab_size=vocab_size,
        min_bucket=min_bucket,
    )
    return run_program(model, num_beams, params, cache, prepared, settings, mesh)
