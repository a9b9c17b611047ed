"""retrieval data: table readers in every format, their errors, k-core, sequences, leave-one-out, the
synthetic dataset and the MovieLens-100K loader."""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.movielens import load_movielens_100k, movielens_100k_dir
from retrieval.preprocess import Sequences, k_core, leave_one_out, user_sequences
from retrieval.synthetic import synthetic_dataset
from retrieval.tables import (
    DataError,
    IdIndex,
    Interactions,
    ItemTable,
    read_interactions,
    read_items,
    read_queries,
)

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")

ITEMS = {
    "item_id": [7, 9, 11],
    "genre": ["drama", "comedy", "drama"],
    "year": [1995, 1997, 2001],
    "score": [0.5, 1.5, 2.0],
    "embedding": [[0.5, 1.0], [0.0, 2.0], [-1.0, 3.5]],
}
EVENTS = {
    "user_id": ["u1", "u2", "u1"],
    "item_id": [9, 7, 11],
    "timestamp": [12, 10.5, 3],
    "rating": [1, 2, 3],
}
RECBOLE_TYPES = {
    "item_id": "token", "genre": "token", "year": "token", "score": "float", "embedding": "float_seq",
    "user_id": "token", "timestamp": "float", "rating": "float",
}


def _cell(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def write_table(path: pathlib.Path, columns: dict[str, list]) -> pathlib.Path:
    """Writes ``columns`` in the format of ``path``'s extension; lists become space-separated in text."""
    names = list(columns)
    rows = list(zip(*columns.values()))
    if path.suffix == ".parquet":
        pq.write_table(pa.table(columns), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(names, row))) + "\n" for row in rows))
    else:
        atomic = path.suffix in (".inter", ".item", ".user")
        header = [f"{name}:{RECBOLE_TYPES[name]}" for name in names] if atomic else names
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="," if path.suffix == ".csv" else "\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows([_cell(value) for value in row] for row in rows)
    return path


# ---- readers, every format ---------------------------------------------------------------


@pytest.mark.parametrize("extension", FORMATS + (".item",))
def test_read_items_every_format(tmp_path, extension):
    items = read_items(write_table(tmp_path / f"items{extension}", ITEMS), embedding_column="embedding")
    assert items.num_items == 3
    assert items.item_ids.tolist() == ["7", "9", "11"]
    assert set(items.attributes) == {"genre", "year", "score"}
    assert items.attributes["genre"].tolist() == ["drama", "comedy", "drama"]
    if extension == ".item":  # a RecBole token stays a string, a float is float64
        assert items.attributes["year"].tolist() == ["1995", "1997", "2001"]
    else:
        assert items.attributes["year"].dtype == np.int64
        assert items.attributes["year"].tolist() == [1995, 1997, 2001]
    assert items.attributes["score"].dtype == np.float64
    np.testing.assert_array_equal(items.attributes["score"], [0.5, 1.5, 2.0])
    assert items.embeddings.dtype == np.float32
    np.testing.assert_array_equal(items.embeddings, np.array(ITEMS["embedding"], np.float32))
    np.testing.assert_array_equal(items.index_of(["11", 7]), [2, 0])  # 7 and "7" are the same id
    np.testing.assert_array_equal(items.rows(np.array(["9", "8"])), [1, -1])


@pytest.mark.parametrize("extension", FORMATS + (".inter",))
def test_read_interactions_every_format(tmp_path, extension):
    path = write_table(tmp_path / f"events{extension}", EVENTS)
    items = read_items(write_table(tmp_path / "items.csv", ITEMS))
    inter = read_interactions(path, items=items)
    assert inter.source == str(path)
    assert inter.user_ids.tolist() == ["u1", "u2", "u1"]
    assert inter.item_ids.tolist() == ["9", "7", "11"]
    assert inter.timestamps.dtype == np.float64
    np.testing.assert_array_equal(inter.timestamps, [12.0, 10.5, 3.0])
    text = extension in (".csv", ".tsv", ".inter")  # line 1 is the header
    np.testing.assert_array_equal(inter.lines, [2, 3, 4] if text else [1, 2, 3])
    assert items.embeddings is None and set(items.attributes) == {"genre", "year", "score", "embedding"}


