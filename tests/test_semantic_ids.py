"""Semantic IDs and item embeddings: worked examples, recovered clusters, collisions, bad input.

Few compiles: the k-means calls on the blobs share one shape ([256, 8] points, 8 clusters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval import semantic_ids
from retrieval.embeddings import content_embeddings, cooccurrence_embeddings
from retrieval.semantic_ids import CodeStats, add_collision_level, build_semantic_ids, code_stats, kmeans, rq_kmeans

BLOBS, SUB_BLOBS, PER_SUB_BLOB, DIM = 8, 2, 16, 8


def _blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 [256, 8] points, int [256] blob labels, int [256] sub-blob labels (0 or 1).

    Blob centres are 100 apart; in every blob the two sub-blobs sit at -5 and +5 along the last
    axis; the noise has standard deviation 0.1.
    """
    rng = np.random.default_rng(0)
    centres = 100.0 * np.eye(BLOBS, DIM)
    offsets = np.array([[-5.0], [5.0]]) * np.eye(1, DIM, DIM - 1)  # [2, DIM]
    blob = np.repeat(np.arange(BLOBS), SUB_BLOBS * PER_SUB_BLOB)
    sub = np.tile(np.repeat(np.arange(SUB_BLOBS), PER_SUB_BLOB), BLOBS)
    points = centres[blob] + offsets[sub] + 0.1 * rng.standard_normal((blob.shape[0], DIM))
    return points.astype(np.float32), blob, sub


def _is_relabelling(labels: np.ndarray, codes: np.ndarray) -> bool:
    """True when the contingency table of the two labelings has one nonzero per row and column."""
    table = np.zeros((labels.max() + 1, codes.max() + 1), dtype=np.int64)
    np.add.at(table, (labels, codes), 1)
    nonzero = table > 0
    return table.shape[0] == table.shape[1] and (nonzero.sum(axis=0) == 1).all() and (nonzero.sum(axis=1) == 1).all()


def test_worked_example():
    ids = build_semantic_ids([[0, 0], [0, 0.1], [9, 9], [9, 9.1], [9, 9]], levels=1, codebook_size=2, seed=0)
    a, b = ids.codes[0, 0], ids.codes[2, 0]
    assert {int(a), int(b)} == {0, 1}
    np.testing.assert_array_equal(ids.codes, [[a, 0], [a, 1], [b, 0], [b, 1], [b, 2]])
    assert ids.codes.dtype == np.int32
    assert ids.level_sizes == (2, 3)
    stats = ids.stats
    assert (stats.usage, stats.distinct_prefixes, stats.collision_rate, stats.max_collisions) == ((1.0,), 2, 1.0, 3)


def test_rq_kmeans_recovers_blobs_and_sub_blobs():
    points, blob, sub = _blobs()
    result = rq_kmeans(points, levels=2, codebook_size=BLOBS, seed=0)
    assert result.codes.shape == (256, 2) and result.codes.dtype == np.int32
    assert result.codebooks.shape == (2, BLOBS, DIM) and result.codebooks.dtype == np.float32
    assert _is_relabelling(blob, result.codes[:, 0])
    # Level 1 sees only what level 0 left, the -5/+5 offsets: no level-1 code mixes the sides.
    assert not set(result.codes[sub == 0, 1].tolist()) & set(result.codes[sub == 1, 1].tolist())
    rebuilt = result.codebooks[0][result.codes[:, 0]] + result.codebooks[1][result.codes[:, 1]]
    assert np.abs(rebuilt - points).max() < 1.0


def test_semantic_ids_unique_and_deterministic():
    points, _, _ = _blobs()
    first = build_semantic_ids(points, levels=2, codebook_size=BLOBS, seed=3)
    again = build_semantic_ids(points, levels=2, codebook_size=BLOBS, seed=3)
    other = build_semantic_ids(points, levels=2, codebook_size=BLOBS, seed=4)
    assert first.codes.shape == (256, 3) and first.codes.dtype == np.int32
    assert np.unique(first.codes, axis=0).shape[0] == 256
    np.testing.assert_array_equal(first.codes, again.codes)
    assert (first.stats, first.level_sizes) == (again.stats, again.level_sizes)
    assert not np.array_equal(first.codes, other.codes)
    assert first.level_sizes == (BLOBS, BLOBS, first.stats.max_collisions)
    assert first.codes[:, 2].max() == first.stats.max_collisions - 1
    # At most 8 x 8 prefixes for 256 items: by pigeonhole some prefix holds 4 or more.
    assert first.stats.distinct_prefixes <= 64 and first.stats.max_collisions >= 4


