"""Jit-compiled decoding over any model that follows :mod:`decoding.protocol`.

The public entry points are imported eagerly: a lazy ``__getattr__`` would lose to Python's
own binding of a submodule of the same name (``decoding.beam_search`` the module would
shadow ``decoding.beam_search`` the function once anything imported the module).

Every output carries ``nonfinite`` (bool [batch]): rows that read non-finite logits, whose
results are meaningless; decoding never raises on non-finite numbers (see
:mod:`decoding.validation`, "Non-finite policy"). Bad inputs raise before compiling:
ValueError naming the row or field, :class:`DonatedCacheError` for a reused donated cache,
:class:`TracedCallError` for a call under ``jax.jit`` (each names the traceable core to call
instead).
"""

from constraints.protocol import Constraint, Unconstrained
from decoding.beam_helpers import BeamSearchOutput, TopBeams
from decoding.beam_search import beam_search
from decoding.constrained import sparse_beam_search
from decoding.diverse_beam_search import HammingDiversity, diverse_beam_search
from decoding.drafts import DraftSource, ModelDraft, PromptLookupDraft, Proposal
from decoding.generate import GenerateOutput, generate
from decoding.inputs import CallInputs, prepare
from decoding.prefill import bucket_length, prefill
from decoding.protocol import DecodeCache, DecodeModel
from decoding.samplers import Categorical, Greedy, MinP, Temperature, TopK, TopP
from decoding.speculative import SpeculativeOutput, SpeculativeStats, speculative_generate
from decoding.validation import DonatedCacheError, TracedCallError

__all__ = [
    "BeamSearchOutput",
    "CallInputs",
    "Categorical",
    "Constraint",
    "DecodeCache",
    "DecodeModel",
    "DonatedCacheError",
    "DraftSource",
    "GenerateOutput",
    "Greedy",
    "HammingDiversity",
    "MinP",
    "ModelDraft",
    "PromptLookupDraft",
    "Proposal",
    "SpeculativeOutput",
    "SpeculativeStats",
    "Temperature",
    "TopBeams",
    "TopK",
    "TopP",
    "TracedCallError",
    "Unconstrained",
    "beam_search",
    "bucket_length",
    "diverse_beam_search",
    "generate",
    "prefill",
    "prepare",
    "sparse_beam_search",
    "speculative_generate",
]
