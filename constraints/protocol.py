"""The constraint protocol: the one seam between decoding and any token-level automaton.

Decoding drives every constraint through these members and knows nothing else of it::

    state = c.initial_state(shape)        # pytree of arrays with leading ``shape``
    mask = c.allowed_mask(state)          # bool [*shape, vocab] (or broadcastable to it)
    state = c.advance(state, token)       # token int32 [*shape]
    done = c.is_complete(state)           # bool [*shape]: a whole output, nothing may follow
    c.depth, c.fixed_length, c.eos_id, c.vocab_size   # static metadata

``depth`` is the default number of new tokens (every output fits); ``fixed_length`` says every
output is exactly ``depth`` tokens and has no EOS; otherwise ``eos_id`` ends an output (the
automaton allows it exactly where an output may end, and is complete after it).

The optional *layered* capability (:class:`LayeredConstraint`) serves beam search's sparse
path on fixed-length constraints: ``max_branching[d]`` (static) bounds the allowed tokens of a
state ``d`` tokens deep, and ``candidates(state, d)`` lists them with their next states, so a
step ranks ``beams x K`` candidates instead of ``beams x vocab``.

Implementations: :class:`constraints.TrieIndex` (both), :class:`constraints.TokenDFA`
(regular expressions; dense), :class:`constraints.ItemFilter` (per-row item filters; layered),
and :class:`Unconstrained`, the null object decoding uses when the caller passes none. A new
automaton is one class with these members: decoding needs no edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct


@runtime_checkable
class Constraint(Protocol):
    """A token-level automaton (see the module docstring). Arrays traced, metadata static."""

    depth: int | None
    fixed_length: bool
    eos_id: int | None
    vocab_size: int | None

    def initial_state(self, shape: int | Sequence[int]) -> Any: ...

    def allowed_mask(self, state: Any) -> jax.Array: ...  # bool [..., vocab]

    def advance(self, state: Any, token: jax.Array) -> Any: ...  # token int32 [...]

    def is_complete(self, state: Any) -> jax.Array: ...  # bool [...]


@runtime_checkable
class LayeredConstraint(Constraint, Protocol):
    """A fixed-length constraint that can list each state's allowed tokens (the sparse path)."""

    max_branching: tuple[int, ...]  # static: most allowed tokens of a state per depth

    def candidates(
        self, state: Any, depth: int
    ) -> tuple[jax.Array, jax.Array, jax.Array]: ...  # tokens, next states, valid: [..., K]


@struct.dataclass
class Unconstrained:
    """No constraint: every token allowed, never complete (rows end on EOS or their limit).

    The null object decoding holds instead of ``None``; its mask is a broadcastable all-True
    ``[..., 1]``, which XLA folds away, so an unconstrained loop pays nothing for it.
    """

    depth: ClassVar[None] = None
    fixed_length: ClassVar[bool] = False
    eos_id: ClassVar[None] = None
    vocab_size: ClassVar[None] = None  # any vocabulary

    def initial_state(self, shape: int | Sequence[int]) -> jax.Array:  # int32 [*shape]
        return jnp.zeros(shape, jnp.int32)

    def allowed_mask(self, state: jax.Array) -> jax.Array:  # bool [..., 1]
        return jnp.ones(jnp.shape(state) + (1,), bool)

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:
        del token
        return state

    def is_complete(self, state: jax.Array) -> jax.Array:  # bool [...]
        return jnp.zeros(jnp.shape(state), bool)


DENSE_MEMBERS = ("depth", "fixed_length", "eos_id", "vocab_size", "initial_state", "allowed_mask", "advance", "is_complete")
"""What every constraint has (:class:`Constraint`)."""

LAYERED_MEMBERS = ("depth", "fixed_length", "vocab_size", "max_branching", "initial_state", "candidates", "is_complete")
"""What the sparse beam path reads (:class:`LayeredConstraint`)."""


def is_unconstrained(constraint: Any) -> bool:
    """True for the null object (decoding's only question about a constraint's identity: a
    hypothesis cut at the length limit is acceptable exactly when nothing constrains it)."""
    return isinstance(constraint, Unconstrained)


def is_layered(constraint: Any) -> bool:
    """True when ``constraint`` is fixed-length and has the layered capability."""
    return bool(getattr(constraint, "fixed_length", False)) and all(hasattr(constraint, m) for m in LAYERED_MEMBERS)


def has_members(constraint: Any, members: Sequence[str]) -> bool:
    return all(hasattr(constraint, m) for m in members)
