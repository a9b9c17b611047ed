"""MovieLens-100K from the copy that ships inside the ``recbole`` package (RecBole atomic files).

The data stays where ``pip`` put it: GroupLens' terms do not let us redistribute it, so it is
never copied into this repository. ``recbole`` is found without being imported (importing it
needs torch); ``pip install --no-deps recbole==1.2.1`` is enough.

Example::

    items, inter = load_movielens_100k()
    items.num_items                          # 1682
    items.attributes["movie_title"][0]       # 'Toy Story'
    len(inter), len(set(inter.user_ids))     # (100000, 943)
"""

from __future__ import annotations

import importlib.util
import pathlib

from retrieval.tables import Interactions, ItemTable, read_interactions, read_items

_HINT = "MovieLens-100K ships with RecBole: pip install --no-deps recbole==1.2.1"
_FILES = ("ml-100k.item", "ml-100k.inter")


def movielens_100k_dir() -> pathlib.Path | None:
    """The ``ml-100k`` folder of the installed ``recbole`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("recbole")  # a top-level name: finds the package without running it
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        folder = pathlib.Path(location) / "dataset_example" / "ml-100k"
        if all((folder / name).is_file() for name in _FILES):
            return folder
    return None


def load_movielens_100k(path=None) -> tuple[ItemTable, Interactions]:
    """The items (with ``movie_title``, ``release_year``, ``class``) and the rating events.

    Args:
      path: a folder holding ``ml-100k.item`` and ``ml-100k.inter``; None: RecBole's copy.

    Raises:
      FileNotFoundError: the files are absent (with the install hint).
    """
    folder = movielens_100k_dir() if path is None else pathlib.Path(path)
    if folder is None:
        raise FileNotFoundError(f"recbole is not installed; {_HINT}")
    for name in _FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found; {_HINT}")
    items = read_items(folder / "ml-100k.item")
    return items, read_interactions(folder / "ml-100k.inter", items=items)
