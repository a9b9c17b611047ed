"""Jit-compiled decoding over any model that follows :mod:`decoding.protocol`.

Eager exports: the samplers, :func:`generate` and its output, the prefill helpers. Beam search,
diverse beam search, speculative decoding (with its draft sources) and constrained decoding
are imported on first access (PEP 562), so ``import decoding`` stays light and those modules
(and ``constraints/``) load only when used.
"""

from __future__ import annotations

import importlib

from decoding.generate import GenerateOutput, generate
from decoding.prefill import bucket_length, prefill
from decoding.protocol import DecodeCache, DecodeModel
from decoding.samplers import Categorical, Greedy, MinP, Temperature, TopK, TopP

_LAZY = {
    "beam_search": "decoding.beam_search",
    "BeamSearchOutput": "decoding.beam_search",
    "diverse_beam_search": "decoding.diverse_beam_search",
    "HammingDiversity": "decoding.diverse_beam_search",
    "speculative_generate": "decoding.speculative",
    "SpeculativeOutput": "decoding.speculative",
    "SpeculativeStats": "decoding.speculative",
    "ModelDraft": "decoding.drafts",
    "PromptLookupDraft": "decoding.drafts",
    "constrained_generate": "decoding.constrained",
    "sparse_beam_search": "decoding.constrained",
}

__all__ = [
    "Categorical",
    "DecodeCache",
    "DecodeModel",
    "GenerateOutput",
    "Greedy",
    "MinP",
    "Temperature",
    "TopK",
    "TopP",
    "bucket_length",
    "generate",
    "prefill",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'decoding' has no attribute {name!r}")
