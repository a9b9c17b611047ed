"""Catalog: token layout, item <-> semantic ID maps, prompts, save/load."""

import json
import os

import numpy as np
import pytest

from retrieval.catalog import BOS_ID, PAD_ID, Catalog, TokenLayout


def _catalog() -> Catalog:
    codes = np.array([[3, 0, 1], [3, 0, 0], [1, 2, 0]], np.int32)
    return Catalog(np.array(["x", "y", "z"]), codes, TokenLayout((4, 4, 2)), {"genre": np.array(["a", "b", "a"])})


def test_layout_worked_example():
    layout = TokenLayout((4, 4, 2))
    assert layout.vocab_size == 12
    assert layout.encode(np.array([3, 0, 1])).tolist() == [5, 6, 11]
    codes, ok = layout.decode(np.array([[5, 6, 11], [5, 5, 11], [0, 6, 10]]))
    assert codes[0].tolist() == [3, 0, 1] and ok.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="out of range"):
        layout.encode(np.array([4, 0, 0]))


def test_id_to_item_round_trip():
    catalog = _catalog()
    assert catalog.items_of_tokens(catalog.tokens).tolist() == [0, 1, 2]
    # a well-formed ID that names no item, and tokens of the wrong level
    assert catalog.items_of_tokens(np.array([[3, 6, 10], [6, 6, 10]])).tolist() == [-1, -1]
    assert catalog.rows_of(np.array(["z", "nope", "x"])).tolist() == [2, -1, 0]


def test_catalog_rejects_colliding_ids():
    with pytest.raises(ValueError, match="unique"):
        Catalog(np.array(["a", "b"]), np.array([[0, 0], [0, 0]], np.int32), TokenLayout((2, 2)))


def test_prompts_are_bos_then_item_tokens():
    catalog = _catalog()
    prompts, lengths = catalog.prompts(np.array([[2, 0], [-1, -1]]))
    assert lengths.tolist() == [7, 1]
    assert prompts[0].tolist() == [BOS_ID] + catalog.tokens[2].tolist() + catalog.tokens[0].tolist()
    assert prompts[1].tolist() == [BOS_ID] + [PAD_ID] * 6


def test_save_load_and_tamper(tmp_path):
    catalog = _catalog()
    catalog.save(tmp_path)
    loaded = Catalog.load(tmp_path)
    assert loaded.item_ids.tolist() == ["x", "y", "z"] and (loaded.codes == catalog.codes).all()
    assert loaded.attributes["genre"].tolist() == ["a", "b", "a"]
    meta = json.loads((tmp_path / "catalog.json").read_text())
    meta["level_sizes"] = [4, 4, 3]
    (tmp_path / "catalog.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checksum"):
        Catalog.load(tmp_path)
    os.remove(tmp_path / "catalog.npz")
    with pytest.raises(FileNotFoundError, match="catalog.npz"):
        Catalog.load(tmp_path)
