"""Semantic IDs (TIGER, Rajput et al. 2023): residual k-means codes plus a collision code.

Each item's content embedding is quantized level by level: level 0 runs k-means on the
embeddings, level ``l + 1`` runs k-means on what level ``l`` left over (each item minus the
centroid of its code). An item's codes are its cluster at every level, coarse to fine, so
items that share a prefix are alike. Items whose codes coincide get one more code, their rank
among those items (by item index), which makes every ID unique.

Example (two tight pairs of points, far apart; one level of two codes)::

    embeddings = [[0, 0], [0, 0.1], [9, 9], [9, 9.1], [9, 9]]
    ids = build_semantic_ids(embeddings, levels=1, codebook_size=2, seed=0)
    ids.codes        # [[a, 0], [a, 1], [b, 0], [b, 1], [b, 2]] with {a, b} = {0, 1}
    ids.level_sizes  # (2, 3): two k-means codes, then ranks 0..2 in the largest group
    ids.stats        # usage (1.0,), distinct_prefixes 2, collision_rate 1.0, max_collisions 3

:func:`kmeans` is the jit-compiled JAX core (k-means++ seeding, Lloyd iterations);
:func:`rq_kmeans` stacks it into residual levels; :func:`add_collision_level` and
:func:`code_stats` are NumPy passes over the codes; :func:`build_semantic_ids` runs all three.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DEFAULT_ITERS = 25
"""Lloyd iterations at most per level (each level stops earlier once no assignment changes)."""

_BLOCK_ELEMENTS = 1 << 22
"""Squared distances held at once while assigning points: rows per block x num_clusters."""


@struct.dataclass
class _Lloyd:
    """Loop state of the Lloyd iterations; ``assignment`` is always nearest to ``centroids``."""

    centroids: jax.Array  # float32 [num_clusters, dim]
    assignment: jax.Array  # int32 [n]
    dist2: jax.Array  # float32 [n], squared distance of each point to its centroid
    iteration: jax.Array  # int32 []
    changed: jax.Array  # bool [], some assignment changed in the last iteration


def _nearest(
    x: jax.Array,  # float32 [n, dim]
    centroids: jax.Array,  # float32 [num_clusters, dim]
) -> tuple[jax.Array, jax.Array]:  # int32 [n], float32 [n]
    """Each point's nearest centroid (ties: the lowest index) and squared distance to it.

    Rows go through in blocks of ``_BLOCK_ELEMENTS // num_clusters``, so no more than one
    block of distances [block, num_clusters] is ever held (never [n, num_clusters, dim]).
    """
    num_clusters = centroids.shape[0]
    norms = jnp.sum(centroids * centroids, axis=1)  # float32 [num_clusters]

    def one_row(point: jax.Array) -> tuple[jax.Array, jax.Array]:  # float32 [dim]
        partial = norms - 2.0 * jnp.dot(centroids, point, precision=jax.lax.Precision.HIGHEST)
        best = jnp.argmin(partial).astype(jnp.int32)
        return best, jnp.maximum(partial[best] + jnp.dot(point, point), 0.0)

    block = max(1, min(x.shape[0], _BLOCK_ELEMENTS // num_clusters))
    return jax.lax.map(one_row, x, batch_size=block)


def _kmeans_plus_plus(
    x: jax.Array,  # float32 [n, dim]
    num_clusters: int,
    key: jax.Array,  # PRNG key
) -> jax.Array:  # float32 [num_clusters, dim]
    """k-means++ seeding: each next centre is a point drawn with probability ~ D(point)^2.

    D is the distance to the nearest centre chosen so far, so a chosen point is never drawn
    again. Once every point sits on a centre (fewer distinct points than centres), the
    remaining centres are copies of the first one; ties go to the lowest index, so a copy is
    never any point's nearest centre and its code stays unused.
    """
    first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, x.shape[0])
    centroids = jnp.broadcast_to(x[first], (num_clusters, x.shape[1]))
    dist2 = jnp.sum(jnp.square(x - x[first]), axis=1)  # float32 [n]

    def add_centre(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        centroids, dist2 = carry
        cumulative = jnp.cumsum(dist2)
        total = cumulative[-1]
        target = jax.random.uniform(jax.random.fold_in(key, i)) * total
        # The first point whose cumulative weight passes the target has weight > 0; clamping to
        # the last such point guards against the target rounding up to the total.
        last_positive = jnp.searchsorted(cumulative, total, side="left")
        drawn = jnp.minimum(jnp.searchsorted(cumulative, target, side="right"), last_positive)
        chosen = jnp.where(total > 0, drawn, first)
        centre = x[chosen]
        return centroids.at[i].set(centre), jnp.minimum(dist2, jnp.sum(jnp.square(x - centre), axis=1))

    centroids, _ = jax.lax.fori_loop(1, num_clusters, add_centre, (centroids, dist2))
    return centroids


def _update_centroids(
    x: jax.Array,  # float32 [n, dim]
    state: _Lloyd,
) -> jax.Array:  # float32 [num_clusters, dim]
    """The mean of each cluster; an empty cluster is re-seeded at a far point (see kmeans)."""
    num_clusters = state.centroids.shape[0]
    sums = jax.ops.segment_sum(x, state.assignment, num_clusters)  # float32 [num_clusters, dim]
    counts = jnp.bincount(state.assignment, length=num_clusters)  # int32 [num_clusters]
    empty = counts == 0
    means = jnp.where(empty[:, None], state.centroids, sums / jnp.maximum(counts, 1)[:, None].astype(x.dtype))

    def reseed(means: jax.Array) -> jax.Array:  # float32 [num_clusters, dim]
        far = min(num_clusters, x.shape[0])
        far_dist2, far_points = jax.lax.top_k(state.dist2, far)  # farthest first
        rank = jnp.cumsum(empty) - 1  # int32 [num_clusters], rank among the empty clusters
        slot = jnp.minimum(rank, far - 1)
        take = empty & (rank < far) & (far_dist2[slot] > 0)
        return jnp.where(take[:, None], x[far_points[slot]], means)

    return jax.lax.cond(empty.any(), reseed, lambda means: means, means)


@functools.partial(jax.jit, static_argnames=("num_clusters", "iters"))
def kmeans(
    x: jax.Array,  # float [n, dim]
    num_clusters: int,
    key: jax.Array,  # PRNG key
    *,
    iters: int = DEFAULT_ITERS,
) -> tuple[jax.Array, jax.Array]:  # float32 [num_clusters, dim], int32 [n]
    """k-means with k-means++ seeding and Lloyd iterations, in one jit-compiled program.

    Seeding draws each next centre with probability proportional to its squared distance to
    the nearest centre so far (one ``fori_loop`` step per centre). Each Lloyd iteration moves
    every centroid to the mean of its points and reassigns the points; the loop stops after
    ``iters`` iterations or as soon as no assignment changes. Deterministic for a given key.

    Empty clusters: the ``r``-th empty cluster (by index) is re-seeded at the ``r``-th farthest
    point from its centroid, if that point is off its centroid; otherwise it stays in place.
    ``n < num_clusters`` is allowed: every distinct point becomes a centre and the remaining
    codes are never used (their centroids copy the first centre; ties go to the lowest index).

    Static (a new value recompiles): ``num_clusters``, ``iters`` and the shape of ``x``.
    Traced: the values of ``x`` and ``key``. The function can be called inside another jit.

    Args:
      x: float [n, dim], n >= 1, finite (computed in float32).
      num_clusters: k >= 1.
      key: a PRNG key (``jax.random.key(seed)``).
      iters: most Lloyd iterations, >= 0 (0: the k-means++ centres).

    Returns:
      ``(centroids, assignment)``: float32 [num_clusters, dim] and int32 [n], each point's
      nearest centroid (ties: the lowest index).

    Raises:
      ValueError: ``x`` not 2-D or without rows, ``num_clusters < 1``, ``iters < 0``.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"kmeans needs a 2-D x [n >= 1, dim], got shape {x.shape}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    x = x.astype(jnp.float32)
    centroids = _kmeans_plus_plus(x, num_clusters, key)
    assignment, dist2 = _nearest(x, centroids)
    start = _Lloyd(centroids, assignment, dist2, jnp.zeros((), jnp.int32), jnp.ones((), bool))

    def step(state: _Lloyd) -> _Lloyd:
        centroids = _update_centroids(x, state)
        assignment, dist2 = _nearest(x, centroids)
        changed = jnp.any(assignment != state.assignment)
        return _Lloyd(centroids, assignment, dist2, state.iteration + 1, changed)

    final = jax.lax.while_loop(lambda s: s.changed & (s.iteration < iters), step, start)
    return final.centroids, final.assignment