def test_kmeans_plus_plus_centres_are_distinct_points():
    points, blob, _ = _blobs()
    seeding = jax.jit(semantic_ids._kmeans_plus_plus, static_argnums=1)
    centroids = np.asarray(seeding(jnp.asarray(points), BLOBS, jax.random.key(7)))
    # Every centre is one of the points, and no point twice; D^2 sampling finds every far blob.
    chosen = np.flatnonzero((points[:, None, :] == centroids[None, :, :]).all(axis=2).any(axis=1))
    assert chosen.shape[0] == BLOBS and np.unique(centroids, axis=0).shape[0] == BLOBS
    assert sorted(blob[chosen].tolist()) == list(range(BLOBS))


def test_kmeans_fewer_points_than_clusters():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    centroids, assignment = kmeans(jnp.asarray(points), 5, jax.random.key(0))
    centroids, assignment = np.asarray(centroids), np.asarray(assignment)
    np.testing.assert_array_equal(centroids[assignment], points)  # each point is its own centre
    assert np.unique(assignment).shape[0] == 3
    np.testing.assert_array_equal(centroids[3:], centroids[[0, 0]])  # unused codes copy the first


def test_nearest_in_blocks_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((23, 3)).astype(np.float32)
    centroids = rng.standard_normal((4, 3)).astype(np.float32)
    monkeypatch.setattr(semantic_ids, "_BLOCK_ELEMENTS", 4 * 5)  # blocks of 5 rows, 3 left over
    assert "length=4" in str(jax.make_jaxpr(semantic_ids._nearest)(x, centroids))  # a scan over 4 blocks
    assignment, dist2 = jax.jit(semantic_ids._nearest)(jnp.asarray(x), jnp.asarray(centroids))
    brute = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(assignment, brute.argmin(axis=1))
    np.testing.assert_allclose(dist2, brute.min(axis=1), rtol=1e-5, atol=1e-5)


def test_add_collision_level_example():
    codes = [[1, 2], [0, 5], [1, 2], [1, 2], [0, 5], [3, 3]]
    np.testing.assert_array_equal(
        add_collision_level(codes),
        [[1, 2, 0], [0, 5, 0], [1, 2, 1], [1, 2, 2], [0, 5, 1], [3, 3, 0]],
    )
    assert add_collision_level(np.array(codes, dtype=np.uint8)).dtype == np.int32


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=30))
def test_add_collision_level_properties(rows):
    codes = np.array(rows)
    out = add_collision_level(codes)
    np.testing.assert_array_equal(out[:, :2], codes)
    assert np.unique(out, axis=0).shape[0] == len(rows)
    for i, row in enumerate(rows):  # the rank counts the earlier items with the same codes
        assert out[i, 2] == rows[:i].count(row)


