"""Saving and restoring parameter pytrees with Orbax, with readable errors."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def save_params(path: str | os.PathLike, params: Any, *, overwrite: bool = False) -> None:
    """Writes ``params`` (a pytree of arrays) as an Orbax checkpoint directory at ``path``.

    Raises FileExistsError if ``path`` exists, unless ``overwrite`` is True.
    """
    path = _absolute(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"save_params: {path} already exists (pass overwrite=True to replace it)")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params, force=overwrite)
    checkpointer.wait_until_finished()


def _describe(tree: Any) -> dict[str, tuple[int, ...]]:
    """Maps each leaf's key path to its shape."""
    return {jax.tree_util.keystr(key): tuple(leaf.shape) for key, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_params(path: str | os.PathLike, like: Any = None) -> Any:
    """Reads the parameters saved at ``path``.

    With ``like`` (a pytree of arrays or ``jax.ShapeDtypeStruct``), the checkpoint must have
    the same tree structure and leaf shapes; leaves are restored with ``like``'s dtypes and
    shardings. Raises FileNotFoundError for a missing checkpoint and ValueError (naming the
    path and the differing leaves) for a different structure.
    """
    path = _absolute(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"restore_params: no checkpoint directory at {path}")
    checkpointer = ocp.StandardCheckpointer()
    try:
        item = checkpointer.metadata(path).item_metadata
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise FileNotFoundError(f"restore_params: {path} is not a readable Orbax checkpoint ({err})") from err
    if item is None:
        raise FileNotFoundError(f"restore_params: {path} holds no Orbax checkpoint (no parameter metadata)")
    stored = item.tree
    if like is not None:
        expected, found = _describe(like), _describe(stored)
        if expected != found:
            missing = sorted(set(expected) - set(found))
            unexpected = sorted(set(found) - set(expected))
            reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
            raise ValueError(
                f"restore_params: the checkpoint at {path} does not match the expected parameters: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"shape differs {[(k, found[k], expected[k]) for k in reshaped[:5]]} (stored, expected)"
            )
        target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=_sharding(leaf)), like)
        return checkpointer.restore(path, target)
    return checkpointer.restore(path)


def _sharding(leaf: Any) -> jax.sharding.Sharding:
    """The leaf's sharding, or the first local device for host arrays and bare shapes."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return sharding
