"""Data-parallel decoding across devices with current JAX APIs (mesh, NamedSharding, shard_map).

Batch-leading pytrees (prompts, caches, per-row keys and knobs) are split over the ``data``
axis of a mesh; parameters are replicated, or split on a ``model`` axis when the mesh has one
of size > 1. A decoding loop is compiled with ``jax.jit(in_shardings=, out_shardings=)`` and
runs under ``jax.set_mesh(mesh)``; inside it, per-row work that needs no other row (draft
verification and acceptance) runs per device under ``jax.shard_map`` through
:func:`per_device`, which falls back to a plain call when no mesh is set. The same code runs
unchanged on one device and on N.

Example (8 devices)::

    mesh = data_mesh()                                  # Mesh('data': 8, 'model': 1)
    prompts = shard_rows(prompts, mesh)                 # rows 0-3 on device 0, 4-7 on device 1, ...
    with jax.set_mesh(mesh):
        verdict = per_device(rejection_accept, in_specs=(ROWS,) * 4, out_specs=ROWS)(keys, d, q, p)

Multi-host runs call ``jax.distributed.initialize()`` first; each process then feeds its
own share of the rows.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
MODEL = "model"
ROWS = PartitionSpec(DATA)  # a batch-leading array split over the data axis
REPLICATED = PartitionSpec()  # the whole array on every device


def data_mesh(data: int | None = None, model: int = 1) -> Mesh:
    """A ``(data, model)`` mesh of ``data * model`` devices (default: all devices on ``data``).

    Axes are ``AxisType.Auto``: the compiler propagates shardings through the model, which
    need not know about meshes. Raises ValueError if the devices do not suffice.
    """
    available = jax.device_count()
    if model < 1:
        raise ValueError(f"the model axis needs at least 1 device, got {model}")
    if data is None:
        data = available // model
    if data < 1 or data * model > available:
        raise ValueError(f"a mesh of data={data} x model={model} needs more than the {available} devices available")
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def data_size(mesh: Mesh) -> int:
    """The number of row shards of ``mesh``."""
    return int(mesh.shape[DATA])


def check_rows(batch: int, mesh: Mesh) -> None:
    """Raises ValueError unless ``batch`` rows split evenly over the data axis."""
    if batch % data_size(mesh):
        raise ValueError(f"batch {batch} does not split evenly over the {data_size(mesh)} devices of the data axis")


def row_shardings(tree: Any, mesh: Mesh) -> Any:
    """A pytree of shardings like ``tree``: batch-leading arrays on ``data``, scalars replicated."""
    return jax.tree.map(lambda leaf: NamedSharding(mesh, ROWS if np.ndim(leaf) >= 1 else REPLICATED), tree)


def named(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """``(rows, replicated)``: the two shardings every sharded entry point uses."""
    return NamedSharding(mesh, ROWS), NamedSharding(mesh, REPLICATED)


def input_shardings(inputs: Any, mesh: Mesh) -> Any:
    """Shardings for a :class:`decoding.inputs.CallInputs`: prompts, lengths, limits, per-row
    keys and per-row knobs split over ``data``; EOS ids, the pad id, a single key and scalar
    knobs replicated."""
    rows, replicated = named(mesh)
    return inputs.replace(
        prompts=rows,
        prompt_lengths=rows,
        limits=rows,
        eos_ids=replicated,
        pad_id=replicated,
        sampler=row_shardings(inputs.sampler, mesh),
        key=rows if np.ndim(inputs.key) else replicated,
    )


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A pytree of shardings like ``params``: replicated when the ``model`` axis has size 1;
    otherwise every array of rank >= 2 whose last axis divides evenly is split on ``model``
    along that axis (the rest replicated)."""
    size = int(mesh.shape[MODEL])

    def rule(leaf: Any) -> NamedSharding:
        shape = np.shape(leaf)
        if size > 1 and len(shape) >= 2 and shape[-1] % size == 0:
            return NamedSharding(mesh, PartitionSpec(*([None] * (len(shape) - 1)), MODEL))
        return NamedSharding(mesh, REPLICATED)

    return jax.tree.map(rule, params)


def shard_rows(tree: Any, mesh: Mesh) -> Any:
    """Places a batch-leading pytree with its rows split over the data axis."""
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) >= 1:
            check_rows(np.shape(leaf)[0], mesh)
    return jax.device_put(tree, row_shardings(tree, mesh))


def shard_params(params: Any, mesh: Mesh) -> Any:
    """Places parameters as :func:`param_shardings` says."""
    return jax.device_put(params, param_shardings(params, mesh))


def context_data_size() -> int:
    """Devices on the ``data`` axis of the mesh set by ``jax.set_mesh`` (0 when none is set)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA not in mesh.axis_names:
        return 0
    return int(mesh.shape[DATA])


def per_device(fn: Callable[..., Any], in_specs: tuple, out_specs: Any) -> Callable[..., Any]:
    """``fn`` run per device over the ``data`` axis of the current mesh (``jax.shard_map`` with
    one explicit spec per argument), or ``fn`` itself when no mesh with a ``data`` axis is set.

    ``fn`` must treat rows independently (no collectives); then both paths give the same
    result. ``in_specs`` has one :class:`PartitionSpec` (or prefix pytree) per positional
    argument, e.g. ``ROWS`` for batch-leading arrays and ``REPLICATED`` for shared values.
    """
    if context_data_size() == 0:
        return fn
    return jax.shard_map(fn, in_specs=in_specs, out_specs=out_specs, axis_names={DATA})


@functools.lru_cache(maxsize=32)
def _jit_for(fn, static_args, flat_in, in_tree, flat_out, out_tree, donate_argnums):
    return jax.jit(
        functools.partial(fn, *static_args),
        in_shardings=jax.tree.unflatten(in_tree, flat_in),
        out_shardings=jax.tree.unflatten(out_tree, flat_out),
        donate_argnums=donate_argnums,
    )


def run_on_mesh(
    fn: Callable[..., Any],
    static_args: tuple,
    args: tuple,
    mesh: Mesh,
    in_shardings: tuple,
    out_shardings: Any,
    donate_argnums: tuple[int, ...] = (),
) -> Any:
    """``fn(*static_args, *args)`` compiled with ``jax.jit(in_shardings=, out_shardings=)`` and
    run under ``jax.set_mesh(mesh)`` (so :func:`per_device` inside sees the mesh).

    ``fn`` and ``static_args`` must be hashable: the compiled program is cached per function,
    static arguments and shardings. ``in_shardings`` has one sharding (or prefix pytree) per
    element of ``args``; ``donate_argnums`` index into ``args``.
    """
    flat_in, in_tree = jax.tree.flatten(in_shardings)
    flat_out, out_tree = jax.tree.flatten(out_shardings)
    jitted = _jit_for(fn, static_args, tuple(flat_in), in_tree, tuple(flat_out), out_tree, donate_argnums)
    with jax.set_mesh(mesh):
        return jitted(*args)
