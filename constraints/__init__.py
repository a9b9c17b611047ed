"""Constraint automata for decoding: tries of item token sequences as CSR matrices, and token-level
DFAs (e.g. compiled from a regular expression, :func:`compile_regex`).

Offline (NumPy) builders turn item sets into a :class:`TrieIndex`; the on-device ops (pure
JAX, jit- and vmap-friendly) walk it one token per decode step. This package depends on
nothing else in the project. Every automaton follows one protocol (:mod:`constraints.protocol`),
the only thing decoding knows of a constraint.
"""

from constraints.builder import Progress, build_fixed_length_index, build_variable_length_index
from constraints.dfa import TokenDFA
from constraints.index import DEAD_STATE, TrieIndex
from constraints.item_filter import FilterTables, ItemFilter, leaf_ranks
from constraints.io import FORMAT_VERSION, load_dfa, load_index, save_dfa, save_index
from constraints.memory import MemoryReport, index_nbytes, memory_report
from constraints.ops import advance, allowed_mask, candidates, initial_state, is_complete
from constraints.protocol import Constraint, LayeredConstraint, Unconstrained
from constraints.regex import compile_regex

__all__ = [
    "Constraint",
    "DEAD_STATE",
    "FORMAT_VERSION",
    "FilterTables",
    "ItemFilter",
    "LayeredConstraint",
    "MemoryReport",
    "Progress",
    "TokenDFA",
    "TrieIndex",
    "Unconstrained",
    "advance",
    "allowed_mask",
    "build_fixed_length_index",
    "build_variable_length_index",
    "candidates",
    "compile_regex",
    "index_nbytes",
    "initial_state",
    "is_complete",
    "leaf_ranks",
    "load_dfa",
    "load_index",
    "memory_report",
    "save_dfa",
    "save_index",
]