def test_code_stats_example():
    codes = [[1, 2], [0, 5], [1, 2], [1, 3], [1, 2]]
    stats = code_stats(codes, codebook_size=8)
    assert stats.usage == (2 / 8, 3 / 8)
    assert stats.distinct_prefixes == 3
    assert stats.collision_rate == 3 / 5
    assert stats.max_collisions == 3
    # Level 0: frequencies 4/5, 1/5. Level 1: 3/5, 1/5, 1/5.
    np.testing.assert_allclose(stats.perplexity[0], np.exp(-(0.8 * np.log(0.8) + 0.2 * np.log(0.2))))
    np.testing.assert_allclose(stats.perplexity[1], np.exp(-(0.6 * np.log(0.6) + 0.4 * np.log(0.2))))
    assert code_stats([[0], [1]], 2) == CodeStats((1.0,), (2.0,), 2, 0.0, 1)


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "message"),
    [
        (np.zeros(4), {}, "2-D"),
        (np.zeros((0, 3)), {}, "2-D"),
        (np.zeros((3, 0)), {}, "2-D"),
        (np.array([["a"]]), {}, "numeric"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]]), {}, "row 1"),
        (np.zeros((3, 2)), {"levels": 0}, "levels"),
        (np.zeros((3, 2)), {"codebook_size": 0}, "codebook_size"),
        (np.zeros((3, 2)), {"iters": -1}, "iters"),
        (np.zeros((3, 2)), {"seed": 1.5}, "seed"),
    ],
)
def test_rq_kmeans_rejects_bad_input(embeddings, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rq_kmeans(embeddings, **{"levels": 2, "codebook_size": 2, "seed": 0, **kwargs})


def test_codes_reject_bad_input():
    with pytest.raises(ValueError, match="integer"):
        add_collision_level([[0.5, 1.0]])
    with pytest.raises(ValueError, match="2-D"):
        add_collision_level([1, 2, 3])
    with pytest.raises(ValueError, match="item 1"):
        code_stats([[0, 1], [0, 4]], codebook_size=4)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(jnp.zeros(5), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(jnp.zeros((5, 2)), 0, jax.random.key(0))


def test_content_embeddings_worked_example():
    emb = content_embeddings(
        categorical={"genres": np.array(["Animation Comedy", "Animation Comedy", "Horror", "Horror Thriller"])},
        text={"title": np.array(["Toy Story", "Toy Story 2", "Scream", "Scream 2"])},
        numeric={"minutes": np.array([81.0, 92.0, 111.0, np.nan])},
        dim=2,
    )
    assert emb.shape == (4, 2) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(
        np.round(emb @ emb.T, 1),
        np.array([[1, 1, -0.9, -0.8], [1, 1, -0.9, -0.7], [-0.9, -0.9, 1, 0.4], [-0.8, -0.7, 0.4, 1]], np.float32),
    )


def _catalog() -> tuple[dict, dict, dict]:
    """Twelve items in three themes (genres, title words); item 11 has no metadata in common."""
    genres = ["Sci-Fi Action"] * 4 + ["Romance Drama"] * 4 + ["Horror"] * 3 + ["Documentary"]
    titles = [
        "star galaxy war", "galaxy star quest", "star war return", "galaxy quest return",
        "love letter paris", "paris love story", "letter of love", "love story paris",
        "night scream house", "scream house dark", "dark night house",
        "ocean whales",
    ]  # fmt: skip
    price = [10.0, 11.0, 9.0, 10.5, 5.0, 6.0, 5.5, 4.5, 8.0, 7.0, 7.5, 20.0]
    return {"genres": np.array(genres)}, {"title": np.array(titles)}, {"price": np.array(price)}


def test_content_embeddings_similar_items_are_closer_and_deterministic():
    categorical, text, numeric = _catalog()
    emb = content_embeddings(categorical, text, numeric, dim=8, seed=0)
    assert emb.shape == (12, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    theme = np.array([0] * 4 + [1] * 4 + [2] * 3 + [3])
    sim = emb @ emb.T
    for i in range(11):
        same = sim[i, (theme == theme[i]) & (np.arange(12) != i)]
        assert same.min() > sim[i, theme != theme[i]].max(), i
    np.testing.assert_array_equal(emb, content_embeddings(categorical, text, numeric, dim=8, seed=0))
    # A shared word alone brings two items together.
    words = content_embeddings({}, {"t": np.array(["red apple", "red car", "blue sky", "green grass"])}, {}, dim=3)
    assert words[0] @ words[1] > max(words[0] @ words[2], words[0] @ words[3]) + 0.3
    # One feature at a time works too, and a dim past the rank pads with zero columns.
    only_genres = content_embeddings(categorical, {}, {}, dim=8)
    np.testing.assert_array_equal(only_genres[:, 3:], 0.0)
    np.testing.assert_allclose(only_genres[0] @ only_genres[1], 1.0, rtol=1e-6)


def test_content_embeddings_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        content_embeddings({}, {}, {})
    with pytest.raises(ValueError, match="'b' has 2 items"):
        content_embeddings({"a": np.array(["x", "y", "z"])}, {"b": np.array(["x", "y"])}, {})
    with pytest.raises(ValueError, match="infinite"):
        content_embeddings({}, {}, {"n": np.array([1.0, np.inf])})
    with pytest.raises(ValueError, match="numbers"):
        content_embeddings({}, {}, {"n": np.array(["1", "2"])})
    with pytest.raises(ValueError, match="dim"):
        content_embeddings({"a": np.array(["x", "y"])}, {}, {}, dim=0)


def test_cooccurrence_embeddings():
    # Users 0-2 mix items 0, 1, 2; user 3 has items 3 and 4; item 5 is only ever alone;
    # item 6 never appears.
    sequences = [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1], [3, 4, 3, 4], [5], [5, 5]]
    offsets = np.cumsum([0] + [len(s) for s in sequences])
    items = np.array([i for s in sequences for i in s], dtype=np.int32)
    emb = cooccurrence_embeddings(offsets, items, num_items=7, window=2, dim=4)
    assert emb.shape == (7, 4) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[5:], 0.0)
    sim = emb @ emb.T
    together = [(0, 1), (0, 2), (1, 2), (3, 4)]
    apart = [(a, b) for a in range(3) for b in (3, 4)]
    assert min(sim[p] for p in together) > 0.9
    assert max(abs(sim[p]) for p in apart) < 1e-6
    np.testing.assert_array_equal(emb, cooccurrence_embeddings(offsets, items, num_items=7, window=2, dim=4))


def test_cooccurrence_embeddings_rejects_bad_input():
    with pytest.raises(ValueError, match="run from 0"):
        cooccurrence_embeddings(np.array([0, 2]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="decrease"):
        cooccurrence_embeddings(np.array([0, 2, 1, 3]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match=r"sequence_items\[2\] = 3"):
        cooccurrence_embeddings(np.array([0, 3]), np.array([0, 1, 3]), 3)
    with pytest.raises(ValueError, match="window"):
        cooccurrence_embeddings(np.array([0, 3]), np.array([0, 1, 2]), 3, window=0)
