"""Saved trie indexes: an edited metadata field or array is refused, naming the file and the
field (issue 11). Each field is tampered twice: in a current file (stale checksum) and in a
format-1 file (no checksums: the structural checks alone must name it)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from constraints import FORMAT_VERSION, build_fixed_length_index, build_variable_length_index, load_index, save_index

ARRAYS = ("indptr", "tokens", "dense_bits", "dense_rank")
FIXED = build_fixed_length_index(
    np.random.default_rng(0).integers(0, 300, size=(120, 4)), 300, dense_budget_bytes=1 << 20
)
VARIABLE = build_variable_length_index([[3, 1, 2], [2], [3, 2], [0, 0, 0, 2]], 4, eos_id=2)


def _write(path: pathlib.Path, index, edit=None, *, version: int = FORMAT_VERSION) -> None:
    """``index`` saved at ``path``, then ``edit(meta, arrays)`` applied to the raw file; a
    ``version`` 1 file drops the checksums (the format before them)."""
    save_index(path, index)
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {name: data[name] for name in ARRAYS}
    if version == 1:
        meta.pop("checksums")
        meta["format_version"] = 1
    if edit is not None:
        edit(meta, arrays)
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def _shift_level(meta, arrays):
    sizes = meta["level_sizes"]
    sizes[1] += 1
    sizes[2] -= 1  # the same sums: every array shape still fits


TAMPERED = {
    # field: (index, edit); every edit keeps the JSON types valid
    "vocab_size": (FIXED, lambda m, a: m.update(vocab_size=1000)),
    "depth": (FIXED, lambda m, a: m.update(depth=m["depth"] + 1)),
    "max_branching": (FIXED, lambda m, a: m["max_branching"].__setitem__(-1, m["max_branching"][-1] + 1)),
    "eos_id": (VARIABLE, lambda m, a: m.update(eos_id=3)),
    "fixed_length": (FIXED, lambda m, a: m.update(fixed_length=False)),
    "num_items": (FIXED, lambda m, a: m.update(num_items=m["num_items"] - 1)),
    "level_sizes": (FIXED, _shift_level),
    "dense_levels": (FIXED, lambda m, a: m.update(dense_levels=m["dense_levels"] - 1)),
}


@pytest.mark.parametrize("version", [FORMAT_VERSION, 1])
@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_tampered_metadata_field_is_named(tmp_path, field, version):
    index, edit = TAMPERED[field]
    path = tmp_path / "index.npz"
    _write(path, index, edit, version=version)
    with pytest.raises(ValueError, match=field) as err:
        load_index(path)
    assert str(path) in str(err.value)


def test_edits_only_a_checksum_can_see(tmp_path):
    """A vocabulary edited within the same token dtype and dense width, and a leaf token changed
    to another valid one: structurally sound, caught by the checksums."""
    path = tmp_path / "index.npz"
    _write(path, FIXED, lambda m, a: m.update(vocab_size=301))
    with pytest.raises(ValueError, match="metadata vocab_size=301 does not match its checksum.*rebuild"):
        load_index(path)

    def bump_last_token(meta, arrays):
        assert arrays["tokens"][-1] < 299  # it stays below the vocabulary, the last of its row
        arrays["tokens"][-1] += 1

    sparse = build_fixed_length_index(np.asarray([[1, 2], [1, 5], [4, 3]]), 300, dense_budget_bytes=0)
    assert sparse.dense_levels == 0
    _write(path, sparse, bump_last_token)
    with pytest.raises(ValueError, match=f"{path}: array tokens does not match its checksum"):
        load_index(path)


def test_format_1_files_still_load(tmp_path):
    for index in (FIXED, VARIABLE):
        _write(tmp_path / "old.npz", index, version=1)
        loaded = load_index(tmp_path / "old.npz")
        assert loaded.replace(**dict.fromkeys(ARRAYS)) == index.replace(**dict.fromkeys(ARRAYS))


def test_unknown_version_says_how_to_rebuild(tmp_path):
    _write(tmp_path / "new.npz", FIXED, lambda m, a: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format version 3.*rebuild it .*scripts/build_index.py"):
        load_index(tmp_path / "new.npz")
