"""The output buffers of the token-emitting loops (generate and speculative decoding) and the
one function that writes them.

A loop iteration emits ``T`` tokens per row (1 for ``generate``; up to ``k + 1`` for a
speculative round); :func:`record` writes each row's first ``num[b]`` of them after the
tokens it already holds and decides which rows are done.

Worked example (width 4, limits [4, 2]; the caller has cut ``num`` at each row's first stop
and at its limit)::

    book.lengths = [1, 1]    book.tokens = [[7, 0, 0, 0], [4, 0, 0, 0]]
    record(tokens=[[8, 9], [5, 6]], num=[2, 1], stopped=[True, False])
    -> tokens [[7, 8, 9, 0], [4, 5, 0, 0]], lengths [3, 2]
       done [True, True] (row 0 stopped, row 1 reached its limit), complete [True, False]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Bookkeeping:
    """What a loop has emitted so far (the loop's own half of its carry)."""

    step: jax.Array  # int32 []  loop iterations run so far
    done: jax.Array  # bool [batch]  the row stopped (EOS, complete constraint) or hit its limit
    complete: jax.Array  # bool [batch]  the row stopped by itself: EOS or a complete constraint state
    lengths: jax.Array  # int32 [batch]  tokens recorded per row
    tokens: jax.Array  # int32 [batch, width]  recorded tokens, pad_id elsewhere
    log_probs: jax.Array  # float32 [batch, width]  model log-probabilities of the recorded tokens


def new_book(
    limits: jax.Array,  # int32 [batch]
    width: int,
    pad_id: jax.Array,  # int32 []
) -> Bookkeeping:
    """Empty buffers of static ``width``; rows with limit 0 start done."""
    batch = limits.shape[0]
    return Bookkeeping(
        step=jnp.zeros((), jnp.int32),
        done=limits <= 0,
        complete=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, width), pad_id, jnp.int32),
        log_probs=jnp.zeros((batch, width), jnp.float32),
    )


def record(
    book: Bookkeeping,
    tokens: jax.Array,  # int32 [batch, T]
    log_probs: jax.Array,  # float32 [batch, T]
    num: jax.Array,  # int32 [batch]  how many of the T to write (0 for rows already done)
    stopped: jax.Array,  # bool [batch]  the last written token ends the row (EOS, complete state)
    limits: jax.Array,  # int32 [batch]
) -> Bookkeeping:
    """Writes each row's first ``num`` tokens after its recorded ones (all traced).

    The caller cuts ``num`` at the row's first stop and its limit. A row that writes is done
    when ``stopped`` or its limit is reached, and ``complete`` when ``stopped``. ``step`` is
    left to the loop.
    """
    batch, width = book.tokens.shape
    wrote = num > 0
    slots = jnp.arange(tokens.shape[1])[None, :]
    columns = jnp.where(slots < num[:, None], book.lengths[:, None] + slots, width)  # width: dropped
    rows = jnp.arange(batch)[:, None]
    lengths = book.lengths + num
    ended = wrote & stopped
    return book.replace(
        done=book.done | ended | (lengths >= limits),
        complete=book.complete | ended,
        lengths=lengths,
        tokens=book.tokens.at[rows, columns].set(tokens, mode="drop"),
        log_probs=book.log_probs.at[rows, columns].set(log_probs, mode="drop"),
    )


def where_rows(
    keep_new: jax.Array,  # bool [batch]
    new: Any,  # pytree, batch-leading leaves
    old: Any,  # pytree like ``new``
) -> Any:
    """``new`` in the rows of ``keep_new``, ``old`` elsewhere, leaf by leaf (constraint states
    may be pytrees)."""

    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(keep_new.reshape(keep_new.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)
