"""Saving and restoring parameter pytrees with Orbax, with readable errors.

Errors from Orbax, TensorStore or the file system are caught here and re-raised as one
:class:`CheckpointError` that names the checkpoint directory (the original chained as its
``__cause__``). Saving uses Orbax's synchronous checkpointer: the asynchronous one leaves
non-daemon threads waiting about 300 s for signals after a failed save, so the process
could not exit (issue 11); a synchronous save has nothing left running when it raises.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint could not be written or read (corrupt, truncated, not a checkpoint, or an
    I/O failure); the message names the path, the original error is chained."""


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _summary(err: BaseException) -> str:
    """The first line of a (possibly very long, TensorStore) error message, with its type, and
    the parameter it names when there is one."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    leaf = re.search(r'"([^"]+)/\.zarray"', str(err))
    where = f"parameter {leaf.group(1)}: " if leaf else ""
    return f"{where}{type(err).__name__}: {text[:300]}"


def save_params(path: str | os.PathLike, params: Any, *, overwrite: bool = False) -> None:
    """Writes ``params`` (a pytree of arrays) as an Orbax checkpoint directory at ``path``.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      CheckpointError: naming ``path``, when the parent is missing or not a folder, when
        ``path`` is a file, or when writing fails (a leaf that is not an array, a full
        disk, ...). Nothing keeps running after the error.
    """
    path = _absolute(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        what = "is not a folder" if os.path.exists(parent) else "does not exist"
        raise CheckpointError(f"save_params: cannot write {path}: its parent {parent} {what}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"save_params: {path} already exists (pass overwrite=True to replace it)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"save_params: {path} is a file, not a checkpoint folder; remove it or pick another path")
    try:
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        checkpointer.save(path, params, force=overwrite)
    except Exception as err:
        raise CheckpointError(f"save_params: could not write the checkpoint {path} ({_summary(err)})") from err


def _describe(tree: Any) -> dict[str, tuple[int, ...]]:
    """Maps each leaf's key path to its shape."""
    return {jax.tree_util.keystr(key): tuple(leaf.shape) for key, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_params(path: str | os.PathLike, like: Any = None) -> Any:
    """Reads the parameters saved at ``path``.

    With ``like`` (a pytree of arrays or ``jax.ShapeDtypeStruct``), the checkpoint must have
    the same tree structure and leaf shapes; leaves are restored with ``like``'s dtypes and
    shardings.

    Raises:
      FileNotFoundError: no checkpoint folder at ``path``, or one without checkpoint metadata.
      ValueError: naming the path and the differing leaves, for a different structure.
      CheckpointError: naming the path, for a corrupt or truncated checkpoint.
    """
    path = _absolute(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"restore_params: no checkpoint directory at {path}")
    checkpointer = ocp.StandardCheckpointer()
    try:
        item = checkpointer.metadata(path).item_metadata
    except FileNotFoundError as err:
        raise FileNotFoundError(f"restore_params: {path} is not an Orbax checkpoint ({_summary(err)})") from err
    except Exception as err:
        raise CheckpointError(f"restore_params: cannot read the checkpoint metadata of {path} ({_summary(err)})") from err
    if item is None:
        if not os.listdir(path):
            raise FileNotFoundError(f"restore_params: {path} is empty: no Orbax checkpoint")
        message = f"restore_params: the checkpoint {path} is corrupt or truncated (Orbax finds no parameter metadata)"
        try:  # a restore attempt surfaces the library's own error, to chain
            checkpointer.restore(path)
        except Exception as err:
            raise CheckpointError(f"{message}: {_summary(err)}") from err
        raise CheckpointError(message)
    stored = item.tree
    try:
        if like is None:
            return checkpointer.restore(path)
        expected, found = _describe(like), _describe(stored)
    except Exception as err:
        raise CheckpointError(f"restore_params: the checkpoint {path} is corrupt or truncated ({_summary(err)})") from err
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
    try:
        return checkpointer.restore(path, target)
    except Exception as err:
        raise CheckpointError(f"restore_params: the checkpoint {path} is corrupt or truncated ({_summary(err)})") from err


def _sharding(leaf: Any) -> jax.sharding.Sharding:
    """The leaf's sharding, or the first local device for host arrays and bare shapes."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return sharding
