"""Tests for model.data and the contract.dataset validator it reads through: loading, validation,
history alignment, batches, fingerprints."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.dataset import DataError, ItemTable, load_items
from contract.schema import ITEM_VECTOR_DIM, LEVEL_VOCAB, TAGS_PER_ITEM, FeatureSchema
from model import data
from model.data import (
    Batch,
    Dataset,
    Split,
    assemble_batch,
    infer_schema,
    iterate_rows,
    load_split,
)

N_ITEMS = 9  # item ids 1..8 plus the padding row 0
MAX_TAG = 12

Columns = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Builders: tiny parquet folders written with pyarrow


def item_columns(n: int = N_ITEMS) -> Columns:
    """A valid item_info: row i = item i, row 0 all zero."""
    rng = np.random.default_rng(1)
    tags = rng.integers(1, MAX_TAG + 1, size=(n, TAGS_PER_ITEM))
    tags[:, -1] = 0  # 0-padded tag lists, as in the real data
    tags[-1, 0] = MAX_TAG  # the largest tag id fixes tag_vocab
    vectors = rng.standard_normal((n, ITEM_VECTOR_DIM)).astype(np.float32)
    tags[0] = 0
    vectors[0] = 0
    return {
        "item_id": pa.array(np.arange(n)),
        "item_tags": pa.array(list(tags), type=pa.list_(pa.int64())),
        "item_emb_d128": pa.array(list(vectors), type=pa.list_(pa.float32())),
    }


HISTORIES = [[1, 2, 3], [], [0, 0, 4, 5], [8, 7, 6, 5, 4, 3, 2, 1, 2, 3]]


def split_columns(histories: list[list[int]] | None = None) -> Columns:
    """A valid split; one row per history."""
    histories = HISTORIES if histories is None else histories
    rows = len(histories)
    return {
        "user_id": pa.array(np.arange(100, 100 + rows)),
        "item_seq": pa.array(histories, type=pa.list_(pa.int64())),
        "likes_level": pa.array(np.arange(rows) % LEVEL_VOCAB),
        "views_level": pa.array((np.arange(rows) * 3) % LEVEL_VOCAB),
        "item_id": pa.array(1 + np.arange(rows) % (N_ITEMS - 1)),
        "label": pa.array((np.arange(rows) % 2).astype(np.float32)),
    }


def write(path: Path, columns: Columns, **kwargs: Any) -> Path:
    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def make_folder(root: Path, splits: dict[str, Columns] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "item_info.parquet", item_columns())
    if splits is None:
        splits = {"train": split_columns(), "valid": split_columns([[3], [4, 5]])}
    for name, columns in splits.items():
        write(root / f"{name}.parquet", columns)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "ds")


@pytest.fixture
def items(folder: Path) -> ItemTable:
    return load_items(folder / "item_info.parquet")


def with_column(columns: Columns, name: str, value: Any) -> Columns:
    """A copy of ``columns`` with one column replaced (``None`` removes it)."""
    out = dict(columns)
    if value is None:
        del out[name]
    else:
        out[name] = value
    return out


def expect_error(call: Any, *fragments: str) -> str:
    """Assert a DataError whose message contains every fragment; return the message."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------------------------
# A valid folder


def test_valid_folder_round_trips(folder: Path) -> None:
    dataset = Dataset(folder, history_len=4)
    source = item_columns()
    items = dataset.items
    assert items.num_items == N_ITEMS
    assert items.tags.dtype == np.int64 and items.tags.shape == (N_ITEMS, TAGS_PER_ITEM)
    assert items.vectors.dtype == np.float32 and items.vectors.shape == (N_ITEMS, ITEM_VECTOR_DIM)
    np.testing.assert_array_equal(items.tags, np.stack(source["item_tags"].to_pylist()))
    np.testing.assert_array_equal(items.vectors, np.stack(source["item_emb_d128"].to_pylist()))
    assert not items.tags[0].any() and not items.vectors[0].any()

    train = dataset.split("train")
    columns = split_columns()
    assert train.name == "train" and len(train) == len(HISTORIES)
    np.testing.assert_array_equal(train.user_ids, columns["user_id"].to_numpy())
    np.testing.assert_array_equal(train.likes, columns["likes_level"].to_numpy())
    np.testing.assert_array_equal(train.views, columns["views_level"].to_numpy())
    np.testing.assert_array_equal(train.item_ids, columns["item_id"].to_numpy())
    assert train.labels is not None and train.labels.dtype == np.float32
    np.testing.assert_array_equal(train.labels, columns["label"].to_numpy())
    expected = [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 4, 5], [2, 1, 2, 3]]
    np.testing.assert_array_equal(train.history, expected)
    for array in (train.user_ids, train.history, train.likes, train.views, train.item_ids):
        assert array.dtype == np.int64
    assert dataset.split("train") is train  # cached
    assert dataset.has_split("valid") and not dataset.has_split("test")
    assert len(dataset.split("valid")) == 2


