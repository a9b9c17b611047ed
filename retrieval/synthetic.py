"""The built-in dataset: items in latent (sub)categories and users with drifting tastes and habits.

Everything is drawn from ``np.random.default_rng(seed)``, so a seed fixes the dataset.

Items. Each item lies in one of ``num_categories * subcategories_per_category`` subcategories
(every subcategory gets items); inside one, popularity is Zipf-like (weight ``1 / rank``). Its
content embedding is its category's centroid + its subcategory's offset + small noise, and its
title is words of its category and subcategory mixed with a noise word, so embeddings and text
both reveal the hierarchy. Attributes: ``category`` ("c3"), ``subcategory`` ("c3.s1"),
``title`` and ``release_time`` (seconds, all before the first event).

Users. A user holds a taste, a Dirichlet draw over categories that drifts a little at every
event. The first item comes from the taste; after that the next item is, with probability
0.5, in the previous item's subcategory, with probability 0.3 in that subcategory's fixed
successor (the successors form one random cycle through all subcategories), else from the
taste (a category by taste, a subcategory uniformly inside it). Inside a subcategory items are
drawn by popularity; a user never sees an item twice. Timestamps rise strictly per user; the
events come in global time order.

Example::

    items, inter = synthetic_dataset(num_users=3, num_items=40, num_categories=2,
                                     subcategories_per_category=2, events_per_user=(4, 6))
    items.attributes["subcategory"][:3]   # ['c1.s1', 'c1.s1', 'c0.s0']
    items.attributes["title"][0]          # 'zomeku nuvo soda guzilo' 
    items.embeddings.shape                # (40, 32) float32
    len(inter)                            # 14: 4 to 6 events for each of 3 users
    inter.source                          # '<synthetic seed=0>'
"""

from __future__ import annotations

import numpy as np

from retrieval.tables import Interactions, ItemTable

_SAME_SUBCATEGORY = 0.5  # P(next item in the previous item's subcategory)
_SUCCESSOR = 0.3  # P(next item in the successor of the previous item's subcategory)
_TASTE_CONCENTRATION = 0.3  # Dirichlet parameter of each category in a taste (small: a few favourites)
_DRIFT = 0.03  # per event, the taste moves this fraction towards a fresh Dirichlet draw
_ZIPF = 1.0  # popularity of the r-th item (1-based) of a subcategory is r ** -_ZIPF
_SUBCATEGORY_OFFSET = 0.5  # scale of subcategory offsets around a unit-normal category centroid
_EMBEDDING_NOISE = 0.1  # scale of per-item embedding noise
_RETRIES = 20  # draws inside the chosen subcategory before falling back to any unseen item
_WORDS_PER_CATEGORY = 3
_WORDS_PER_SUBCATEGORY = 4
_NOISE_WORDS = 64
_START = 1_600_000_000.0  # seconds: the earliest possible event
_RELEASE_SPAN = 2 * 365 * 86_400.0  # items are released during this span before _START
_FIRST_EVENT_SPAN = 180 * 86_400.0  # users start during this span after _START
_MEAN_GAP = 6 * 3_600.0  # mean seconds between a user's events, on top of a 60 s minimum