@dataclasses.dataclass(frozen=True)
class ResidualCodes:
    """Residual k-means codes of a set of items."""

    codes: np.ndarray  # int32 [items, levels], codes[i, l] in [0, codebook_size)
    codebooks: np.ndarray  # float32 [levels, codebook_size, dim], level l's centroids


def check_int_at_least(name: str, value, minimum: int) -> int:
    """``value`` as a Python int, or a ValueError when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_embeddings(embeddings) -> np.ndarray:  # -> float32 [items, dim]
    array = np.asarray(embeddings)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"embeddings must be a numeric array, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"embeddings must be 2-D [items >= 1, dim >= 1], got shape {array.shape}")
    array = array.astype(np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise ValueError(f"embeddings must be finite; row {int(np.flatnonzero(~finite)[0])} is not")
    return array


def rq_kmeans(
    embeddings,
    *,
    levels: int,
    codebook_size: int,
    seed: int,
    iters: int = DEFAULT_ITERS,
) -> ResidualCodes:
    """Residual k-means: level 0 clusters the embeddings, level l + 1 the residuals of level l.

    The residual of an item after level ``l`` is its input to level ``l`` minus the centroid of
    its level-``l`` code. Level ``l`` runs :func:`kmeans` with key ``fold_in(key(seed), l)``, so
    the result is a function of the inputs and ``seed``. Every level has the same shapes, so
    one compiled program serves all of them (a new item count, dim, ``codebook_size`` or
    ``iters`` compiles a new one).

    Args:
      embeddings: float array-like [items, dim], finite, items >= 1.
      levels: number of codes per item, >= 1.
      codebook_size: clusters per level, >= 1 (more than the items leaves codes unused).
      seed: integer seed, >= 0.
      iters: most Lloyd iterations per level, >= 0.

    Returns:
      a :class:`ResidualCodes` (NumPy arrays).

    Raises:
      ValueError: embeddings not a 2-D numeric array with at least one row and column, a
        non-finite value (naming the row), bad ``levels``, ``codebook_size``, ``iters`` or ``seed``.
    """
    x = _check_embeddings(embeddings)
    levels = check_int_at_least("levels", levels, 1)
    codebook_size = check_int_at_least("codebook_size", codebook_size, 1)
    iters = check_int_at_least("iters", iters, 0)
    seed = check_int_at_least("seed", seed, 0)
    key = jax.random.key(seed)
    residual = jnp.asarray(x)
    codes, codebooks = [], []
    for level in range(levels):
        centroids, assignment = kmeans(residual, codebook_size, jax.random.fold_in(key, level), iters=iters)
        residual = residual - centroids[assignment]
        codes.append(assignment)
        codebooks.append(centroids)
    return ResidualCodes(
        codes=np.asarray(jnp.stack(codes, axis=1), dtype=np.int32),
        codebooks=np.asarray(jnp.stack(codebooks), dtype=np.float32),
    )


def _check_codes(codes) -> np.ndarray:  # -> int64 [items, levels]
    array = np.asarray(codes)
    if array.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"codes must be 2-D [items >= 1, levels >= 1], got shape {array.shape}")
    return array.astype(np.int64)


def _prefix_groups(
    codes: np.ndarray,  # int64 [items, levels]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # int64 [items], int64 [items], int64 [groups]
    """Items grouped by identical rows: (order, rank, group sizes).

    ``order`` sorts the rows lexicographically, ties by item index; ``rank[i]`` is item ``i``'s
    position within its group; group sizes are in sorted order.
    """
    items, levels = codes.shape
    index = np.arange(items)
    order = np.lexsort((index,) + tuple(codes[:, level] for level in reversed(range(levels))))
    ordered = codes[order]
    starts = np.empty(items, dtype=bool)
    starts[0] = True
    np.any(ordered[1:] != ordered[:-1], axis=1, out=starts[1:])
    start_rows = np.flatnonzero(starts)
    rank = np.empty(items, dtype=np.int64)
    rank[order] = index - start_rows[np.cumsum(starts) - 1]
    return order, rank, np.diff(np.append(start_rows, items))


def add_collision_level(codes) -> np.ndarray:
    """Appends each item's rank among the items with the same codes, so every row is unique.

    Items with equal rows are ranked by item index, from 0. Vectorized: one ``lexsort``.

    Example::

        add_collision_level([[1, 2], [0, 5], [1, 2], [1, 2]])
        # [[1, 2, 0], [0, 5, 0], [1, 2, 1], [1, 2, 2]]

    Args:
      codes: int array-like [items, levels], items >= 1, levels >= 1.

    Returns:
      int32 [items, levels + 1], rows unique; the last column lies in ``[0, largest group)``.

    Raises:
      ValueError: not a 2-D integer array with at least one row and column.
    """
    array = _check_codes(codes)
    _, rank, _ = _prefix_groups(array)
    return np.concatenate([array, rank[:, None]], axis=1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CodeStats:
    """How well a set of codes [items, levels] (no collision level) uses its codebooks."""

    usage: tuple[float, ...]  # per level: distinct codes used / codebook_size
    perplexity: tuple[float, ...]  # per level: exp(entropy of the code frequencies), <= codebook_size
    distinct_prefixes: int  # distinct rows of codes
    collision_rate: float  # fraction of items whose row is shared with another item
    max_collisions: int  # largest group of equal rows: the collision level's vocabulary size


def code_stats(codes, codebook_size: int) -> CodeStats:
    """Codebook usage and collisions of codes without the collision level.

    Example::

        code_stats([[1, 2], [0, 5], [1, 2], [1, 3]], codebook_size=8)
        # usage (2/8, 3/8), distinct_prefixes 3, collision_rate 2/4, max_collisions 2

    Args:
      codes: int array-like [items, levels], values in ``[0, codebook_size)``.
      codebook_size: codes per level, >= 1.

    Returns:
      a :class:`CodeStats`.

    Raises:
      ValueError: not a 2-D integer array with at least one row and column, a code outside
        ``[0, codebook_size)`` (naming the item), bad ``codebook_size``.
    """
    array = _check_codes(codes)
    codebook_size = check_int_at_least("codebook_size", codebook_size, 1)
    outside = ((array < 0) | (array >= codebook_size)).any(axis=1)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise ValueError(f"codes of item {bad} ({array[bad].tolist()}) lie outside [0, {codebook_size})")
    _, _, sizes = _prefix_groups(array)
    usage, perplexity = [], []
    for column in array.T:
        counts = np.bincount(column, minlength=codebook_size)
        p = counts[counts > 0] / array.shape[0]
        usage.append(p.shape[0] / codebook_size)
        perplexity.append(float(np.exp(-np.sum(p * np.log(p)))))
    return CodeStats(
        usage=tuple(usage),
        perplexity=tuple(perplexity),
        distinct_prefixes=int(sizes.shape[0]),
        collision_rate=float(sizes[sizes > 1].sum() / array.shape[0]),
        max_collisions=int(sizes.max()),
    )


@dataclasses.dataclass(frozen=True)
class SemanticIds:
    """Unique item IDs: residual k-means codes, then the collision code."""

    codes: np.ndarray  # int32 [items, levels + 1], rows unique
    level_sizes: tuple[int, ...]  # codebook_size per k-means level, then max_collisions
    stats: CodeStats  # of codes[:, :levels]


def build_semantic_ids(
    embeddings,
    *,
    levels: int = 3,
    codebook_size: int = 256,
    seed: int = 0,
    iters: int = DEFAULT_ITERS,
) -> SemanticIds:
    """Semantic IDs of items: :func:`rq_kmeans`, :func:`add_collision_level`, :func:`code_stats`.

    TIGER uses ``levels=3, codebook_size=256``. A small catalog wants a smaller codebook (for
    1,000 items, 16 to 32 codes per level) so that codes are shared and prefixes mean
    something. Token ``t`` of level ``l`` lies in ``[0, level_sizes[l])``.

    Args:
      embeddings: float array-like [items, dim], finite, items >= 1.
      levels: k-means levels, >= 1 (the IDs have ``levels + 1`` tokens).
      codebook_size: clusters per k-means level, >= 1.
      seed: integer seed, >= 0; the IDs are a function of the inputs and the seed.
      iters: most Lloyd iterations per level, >= 0.

    Returns:
      a :class:`SemanticIds`.

    Raises:
      ValueError: as :func:`rq_kmeans`.
    """
    residual = rq_kmeans(embeddings, levels=levels, codebook_size=codebook_size, seed=seed, iters=iters)
    stats = code_stats(residual.codes, codebook_size)
    return SemanticIds(
        codes=add_collision_level(residual.codes),
        level_sizes=(int(codebook_size),) * int(levels) + (stats.max_collisions,),
        stats=stats,
    )