def test_narrow_integer_types_and_label_kinds_are_accepted(folder: Path, items: ItemTable) -> None:
    columns = split_columns()
    narrow = {
        "user_id": columns["user_id"].cast(pa.uint32()),
        "item_seq": pa.array(HISTORIES, type=pa.large_list(pa.int16())),
        "likes_level": columns["likes_level"].cast(pa.int8()),
        "views_level": columns["views_level"].cast(pa.uint8()),
        "item_id": columns["item_id"].cast(pa.int32()),
    }
    for label in (pa.array([True, False, True, True]), pa.array([1, 0, 1, 1], pa.int8())):
        path = write(folder / "narrow.parquet", {**narrow, "label": label})
        split = load_split(path, items, history_len=4)
        assert split.labels is not None
        np.testing.assert_array_equal(split.labels, [1, 0, 1, 1])
        np.testing.assert_array_equal(split.history[3], [2, 1, 2, 3])
        assert split.name == "narrow"


def test_items_accept_fixed_size_lists_and_float64(tmp_path: Path) -> None:
    source = item_columns()
    tags = np.stack(source["item_tags"].to_pylist())
    vectors = np.stack(source["item_emb_d128"].to_pylist()).astype(np.float64)
    columns = {
        "item_id": source["item_id"].cast(pa.uint16()),
        "item_tags": pa.array(list(tags), type=pa.list_(pa.int32(), TAGS_PER_ITEM)),
        "item_emb_d128": pa.array(list(vectors), type=pa.list_(pa.float64(), ITEM_VECTOR_DIM)),
    }
    items = load_items(write(tmp_path / "item_info.parquet", columns))
    np.testing.assert_array_equal(items.tags, tags)
    np.testing.assert_array_equal(items.vectors, vectors.astype(np.float32))


# --------------------------------------------------------------------------------------------
# History alignment


def load_histories(
    folder: Path, items: ItemTable, histories: list[list[int]], length: int, **kwargs: Any
) -> np.ndarray:
    path = write(folder / "h.parquet", split_columns(histories), **kwargs)
    return load_split(path, items, history_len=length).history


def test_truncation_keeps_the_most_recent_items(folder: Path, items: ItemTable) -> None:
    history = load_histories(folder, items, [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7]], 3)
    np.testing.assert_array_equal(history, [[6, 7, 8], [0, 8, 7]])


def test_padding_zeros_are_dropped_wherever_they_are(folder: Path, items: ItemTable) -> None:
    histories = [[0, 0, 0, 5, 6], [5, 0, 6, 0], [5, 6, 0, 0, 0, 0, 0], [0, 0, 0]]
    history = load_histories(folder, items, histories, 3)
    np.testing.assert_array_equal(history, [[0, 5, 6], [0, 5, 6], [0, 5, 6], [0, 0, 0]])


def test_zeros_do_not_count_towards_the_history_length(folder: Path, items: ItemTable) -> None:
    history = load_histories(folder, items, [[1, 2, 3, 0, 4, 0, 0]], 3)
    np.testing.assert_array_equal(history, [[2, 3, 4]])


def test_empty_history_is_an_all_zero_row(folder: Path, items: ItemTable) -> None:
    history = load_histories(folder, items, [[], [3], []], 64)
    assert history.shape == (3, 64)
    assert not history[0].any() and not history[2].any()
    np.testing.assert_array_equal(history[1, -2:], [0, 3])


