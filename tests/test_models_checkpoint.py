"""Orbax save/restore of parameter pytrees, and its error messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import init_params, preset, restore_params, save_params

TINY = preset("tiny", n_layers=1)


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(3))


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_and_without_template(tmp_path, params):
    path = tmp_path / "ckpt"
    save_params(path, params)
    _assert_same(restore_params(path, like=params), params)
    _assert_same(restore_params(str(path)), params)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
    as_bf16 = restore_params(path, like=abstract)
    assert {leaf.dtype for leaf in jax.tree.leaves(as_bf16)} == {jnp.dtype(jnp.bfloat16)}


def test_existing_directory_needs_overwrite(tmp_path, params):
    path = tmp_path / "ckpt"
    save_params(path, params)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_params(path, params)
    doubled = jax.tree.map(lambda x: x * 2, params)
    save_params(path, doubled, overwrite=True)
    _assert_same(restore_params(path, like=params), doubled)


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        restore_params(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        restore_params(tmp_path / "empty")


def test_wrong_structure_names_the_differing_leaves(tmp_path, params):
    path = tmp_path / "ckpt"
    save_params(path, params)
    other_config = preset("tiny", n_layers=1, attention_bias=True, hidden_dim=96)
    other = jax.eval_shape(lambda key: init_params(other_config, key), jax.random.key(0))
    with pytest.raises(ValueError, match=str(path)) as info:
        restore_params(path, like=other)
    message = str(info.value)
    assert "q_proj']['bias']" in message  # missing from the checkpoint
    assert "gate_proj']['kernel']" in message and "(64, 128)" in message and "(64, 96)" in message
