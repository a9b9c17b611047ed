"""Training recipes per built-in data set: sizes that train to a useful model on a 2-core CPU.

The figures in the README were produced with these recipes (``scripts/retrieve.py``).
"""

from __future__ import annotations

import dataclasses

from retrieval.training import TrainSettings

RECIPES = {
    # ~1 minute on 2 CPU cores: the README's first command.
    "synthetic": TrainSettings(model_size="tiny", steps=600, batch=64, eval_every=200),
    "movielens-100k": TrainSettings(model_size="tiny", steps=2000, batch=64, eval_every=250),
}


def training_recipe(dataset: str, *, steps: int | None = None, model_size: str | None = None) -> TrainSettings:
    """The recipe of ``dataset`` with optional overrides."""
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for {dataset!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[dataset]
    if steps is not None:
        recipe = dataclasses.replace(recipe, steps=steps, eval_every=min(recipe.eval_every, steps))
    if model_size is not None:
        recipe = dataclasses.replace(recipe, model_size=model_size)
    return recipe