def test_fixed_size_list_history(folder: Path, items: ItemTable) -> None:
    columns = split_columns([[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]])
    columns["item_seq"] = pa.array(
        [[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]], type=pa.list_(pa.int32(), 4)
    )
    split = load_split(write(folder / "fixed.parquet", columns), items, history_len=3)
    np.testing.assert_array_equal(split.history, [[0, 1, 2], [4, 5, 6], [0, 0, 0]])


def test_chunked_file_matches_a_brute_force_alignment(
    folder: Path, items: ItemTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several row groups and several conversion batches must give the row-by-row answer."""
    monkeypatch.setattr(data, "_HISTORY_BATCH_ROWS", 7)
    rng = np.random.default_rng(3)
    histories = [
        [int(x) for x in rng.integers(0, N_ITEMS, size=rng.integers(0, 15))] for _ in range(60)
    ]
    length = 5
    history = load_histories(folder, items, histories, length, row_group_size=11)
    for row, source in zip(history, histories, strict=True):
        recent = [x for x in source if x != 0][-length:]
        np.testing.assert_array_equal(row, [0] * (length - len(recent)) + recent)


def test_bad_history_ids_are_counted_across_batches(
    folder: Path, items: ItemTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "_HISTORY_BATCH_ROWS", 2)
    histories = [[1], [2], [3, 99], [4], [N_ITEMS, 1, -1], [5]]
    path = write(folder / "bad.parquet", split_columns(histories))
    expect_error(
        lambda: load_split(path, items),
        "bad.parquet",
        "'item_seq'",
        f"3 ids outside item_info (0..{N_ITEMS - 1}), first at row 2: 99",
    )


# --------------------------------------------------------------------------------------------
# Validation: every failure names the file and the column


def test_missing_folder_and_files(tmp_path: Path, folder: Path) -> None:
    expect_error(lambda: Dataset(tmp_path / "nope"), "nope", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(lambda: Dataset(empty), "item_info.parquet", "not found")
    expect_error(lambda: Dataset(folder).split("test"), "test.parquet", "not found")
    expect_error(lambda: load_items(tmp_path / "x.parquet"), "x.parquet", "not found")


def test_not_parquet(folder: Path, items: ItemTable) -> None:
    (folder / "train.parquet").write_text("user_id,item_id\n1,2\n")
    expect_error(lambda: Dataset(folder).split("train"), "train.parquet", "parquet")
    (folder / "item_info.parquet").write_bytes(b"")
    expect_error(lambda: Dataset(folder).items, "item_info.parquet", "parquet")


ITEM_CASES: list[tuple[str, str, Any, str]] = [
    ("missing item_tags", "item_tags", None, "missing"),
    ("item_id as string", "item_id", pa.array([str(i) for i in range(N_ITEMS)]), "integer"),
    ("item_id as float", "item_id", pa.array(np.arange(N_ITEMS, dtype=np.float64)), "integer"),
    ("tags of floats", "item_tags", pa.array([[0.0] * 5] * N_ITEMS), "list of integers"),
    ("vectors of ints", "item_emb_d128", pa.array([[0] * 128] * N_ITEMS), "list of floats"),
    ("item_id null", "item_id", pa.array([0, 1, None, *range(3, N_ITEMS)]), "1 null values"),
    (
        "item_id order",
        "item_id",
        pa.array([0, 1, 3, 2, *range(4, N_ITEMS)]),
        "2 rows differ, first at row 2: 3",
    ),
    ("id offset", "item_id", pa.array(np.arange(1, N_ITEMS + 1)), "first at row 0: 1"),
    (
        "four tags",
        "item_tags",
        pa.array([[0] * 5] + [[1, 2, 3, 4]] + [[1] * 5] * (N_ITEMS - 2)),
        "exactly 5 values per row; 1 rows differ, first at row 1 with 4",
    ),
    (
        "127-d vector",
        "item_emb_d128",
        pa.array([[0.0] * 128] * (N_ITEMS - 1) + [[1.0] * 127], type=pa.list_(pa.float32())),
        f"first at row {N_ITEMS - 1} with 127",
    ),
    (
        "negative tag",
        "item_tags",
        pa.array([[0] * 5, [1] * 5, [1, 2, -3, 0, 0]] + [[1] * 5] * (N_ITEMS - 3)),
        "negative tag ids, first at row 2",
    ),
    (
        "null tag list",
        "item_tags",
        pa.array([[0] * 5, None] + [[1] * 5] * (N_ITEMS - 2), type=pa.list_(pa.int64())),
        "null values, first at row 1",
    ),
    (
        "null inside tags",
        "item_tags",
        pa.array([[0] * 5, [1] * 5, [1, None, 1, 1, 1]] + [[1] * 5] * (N_ITEMS - 3)),
        "null values inside lists, first at row 2",
    ),
    ("padding tags", "item_tags", pa.array([[1, 0, 0, 0, 0]] + [[1] * 5] * (N_ITEMS - 1)), "row 0"),
    (
        "padding vector",
        "item_emb_d128",
        pa.array([[0.5] * 128] * N_ITEMS, type=pa.list_(pa.float32())),
        "row 0",
    ),
    (
        "nan vector",
        "item_emb_d128",
        pa.array([[0.0] * 128] + [[0.1] * 127 + [float("nan")]] * (N_ITEMS - 1)),
        f"{N_ITEMS - 1} rows with non-finite values",
    ),
    (
        "inf after float32",
        "item_emb_d128",
        pa.array([[0.0] * 128] * (N_ITEMS - 1) + [[1e300] * 128]),
        "non-finite",
    ),
]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [case[1:] for case in ITEM_CASES],
    ids=[case[0] for case in ITEM_CASES],
)
def test_item_info_errors(tmp_path: Path, column: str, value: Any, problem: str) -> None:
    path = write(tmp_path / "item_info.parquet", with_column(item_columns(), column, value))
    expect_error(lambda: load_items(path), "item_info.parquet", f"'{column}'", problem)


def test_item_info_with_only_padding(tmp_path: Path) -> None:
    path = write(tmp_path / "item_info.parquet", item_columns(n=1))
    expect_error(lambda: load_items(path), "item_info.parquet", "at least one item")


ROWS = len(HISTORIES)
SPLIT_CASES: list[tuple[str, str, Any, str]] = [
    ("missing user_id", "user_id", None, "missing"),
    ("missing item_seq", "item_seq", None, "missing"),
    ("missing label", "label", None, "missing"),
    ("user_id string", "user_id", pa.array(["a"] * ROWS), "integer"),
    ("likes float", "likes_level", pa.array([1.0] * ROWS), "integer"),
    ("item_seq string", "item_seq", pa.array(["1^2"] * ROWS), "list of integers"),
    ("item_seq floats", "item_seq", pa.array([[1.0]] * ROWS), "list of integers"),
    ("label string", "label", pa.array(["1"] * ROWS), "label"),
    ("user_id null", "user_id", pa.array([1, 2, None, 4]), "1 null values, first at row 2"),
    ("label null", "label", pa.array([1.0, None, None, 0.0]), "2 null values, first at row 1"),
    ("item_seq null", "item_seq", pa.array([[1], [2], None, [3]]), "first at row 2"),
    ("item_seq inner null", "item_seq", pa.array([[1], [2], [3], [4, None]]), "first at row 3"),
    ("label 2", "label", pa.array([0.0, 1.0, 2.0, 1.0]), "1 labels not 0/1, first at row 2: 2"),
    ("label nan", "label", pa.array([0.0, float("nan"), 1.0, 1.0]), "first at row 1"),
    ("likes 11", "likes_level", pa.array([0, 1, 11, 12]), "2 levels outside the range (0..10)"),
    ("views -1", "views_level", pa.array([0, -1, 1, 1]), "first at row 1: -1"),
    (
        "target 0",
        "item_id",
        pa.array([1, 2, 0, 3]),
        f"1 target ids outside item_info (1..{N_ITEMS - 1}), first at row 2: 0",
    ),
    ("target N", "item_id", pa.array([1, N_ITEMS, 2, 2]), f"first at row 1: {N_ITEMS}"),
    (
        "history id N",
        "item_seq",
        pa.array([[1], [], [2, N_ITEMS, 3], [4]]),
        f"1 ids outside item_info (0..{N_ITEMS - 1}), first at row 2: {N_ITEMS}",
    ),
    ("history id -2", "item_seq", pa.array([[-2], [], [2], [4]]), "first at row 0: -2"),
    (
        "history id beyond int64",
        "item_seq",
        pa.array([[1], [2**64 - 1], [2], [4]], type=pa.list_(pa.uint64())),
        "int64",
    ),
]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [case[1:] for case in SPLIT_CASES],
    ids=[case[0] for case in SPLIT_CASES],
)
def test_split_errors(
    folder: Path, items: ItemTable, column: str, value: Any, problem: str
) -> None:
    path = write(folder / "train.parquet", with_column(split_columns(), column, value))
    expect_error(lambda: load_split(path, items), "train.parquet", f"'{column}'", problem)
    expect_error(lambda: Dataset(folder).split("train"), "train.parquet", f"'{column}'", problem)


def test_several_missing_columns_are_all_named(folder: Path, items: ItemTable) -> None:
    columns = with_column(with_column(split_columns(), "likes_level", None), "views_level", None)
    path = write(folder / "train.parquet", columns)
    expect_error(lambda: load_split(path, items), "train.parquet", "'likes_level'", "'views_level'")


def test_empty_split(folder: Path, items: ItemTable) -> None:
    columns = split_columns()
    empty = {name: array.slice(0, 0) for name, array in columns.items()}
    path = write(folder / "valid.parquet", empty)
    expect_error(lambda: load_split(path, items), "valid.parquet", "no rows")


# --------------------------------------------------------------------------------------------
# Labels


def test_split_without_labels(folder: Path, items: ItemTable) -> None:
    write(folder / "test.parquet", with_column(split_columns(), "label", None))
    dataset = Dataset(folder)
    expect_error(lambda: dataset.split("test"), "test.parquet", "'label'", "missing")
    split = dataset.split("test", require_labels=False)
    assert split.labels is None and len(split) == ROWS
    expect_error(
        lambda: dataset.split("test"), "test.parquet", "'label'"
    )  # cached, still no labels
    assert load_split(folder / "test.parquet", items, require_labels=False).labels is None


def test_all_null_label_placeholder_means_no_labels(folder: Path, items: ItemTable) -> None:
    for label in (pa.nulls(ROWS), pa.nulls(ROWS, type=pa.float32())):
        path = write(folder / "test.parquet", with_column(split_columns(), "label", label))
        assert load_split(path, items, require_labels=False).labels is None
        expect_error(lambda p=path: load_split(p, items), "test.parquet", "'label'", "null")


def test_labels_are_loaded_when_present_but_not_required(folder: Path, items: ItemTable) -> None:
    split = load_split(folder / "train.parquet", items, require_labels=False)
    assert split.labels is not None


# --------------------------------------------------------------------------------------------
# Schema


def test_infer_schema(folder: Path, items: ItemTable) -> None:
    schema = infer_schema(items, history_len=16)
    assert schema == FeatureSchema(item_vocab=N_ITEMS, tag_vocab=MAX_TAG + 1, history_len=16)
    assert Dataset(folder, history_len=16).schema == schema
    no_tags = ItemTable(
        tags=np.zeros((3, TAGS_PER_ITEM), np.int64),
        vectors=np.zeros((3, ITEM_VECTOR_DIM), np.float32),
    )
    assert infer_schema(no_tags).tag_vocab == 2
    assert infer_schema(no_tags).history_len == 64


def test_bad_history_len_is_rejected(folder: Path) -> None:
    with pytest.raises(ValueError):
        Dataset(folder, history_len=0)


# --------------------------------------------------------------------------------------------
# Batches


def random_split(items: ItemTable, rows: int, length: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    history = rng.integers(1, items.num_items, size=(rows, length))
    history[np.arange(length) < rng.integers(0, length + 1, size=(rows, 1))] = 0
    return Split(
        name="train",
        user_ids=np.arange(rows, dtype=np.int64),
        history=history,
        likes=rng.integers(0, LEVEL_VOCAB, size=rows),
        views=rng.integers(0, LEVEL_VOCAB, size=rows),
        item_ids=rng.integers(1, items.num_items, size=rows),
        labels=rng.integers(0, 2, size=rows).astype(np.float32),
    )


def check_batch(batch: Batch, split: Split, items: ItemTable, rows: np.ndarray) -> None:
    ids = batch.item_ids
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)  # unique and sorted
    expected = np.union1d(split.item_ids[rows], split.history[rows])
    np.testing.assert_array_equal(ids, expected)
    assert batch.target_index.dtype == np.int64 and batch.history_index.dtype == np.int64
    np.testing.assert_array_equal(ids[batch.target_index], split.item_ids[rows])
    np.testing.assert_array_equal(ids[batch.history_index], split.history[rows])
    np.testing.assert_array_equal(batch.item_tags, items.tags[ids])
    np.testing.assert_array_equal(batch.item_vectors, items.vectors[ids])
    np.testing.assert_array_equal(batch.likes, split.likes[rows])
    np.testing.assert_array_equal(batch.views, split.views[rows])
    assert split.labels is not None and batch.labels is not None
    np.testing.assert_array_equal(batch.labels, split.labels[rows])


def test_assemble_batch_invariants(items: ItemTable) -> None:
    split = random_split(items, rows=50, length=6)
    for rows in (np.arange(50), np.array([7]), np.array([3, 3, 9, 1]), np.array([49, 0])):
        batch = assemble_batch(split, items, rows)
        check_batch(batch, split, items, rows)
        assert batch.history_index.shape == (len(rows), 6)
    assert 0 in assemble_batch(split, items, np.arange(50)).item_ids  # padding occurs


def test_assemble_batch_without_padding_or_labels(folder: Path, items: ItemTable) -> None:
    path = write(folder / "test.parquet", with_column(split_columns([[3], [4, 5]]), "label", None))
    split = load_split(path, items, history_len=1, require_labels=False)
    batch = assemble_batch(split, items, np.array([1, 0]))
    np.testing.assert_array_equal(batch.item_ids, [1, 2, 3, 5])  # targets 1, 2; no padding 0
    np.testing.assert_array_equal(batch.target_index, [1, 0])
    np.testing.assert_array_equal(batch.history_index, [[3], [2]])
    assert batch.labels is None


def test_assemble_batch_rejects_ids_outside_items(items: ItemTable) -> None:
    split = random_split(items, rows=4, length=3)
    split.item_ids[2] = items.num_items
    with pytest.raises(ValueError):
        assemble_batch(split, items, np.arange(4))


# --------------------------------------------------------------------------------------------
# Row iteration


def test_iterate_rows_covers_every_row_once() -> None:
    for shuffle in (False, True):
        batches = list(iterate_rows(23, 5, shuffle=shuffle, seed=4))
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert all(b.dtype == np.int64 for b in batches)
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(23))
    ordered = np.concatenate(list(iterate_rows(23, 5, shuffle=False)))
    np.testing.assert_array_equal(ordered, np.arange(23))
    assert list(iterate_rows(0, 5, shuffle=True)) == []


def test_iterate_rows_is_deterministic_by_seed() -> None:
    def order(seed: int) -> np.ndarray:
        return np.concatenate(list(iterate_rows(100, 8, shuffle=True, seed=seed)))

    np.testing.assert_array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))
    assert not np.array_equal(order(1), np.arange(100))
    expected = np.random.default_rng(1).permutation(100)
    np.testing.assert_array_equal(order(1), expected)


def test_iterate_rows_rejects_bad_batch_size() -> None:
    with pytest.raises(ValueError):
        list(iterate_rows(10, 0, shuffle=False))


# --------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_tracks_file_contents(folder: Path, tmp_path: Path) -> None:
    first = Dataset(folder).fingerprint()
    assert len(first) == 64 and int(first, 16) >= 0
    assert Dataset(folder).fingerprint() == first
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert Dataset(copy).fingerprint() == first  # names and bytes, not the folder's location

    write(folder / "valid.parquet", split_columns([[3], [4, 6]]))
    changed = Dataset(folder).fingerprint()
    assert changed != first

    write(folder / "test.parquet", split_columns())
    assert Dataset(folder).fingerprint() != changed  # a new file counts

    (copy / "valid.parquet").rename(copy / "other.parquet")
    assert Dataset(copy).fingerprint() != first  # so do names