def _words(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct pronounceable made-up words of 2 or 3 syllables."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < count:
        parts = rng.integers(len(syllables), size=rng.integers(2, 4))
        words.setdefault("".join(syllables[p] for p in parts), None)
    return list(words)


def _titles(
    rng: np.random.Generator,
    category: np.ndarray,  # int64 [items]
    subcategory: np.ndarray,  # int64 [items]
    num_categories: int,
) -> np.ndarray:  # -> str [items]
    """One category word, two distinct subcategory words and one noise word per item, shuffled."""
    num_items, num_subcategories = category.shape[0], int(subcategory.max()) + 1
    num_words = num_categories * _WORDS_PER_CATEGORY + num_subcategories * _WORDS_PER_SUBCATEGORY + _NOISE_WORDS
    vocab = _words(rng, num_words)
    category_words = np.array(vocab[: num_categories * _WORDS_PER_CATEGORY]).reshape(num_categories, -1)
    rest = vocab[num_categories * _WORDS_PER_CATEGORY :]
    subcategory_words = np.array(rest[: num_subcategories * _WORDS_PER_SUBCATEGORY]).reshape(num_subcategories, -1)
    noise_words = np.array(rest[num_subcategories * _WORDS_PER_SUBCATEGORY :])
    first = rng.integers(_WORDS_PER_SUBCATEGORY, size=num_items)
    second = (first + rng.integers(1, _WORDS_PER_SUBCATEGORY, size=num_items)) % _WORDS_PER_SUBCATEGORY
    words = np.stack(
        [
            category_words[category, rng.integers(_WORDS_PER_CATEGORY, size=num_items)],
            subcategory_words[subcategory, first],
            subcategory_words[subcategory, second],
            noise_words[rng.integers(_NOISE_WORDS, size=num_items)],
        ],
        axis=1,
    )
    words = np.take_along_axis(words, rng.permuted(np.tile(np.arange(4), (num_items, 1)), axis=1), axis=1)
    return np.array([" ".join(row) for row in words.tolist()], dtype=str)


class _PopularityDraw:
    """Draws items inside given subcategories with probability proportional to popularity."""

    def __init__(self, subcategory: np.ndarray, popularity: np.ndarray, num_subcategories: int):
        # subcategory: int64 [items]; popularity: float64 [items]
        self.members = np.argsort(subcategory, kind="stable")  # int64 [items], grouped by subcategory
        # int64 [subcats + 1]: the members of subcategory s are members[starts[s]:starts[s + 1]]
        self.starts = np.searchsorted(subcategory[self.members], np.arange(num_subcategories + 1))
        self.cumulative = np.cumsum(popularity[self.members])  # float64 [items]
        totals = np.concatenate([[0.0], self.cumulative])
        self.before = totals[self.starts[:-1]]  # float64 [subcats], weight of the groups before
        self.mass = totals[self.starts[1:]] - self.before  # float64 [subcats]

    def __call__(self, rng: np.random.Generator, subcategories: np.ndarray) -> np.ndarray:  # int64 [n] -> int64 [n]
        target = self.before[subcategories] + rng.random(subcategories.shape[0]) * self.mass[subcategories]
        position = np.searchsorted(self.cumulative, target, side="right")
        position = np.clip(position, self.starts[subcategories], self.starts[subcategories + 1] - 1)
        return self.members[position]


def _check(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def synthetic_dataset(
    *,
    num_users: int = 2000,
    num_items: int = 1000,
    num_categories: int = 8,
    subcategories_per_category: int = 4,
    events_per_user: tuple[int, int] = (10, 40),
    embedding_dim: int = 32,
    seed: int = 0,
) -> tuple[ItemTable, Interactions]:
    """The items and the events of the built-in dataset (see the module docstring).

    Args:
      events_per_user: (fewest, most) events of a user, both inclusive, uniform in between.

    Returns:
      The item table (ids "i0".."i{num_items-1}", embeddings float32 [num_items, embedding_dim])
      and the events (user ids "u0".., ``source`` "<synthetic seed=S>", ``lines`` 1..events).
    """
    for name, value in (("num_users", num_users), ("num_items", num_items), ("num_categories", num_categories),
                        ("subcategories_per_category", subcategories_per_category), ("embedding_dim", embedding_dim)):
        _check(name, value, 1)
    fewest, most = events_per_user
    _check("events_per_user[0]", fewest, 1)
    _check("events_per_user[1]", most, fewest)
    num_subcategories = num_categories * subcategories_per_category
    if num_items < num_subcategories or num_items <= most:
        raise ValueError(
            f"num_items ({num_items}) must be >= the number of subcategories ({num_subcategories}) and > the most "
            f"events of a user ({most})"
        )
    rng = np.random.default_rng(seed)

    subcategory = rng.permutation(np.arange(num_items) % num_subcategories)  # int64 [items]
    category = subcategory // subcategories_per_category  # int64 [items]
    rank = np.empty(num_items, dtype=np.int64)
    by_subcategory = np.lexsort((rng.random(num_items), subcategory))
    grouped = subcategory[by_subcategory]
    rank[by_subcategory] = np.arange(num_items) - np.searchsorted(grouped, grouped)  # 0-based, random within a group
    popularity = (rank + 1.0) ** -_ZIPF  # float64 [items]

    centroids = rng.normal(size=(num_categories, embedding_dim))
    offsets = _SUBCATEGORY_OFFSET * rng.normal(size=(num_subcategories, embedding_dim))
    noise = _EMBEDDING_NOISE * rng.normal(size=(num_items, embedding_dim))
    embeddings = (centroids[category] + offsets[subcategory] + noise).astype(np.float32)
    titles = _titles(rng, category, subcategory, num_categories)
    release_time = _START - rng.random(num_items) * _RELEASE_SPAN
    items = ItemTable(
        item_ids=np.array([f"i{i}" for i in range(num_items)], dtype=str),
        attributes={
            "category": np.array([f"c{c}" for c in category.tolist()], dtype=str),
            "subcategory": np.array(
                [f"c{c}.s{s % subcategories_per_category}" for c, s in zip(category.tolist(), subcategory.tolist())],
                dtype=str,
            ),
            "title": titles,
            "release_time": release_time,
        },
        embeddings=embeddings,
    )

    cycle = rng.permutation(num_subcategories)
    successor = np.empty(num_subcategories, dtype=np.int64)
    successor[cycle] = np.roll(cycle, -1)
    draw = _PopularityDraw(subcategory, popularity, num_subcategories)
    alpha = np.full(num_categories, _TASTE_CONCENTRATION)
    taste = rng.dirichlet(alpha, size=num_users)  # float64 [users, categories]
    lengths = rng.integers(fewest, most + 1, size=num_users)  # int64 [users]
    chosen = np.empty((num_users, most), dtype=np.int64)  # item of each user's t-th event
    for t in range(most):
        if t:
            taste = (1.0 - _DRIFT) * taste + _DRIFT * rng.dirichlet(alpha, size=num_users)
        liked = (rng.random((num_users, 1)) > np.cumsum(taste, axis=1)).sum(axis=1)
        by_taste = np.minimum(liked, num_categories - 1) * subcategories_per_category + rng.integers(
            subcategories_per_category, size=num_users
        )
        if t == 0:
            target = by_taste
        else:
            previous = subcategory[chosen[:, t - 1]]
            habit = rng.random(num_users)
            target = np.where(
                habit < _SAME_SUBCATEGORY,
                previous,
                np.where(habit < _SAME_SUBCATEGORY + _SUCCESSOR, successor[previous], by_taste),
            )
        clash, attempt = np.ones(num_users, dtype=bool), 0
        while clash.any():  # a fallback draw clashes with probability < most / num_items < 1
            users = np.flatnonzero(clash)
            if attempt < _RETRIES:
                chosen[users, t] = draw(rng, target[users])
            else:
                chosen[users, t] = rng.integers(num_items, size=users.size)
            clash[users] = (chosen[users, :t] == chosen[users, t : t + 1]).any(axis=1)
            attempt += 1

    gaps = 60.0 + rng.exponential(_MEAN_GAP, size=(num_users, most))
    times = _START + rng.random((num_users, 1)) * _FIRST_EVENT_SPAN + np.cumsum(gaps, axis=1)
    present = np.arange(most)[None, :] < lengths[:, None]
    user_of = np.broadcast_to(np.arange(num_users)[:, None], present.shape)[present]
    order = np.argsort(times[present], kind="stable")
    user_names = np.array([f"u{u}" for u in range(num_users)], dtype=str)
    inter = Interactions(
        user_ids=user_names[user_of[order]],
        item_ids=items.item_ids[chosen[present][order]],
        timestamps=times[present][order],
        source=f"<synthetic seed={seed}>",
        lines=np.arange(1, order.size + 1, dtype=np.int64),
    )
    return items, inter