def test_tables_docstring_example(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,genre,embedding\n7,drama,0.5 1.0\n9,comedy,0.0 2.0\n")
    (tmp_path / "events.tsv").write_text("user_id\titem_id\ttimestamp\nu1\t9\t12\nu1\t7\t10\n")
    items = read_items(tmp_path / "items.csv", embedding_column="embedding")
    assert items.item_ids.tolist() == ["7", "9"] and items.attributes["genre"].tolist() == ["drama", "comedy"]
    np.testing.assert_array_equal(items.embeddings, np.array([[0.5, 1.0], [0.0, 2.0]], np.float32))
    inter = read_interactions(tmp_path / "events.tsv", items=items)
    np.testing.assert_array_equal(inter.timestamps, [12.0, 10.0])
    np.testing.assert_array_equal(inter.lines, [2, 3])
    np.testing.assert_array_equal(items.index_of(inter.item_ids), [1, 0])
    (tmp_path / "events.tsv").write_text("user_id\titem_id\ttimestamp\nu1\t9\t12\nu1\t8\t10\n")
    with pytest.raises(DataError, match=r"events.tsv, line 3, column 'item_id': item id '8' is not in the item table"):
        read_interactions(tmp_path / "events.tsv", items=items)


def test_read_interactions_other_column_names_and_blank_lines(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text('who,what,"when"\n\nann,"x,1",5\n\nbob,y,6\n')
    inter = read_interactions(path, user_column="who", item_column="what", time_column="when")
    assert inter.item_ids.tolist() == ["x,1", "y"]
    np.testing.assert_array_equal(inter.lines, [3, 5])


def test_recbole_token_seq_stays_a_string_and_empty_float_is_nan(tmp_path):
    path = tmp_path / "movies.item"
    path.write_text("item_id:token\ttitle:token_seq\tprice:float\n1\tToy Story\t\n2\tHeat\t3.5\n")
    items = read_items(path)
    assert items.attributes["title"].tolist() == ["Toy Story", "Heat"]
    np.testing.assert_array_equal(items.attributes["price"], [np.nan, 3.5])


def test_attribute_inference_with_absent_values(tmp_path):
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"item_id": "a", "n": 1, "tag": "x"}\n{"item_id": "b", "n": 2.5}\n{"item_id": "c", "n": null}\n')
    items = read_items(jsonl)
    np.testing.assert_array_equal(items.attributes["n"], [1.0, 2.5, np.nan])
    assert items.attributes["tag"].tolist() == ["x", "", ""]
    text = tmp_path / "items.csv"
    text.write_text("item_id,n,code\na,1,01x\nb,,2\n")
    items = read_items(text)
    np.testing.assert_array_equal(items.attributes["n"], [1.0, np.nan])
    assert items.attributes["code"].tolist() == ["01x", "2"]


def test_read_queries_directory_of_shards(tmp_path):
    shards = tmp_path / "queries"
    shards.mkdir()
    write_table(shards / "part-1.csv", {"user_id": ["a", "b"], "history": ["3 4 5", ""], "segment": ["x", "y"]})
    write_table(shards / "part-0.jsonl", {"user_id": [1], "history": [[7, "8"]], "segment": ["x"]})
    write_table(shards / "part-2.parquet", {"user_id": ["c"], "history": [[9]], "segment": ["z"]})
    (shards / "manifest.json").write_text("{}")  # not a shard extension
    write_table(shards / ".part-3.csv", {"user_id": ["tmp"], "history": [""], "segment": ["x"]})  # hidden
    got = read_queries(shards, segment_column="segment")
    assert [pathlib.Path(shard.source).name for shard in got] == ["part-0.jsonl", "part-1.csv", "part-2.parquet"]
    first, second, third = got
    assert first.user_ids.tolist() == ["1"] and first.history(0).tolist() == ["7", "8"]
    assert second.user_ids.tolist() == ["a", "b"]
    np.testing.assert_array_equal(second.history_offsets, [0, 3, 3])
    assert second.history_items.tolist() == ["3", "4", "5"]
    assert second.history(1).tolist() == []
    assert second.segments.tolist() == ["x", "y"]
    np.testing.assert_array_equal(second.lines, [2, 3])
    assert third.history(0).tolist() == ["9"] and third.segments.tolist() == ["z"] and len(third) == 1
    single = read_queries(shards / "part-1.csv")
    assert len(single) == 1 and single[0].segments is None


def test_read_queries_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("no shards here")
    with pytest.raises(DataError, match="no query shard files"):
        read_queries(tmp_path)


# ---- malformed input -----------------------------------------------------------------------

# (file name, contents, reader keyword arguments, what the message must contain)
ITEM_ERRORS = [
    ("items.csv", "item_id,genre\n1,a\n2,b,extra\n", {}, ["line 3", "3 fields, the header has 2"]),
    ("items.csv", 'item_id,genre\n1,"a"b\n', {}, ["line 2", "malformed"]),
    ("items.csv", "item_id,genre\n1,a\n1,b\n", {}, ["line 3", "column 'item_id'", "duplicate item id '1'", "line 2"]),
    ("items.csv", "item_id,genre\n1,a\n ,b\n", {}, ["line 3", "column 'item_id'", "empty id"]),
    ("items.csv", "id,genre\n1,a\n", {}, ["line 1", "column 'item_id'", "'id', 'genre'"]),
    ("items.tsv", "item_id\temb\n1\t0.5 1\n2\t0.5\n", {"embedding_column": "emb"},
     ["line 3", "column 'emb'", "length 1", "line 2 has length 2"]),
    ("items.tsv", "item_id\temb\n1\t0.5 1\n2\t0.5 nan\n", {"embedding_column": "emb"},
     ["line 3", "column 'emb'", "non-finite"]),
    ("items.tsv", "item_id\temb\n1\t0.5 one\n", {"embedding_column": "emb"}, ["line 2", "column 'emb'", "numbers"]),
    ("items.tsv", "item_id\temb\n1\t\n", {"embedding_column": "emb"}, ["line 2", "column 'emb'", "non-empty"]),
    ("items.jsonl", '{"item_id": 1}\n{"item_id": 2,}\n', {}, ["line 2", "bad JSON"]),
    ("items.jsonl", '{"item_id": 1}\n\n[2]\n', {}, ["line 3", "JSON object, got list"]),
    ("items.jsonl", '{"item_id": 1}\n{"item_id": 2.5}\n', {}, ["line 2", "column 'item_id'", "float 2.5"]),
    ("items.jsonl", '{"item_id": 1}\n{"genre": "a"}\n', {}, ["line 2", "column 'item_id'", "no value"]),
    ("items.jsonl", '{"item_id": 1, "tags": ["a"]}\n', {}, ["line 1", "column 'tags'", "scalars"]),
    ("items.jsonl", '{"item_id": 1, "e": [1, 2]}\n{"item_id": 2, "e": "1 2"}\n', {"embedding_column": "e"},
     ["line 2", "column 'e'", "list of numbers"]),
    ("items.item", "item_id:token\tgenre\n1\ta\n", {}, ["line 1", "column 'genre'", "name:type"]),
    ("items.item", "item_id:token\tprice:float\n1\t2\n2\tcheap\n", {}, ["line 3", "column 'price'", "'cheap'"]),
    ("items.csv", "", {}, ["line 1", "empty file"]),
    ("items.xlsx", "item_id\n1\n", {}, ["items.xlsx", "unknown extension '.xlsx'"]),
]


@pytest.mark.parametrize("name, contents, kwargs, expected", ITEM_ERRORS)
def test_read_items_errors(tmp_path, name, contents, kwargs, expected):
    path = tmp_path / name
    path.write_text(contents)
    with pytest.raises(DataError) as info:
        read_items(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message


EVENT_ERRORS = [
    ("events.csv", "user_id,item_id\nu,1\n", ["line 1", "column 'timestamp'", "columns present: 'user_id', 'item_id'"]),
    ("events.csv", "user_id,item_id,timestamp\nu,1,5\nu,2,soon\n", ["line 3", "column 'timestamp'", "'soon'"]),
    ("events.csv", "user_id,item_id,timestamp\nu,1,5\nu,2,inf\n", ["line 3", "column 'timestamp'", "not finite"]),
    ("events.tsv", "user_id\titem_id\ttimestamp\n\t1\t5\n", ["line 2", "column 'user_id'", "empty id"]),
    ("events.jsonl", '{"user_id": "u", "item_id": 1, "timestamp": "x"}\n', ["line 1", "column 'timestamp'"]),
    ("events.jsonl", '{"user_id": "u", "item_id": 1, "timestamp": true}\n', ["line 1", "column 'timestamp'", "bool"]),
    ("events.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t5\nu\t1\n", ["line 3", "2 fields"]),
    ("events.csv", "user_id,item_id,timestamp\nu,1,5\nu,8,6\n",
     ["line 3", "column 'item_id'", "'8' is not in the item table"]),
]


@pytest.mark.parametrize("name, contents, expected", EVENT_ERRORS)
def test_read_interactions_errors(tmp_path, name, contents, expected):
    path = tmp_path / name
    path.write_text(contents)
    items = ItemTable(np.array(["1", "2"]), {}, None)
    with pytest.raises(DataError) as info:
        read_interactions(path, items=items)
    message = str(info.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b", "a"], "e": [[1.0], [2.0], [3.0]]}), path)
    with pytest.raises(
        DataError,
        match=r"items.parquet, row 3, column 'item_id': duplicate item id 'a' \(also on row 1\)",
    ):
        read_items(path)
    pq.write_table(pa.table({"item_id": ["a", "b"], "e": [[1.0], [float("nan")]]}), path)
    with pytest.raises(DataError, match=r"row 2, column 'e': non-finite"):
        read_items(path, embedding_column="e")
    pq.write_table(pa.table({"user_id": ["u"], "item_id": [1]}), path)
    with pytest.raises(DataError, match=r"items.parquet, column 'timestamp': no such column"):
        read_interactions(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_items(path)


def test_query_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"user_id": "a", "history": [1]}\n{"user_id": "b", "history": "1 2"}\n')
    with pytest.raises(DataError, match=r"q.jsonl, line 2, column 'history': a history is a list"):
        read_queries(path)
    path.write_text('{"user_id": "a", "history": [1, ""]}\n')
    with pytest.raises(DataError, match=r"q.jsonl, line 1, column 'history': empty id"):
        read_queries(path)
    csv_path = tmp_path / "q.csv"
    csv_path.write_text("user_id,history\na,1 2\nb\n")
    with pytest.raises(DataError, match=r"q.csv, line 3: 1 fields"):
        read_queries(csv_path)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(b"item_id,title\n1,ok\n2,caf\xe9\n")
    with pytest.raises(DataError, match=r"items.csv, line 3: not UTF-8"):
        read_items(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_items(tmp_path / "absent.csv")
    with pytest.raises(FileNotFoundError):
        read_queries(tmp_path / "absent")


def test_item_table_rejects_duplicates_and_index_of_unknown():
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        ItemTable(np.array(["a", "b", "a"]), {}, None)
    items = ItemTable(np.array(["b", "a", "c"]), {"n": np.arange(3)}, None)
    with pytest.raises(KeyError, match="'z'"):
        items.index_of(["a", "z"])
    np.testing.assert_array_equal(IdIndex.build(np.array([], str)).rows(["a"]), [-1])


# ---- preprocessing -------------------------------------------------------------------------


def _inter(rows: list[tuple[str, str, float]]) -> Interactions:
    users, items, times = zip(*rows)
    return Interactions(
        np.array(users), np.array(items), np.array(times, np.float64), "events.csv", np.arange(2, len(rows) + 2)
    )


def test_k_core_cascade():
    # u4 has 1 event -> dropped; then c has 1 -> dropped; then u3 has 1 -> dropped; a keeps 2.
    inter = _inter([("u1", "a", 1), ("u3", "a", 2), ("u2", "b", 3), ("u4", "c", 4), ("u1", "b", 5),
                    ("u3", "c", 6), ("u2", "a", 7)])
    core = k_core(inter, k=2)
    assert list(zip(core.user_ids.tolist(), core.item_ids.tolist())) == [("u1", "a"), ("u2", "b"), ("u1", "b"),
                                                                         ("u2", "a")]
    np.testing.assert_array_equal(core.timestamps, [1, 3, 5, 7])
    np.testing.assert_array_equal(core.lines, [2, 4, 6, 8])
    assert core.source == "events.csv"
    assert k_core(inter, k=1) is inter
    assert len(k_core(inter, k=3)) == 0


def test_user_sequences_sorts_by_time_ties_in_file_order():
    # the preprocess module docstring's example
    inter = _inter([("u1", "b", 5), ("u1", "a", 1), ("u2", "a", 3), ("u1", "c", 9), ("u2", "b", 3), ("u1", "d", 7)])
    seqs = user_sequences(inter, np.array(["a", "b", "c", "d"]))
    assert seqs.user_ids.tolist() == ["u1", "u2"]
    np.testing.assert_array_equal(seqs.offsets, [0, 4, 6])
    assert seqs.items.dtype == np.int32
    np.testing.assert_array_equal(seqs.items, [0, 1, 3, 2, 0, 1])
    np.testing.assert_array_equal(seqs.lengths, [4, 2])
    np.testing.assert_array_equal(seqs.sequence(1), [0, 1])
    swapped = _inter([("u2", "b", 3), ("u2", "a", 3)])  # same tie, other file order
    np.testing.assert_array_equal(user_sequences(swapped, np.array(["a", "b"])).items, [1, 0])
    split = leave_one_out(seqs, max_history=2)
    assert split.num_dropped_users == 1
    np.testing.assert_array_equal(split.train.items, [0, 1])
    np.testing.assert_array_equal(split.valid.history, [[0, 1]])
    np.testing.assert_array_equal(split.valid.targets, [3])
    np.testing.assert_array_equal(split.test.history, [[1, 3]])
    np.testing.assert_array_equal(split.test.targets, [2])


def test_user_sequences_unknown_item_names_file_and_line():
    inter = _inter([("u1", "a", 1), ("u1", "zz", 2)])
    with pytest.raises(DataError, match=r"events.csv, line 3: item id 'zz' is not in the catalog"):
        user_sequences(inter, np.array(["a", "b"]))


def _sequences(per_user: dict[str, list[int]]) -> Sequences:
    lengths = [len(items) for items in per_user.values()]
    return Sequences(
        np.array(list(per_user)), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.array([item for items in per_user.values() for item in items], np.int32),
    )


def test_leave_one_out_exact():
    seqs = _sequences({"u1": [5, 6, 7, 8, 9], "u2": [1, 2], "u3": [3, 4, 0]})
    split = leave_one_out(seqs, max_history=2)
    assert split.max_history == 2 and split.num_dropped_users == 1
    assert split.train.user_ids.tolist() == ["u1", "u3"]
    np.testing.assert_array_equal(split.train.offsets, [0, 3, 4])
    np.testing.assert_array_equal(split.train.items, [5, 6, 7, 3])
    assert split.valid.user_ids.tolist() == ["u1", "u3"] and split.test.user_ids.tolist() == ["u1", "u3"]
    np.testing.assert_array_equal(split.valid.history, [[6, 7], [3, -1]])  # capped to the last 2
    np.testing.assert_array_equal(split.valid.history_lengths, [2, 1])
    np.testing.assert_array_equal(split.valid.targets, [8, 4])
    np.testing.assert_array_equal(split.test.history, [[7, 8], [3, 4]])
    np.testing.assert_array_equal(split.test.history_lengths, [2, 2])
    np.testing.assert_array_equal(split.test.targets, [9, 0])
    assert split.test.history.dtype == np.int32 and split.test.targets.dtype == np.int32
    wide = leave_one_out(seqs, max_history=5)
    np.testing.assert_array_equal(wide.valid.history, [[5, 6, 7, -1, -1], [3, -1, -1, -1, -1]])
    np.testing.assert_array_equal(wide.test.history, [[5, 6, 7, 8, -1], [3, 4, -1, -1, -1]])
    with pytest.raises(ValueError, match="max_history"):
        leave_one_out(seqs, max_history=0)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 8), min_size=1, max_size=8), max_history=st.integers(1, 6))
def test_leave_one_out_no_target_in_train(lengths, max_history):
    # every event is a distinct item, so an item seen twice would be an event in two parts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    user_ids = np.array([f"u{u}" for u in range(len(lengths))])
    seqs = Sequences(user_ids, offsets, np.arange(offsets[-1], dtype=np.int32))
    split = leave_one_out(seqs, max_history=max_history)
    kept = [u for u, n in enumerate(lengths) if n >= 3]
    assert split.num_dropped_users == len(lengths) - len(kept)
    train = set(split.train.items.tolist())
    targets = set(split.valid.targets.tolist()) | set(split.test.targets.tolist())
    assert not train & targets
    assert len(train) + len(targets) == sum(lengths[u] for u in kept)  # nothing lost
    for examples, back in ((split.valid, 2), (split.test, 1)):
        for row, u in enumerate(kept):
            end = offsets[u + 1] - back
            want = list(range(max(offsets[u], end - max_history), end))
            assert examples.history[row, : len(want)].tolist() == want
            assert (examples.history[row, len(want) :] == -1).all()
            assert examples.history_lengths[row] == len(want) and examples.targets[row] == end
            assert examples.history[row, : len(want)].max() < examples.targets[row]  # history precedes its target


# ---- synthetic dataset ---------------------------------------------------------------------

SMALL = dict(num_users=60, num_items=80, num_categories=3, subcategories_per_category=2, events_per_user=(5, 9),
             embedding_dim=8)


def _arrays(items: ItemTable, inter: Interactions) -> dict[str, np.ndarray]:
    arrays = {"item_ids": items.item_ids, "embeddings": items.embeddings, "user_ids": inter.user_ids,
              "event_items": inter.item_ids, "timestamps": inter.timestamps, "lines": inter.lines}
    arrays.update({f"attr_{name}": values for name, values in items.attributes.items()})
    return arrays


def test_synthetic_docstring_example():
    items, inter = synthetic_dataset(num_users=3, num_items=40, num_categories=2, subcategories_per_category=2,
                                     events_per_user=(4, 6))
    assert items.attributes["subcategory"][:3].tolist() == ["c1.s1", "c1.s1", "c0.s0"]
    assert items.attributes["title"][0] == "zomeku nuvo soda guzilo"
    assert items.embeddings.shape == (40, 32) and len(inter) == 14 and inter.source == "<synthetic seed=0>"


def test_synthetic_is_deterministic_per_seed():
    first, again, other = (_arrays(*synthetic_dataset(**SMALL, seed=s)) for s in (3, 3, 4))
    assert first.keys() == again.keys() == other.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    for name in ("embeddings", "event_items", "timestamps", "attr_title", "attr_subcategory"):
        assert first[name].shape != other[name].shape or not np.array_equal(first[name], other[name]), name


def test_synthetic_shapes_and_validity():
    items, inter = synthetic_dataset(**SMALL, seed=1)
    assert items.num_items == 80 and items.embeddings.shape == (80, 8) and items.embeddings.dtype == np.float32
    assert np.isfinite(items.embeddings).all()
    category, subcategory = items.attributes["category"], items.attributes["subcategory"]
    assert set(subcategory.tolist()) == {f"c{c}.s{s}" for c in range(3) for s in range(2)}
    assert all(sub.split(".")[0] == cat for cat, sub in zip(category.tolist(), subcategory.tolist()))
    assert all(len(title.split()) == 4 for title in items.attributes["title"].tolist())
    assert items.attributes["release_time"].dtype == np.float64
    assert items.attributes["release_time"].max() < inter.timestamps.min()
    assert inter.source == "<synthetic seed=1>"
    np.testing.assert_array_equal(inter.lines, np.arange(1, len(inter) + 1))
    assert (np.diff(inter.timestamps) >= 0).all()  # a global time-ordered log
    seqs = user_sequences(inter, items.item_ids)
    assert len(seqs) == 60 and seqs.lengths.min() >= 5 and seqs.lengths.max() <= 9
    for u in range(len(seqs)):
        assert len(set(seqs.sequence(u).tolist())) == seqs.lengths[u]  # never the same item twice
        times = np.sort(inter.timestamps[inter.user_ids == seqs.user_ids[u]])
        assert (np.diff(times) > 0).all()
    # content embeddings: items of one subcategory lie closer together than items of other categories
    distance = np.linalg.norm(items.embeddings[:, None] - items.embeddings[None], axis=-1)
    same_sub = subcategory[:, None] == subcategory[None]
    other_cat = category[:, None] != category[None]
    assert distance[same_sub & ~np.eye(80, dtype=bool)].mean() < 0.5 * distance[other_cat].mean()
    with pytest.raises(ValueError, match="num_items"):
        synthetic_dataset(num_items=5, num_categories=3, subcategories_per_category=2)


def test_synthetic_default_survives_5_core_and_is_learnable():
    items, inter = synthetic_dataset()
    core = k_core(inter, 5)
    assert len(core) > 0.95 * len(inter)
    split = leave_one_out(user_sequences(core, items.item_ids), max_history=20)
    train, test, n = split.train, split.test, items.num_items
    follows = np.ones(len(train.items) - 1, bool)
    follows[train.offsets[1:-1] - 1] = False  # no pair across two users
    counts = np.zeros((n, n))
    np.add.at(counts, (train.items[:-1][follows], train.items[1:][follows]), 1)
    popularity = np.bincount(train.items, minlength=n)
    last = test.history[np.arange(len(test)), test.history_lengths - 1]
    successor_top = np.argsort(-(counts[last] + popularity / (popularity.max() + 1.0)), axis=1)[:, :10]
    popular_top = np.argsort(-popularity)[:10]
    successor_recall = (successor_top == test.targets[:, None]).any(axis=1).mean()
    popular_recall = np.isin(test.targets, popular_top).mean()
    assert successor_recall > 0.25 and successor_recall > 3 * popular_recall, (successor_recall, popular_recall)


# ---- MovieLens-100K --------------------------------------------------------------------------


def test_movielens_100k():
    modules_before = set(sys.modules)
    folder = movielens_100k_dir()
    assert "recbole" in modules_before or "recbole" not in sys.modules  # found without importing it
    if folder is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1)")
    items, inter = load_movielens_100k()
    assert items.num_items == 1682
    assert len(inter) == 100_000
    assert len(np.unique(inter.user_ids)) == 943
    assert items.attributes["movie_title"][0] == "Toy Story"
    assert inter.item_ids[0] == "242" and inter.lines[0] == 2


def test_movielens_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps recbole==1.2.1"):
        load_movielens_100k(tmp_path)
