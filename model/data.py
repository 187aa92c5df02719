"""Load and validate a MicroLens_1M_x1 dataset folder and cut it into unique-item batches.

A dataset is a folder of parquet files (QIN.md, "Data"): ``item_info.parquet`` plus
``train/valid/test.parquet``. Real challenge data must load unchanged, and a malformed file must
fail here, at load time, with a message naming the file, the column and the problem, rather than
as an index error deep inside training or a silently wrong model.

Everything is vectorised over pyarrow's flat list values: 3.6M training rows load in seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.schema import (
    DEFAULT_HISTORY_LEN,
    ITEM_VECTOR_DIM,
    LEVEL_VOCAB,
    TAGS_PER_ITEM,
    FeatureSchema,
)

ITEM_INFO_FILE = "item_info.parquet"
SPLIT_NAMES = ("train", "valid", "test")

ITEM_ID = "item_id"
ITEM_TAGS = "item_tags"
ITEM_VECTOR = "item_emb_d128"
USER_ID = "user_id"
HISTORY = "item_seq"
LIKES = "likes_level"
VIEWS = "views_level"
LABEL = "label"

#: Rows of item_seq converted per step: bounds the temporary memory of a 3.6M-row split.
_HISTORY_BATCH_ROWS = 1 << 18
#: Read size when hashing files for the fingerprint.
_HASH_CHUNK_BYTES = 1 << 20

_READ_ERRORS = (OSError, pa.ArrowException)


class DataError(ValueError):
    """A dataset file is missing or malformed.

    The message always names the file, the column when one is at fault, and the problem, so a user
    pointing the project at their own data can fix it without reading a traceback.
    """


# --------------------------------------------------------------------------------------------
# Public containers


@dataclass(frozen=True, eq=False)
class ItemTable:
    """Per-item side features, indexed by item id (row 0 is the all-zero padding item)."""

    tags: np.ndarray  # (N, TAGS_PER_ITEM) int64
    vectors: np.ndarray  # (N, ITEM_VECTOR_DIM) float32

    def __post_init__(self) -> None:
        if self.tags.ndim != 2 or self.vectors.ndim != 2 or len(self.tags) != len(self.vectors):
            raise ValueError(
                f"ItemTable: tags {self.tags.shape} and vectors {self.vectors.shape} must be 2-D "
                "with one row per item"
            )

    @property
    def num_items(self) -> int:
        """N, padding row included: the item-id vocabulary size."""
        return len(self.tags)


@dataclass(frozen=True, eq=False)
class Split:
    """One parquet split as dense arrays, history right-aligned to a fixed width."""

    name: str
    user_ids: np.ndarray  # (R,) int64
    history: np.ndarray  # (R, L) int64, most recent item in the last column, 0 padding on the left
    likes: np.ndarray  # (R,) int64 in 0..10
    views: np.ndarray  # (R,) int64 in 0..10
    item_ids: np.ndarray  # (R,) int64 target, >= 1
    labels: np.ndarray | None  # (R,) float32 0/1; None when the file has no labels

    def __post_init__(self) -> None:
        rows = len(self.item_ids)
        columns = [self.user_ids, self.history, self.likes, self.views]
        if self.labels is not None:
            columns.append(self.labels)
        if self.history.ndim != 2 or any(len(column) != rows for column in columns):
            raise ValueError(f"Split {self.name!r}: columns must all have {rows} rows")

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True, eq=False)
class Batch:
    """A batch in unique-item form.

    Items repeat heavily inside a batch (popular targets, shared history), so the model computes
    each distinct item's representation once from ``item_tags``/``item_vectors`` and gathers it
    with ``target_index``/``history_index``.
    """

    item_ids: np.ndarray  # (U,) int64, distinct and sorted
    item_tags: np.ndarray  # (U, TAGS_PER_ITEM) int64
    item_vectors: np.ndarray  # (U, ITEM_VECTOR_DIM) float32
    target_index: np.ndarray  # (B,) int64 into item_ids
    history_index: np.ndarray  # (B, L) int64 into item_ids
    likes: np.ndarray  # (B,) int64
    views: np.ndarray  # (B,) int64
    labels: np.ndarray | None  # (B,) float32


# --------------------------------------------------------------------------------------------
# Error helpers


def _error(path: Path, problem: str, column: str | None = None) -> DataError:
    """Build the one message format: ``<file>: column '<name>': <problem>``."""
    where = f"{path}: column '{column}': " if column else f"{path}: "
    return DataError(where + problem)


def _first(bad: np.ndarray) -> tuple[int, int]:
    """How many entries are flagged and the index of the first one (-1 when none)."""
    count = int(np.count_nonzero(bad))
    return count, (int(np.argmax(bad)) if count else -1)


def _row_of(offsets: np.ndarray, flat_index: int) -> int:
    """The row owning a position of a flattened list column."""
    return int(np.searchsorted(offsets, flat_index, side="right")) - 1


def _check_range(
    path: Path, column: str, values: np.ndarray, low: int, high: int, what: str
) -> None:
    """Reject values outside ``low..high``, reporting how many and the first offender."""
    count, first = _first((values < low) | (values > high))
    if count:
        raise _error(
            path,
            f"{count} {what} ({low}..{high}), first at row {first}: {values[first]}",
            column,
        )


# --------------------------------------------------------------------------------------------
# Reading parquet


def _open(path: Path) -> pq.ParquetFile:
    """Open a parquet file, turning "missing" and "not parquet" into DataError."""
    if not path.is_file():
        raise _error(path, "file not found")
    try:
        return pq.ParquetFile(path)
    except (*_READ_ERRORS, ValueError) as exc:
        raise _error(path, f"not a readable parquet file ({exc})") from exc


def _read(parquet: pq.ParquetFile, path: Path, columns: Sequence[str]) -> pa.Table:
    """Read only the columns we use; a corrupt page becomes a DataError."""
    try:
        return parquet.read(columns=list(columns))
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read columns {list(columns)} ({exc})") from exc


def _require_columns(path: Path, schema: pa.Schema, names: Sequence[str]) -> None:
    """Fail on missing columns, naming all of them at once."""
    missing = [name for name in names if name not in schema.names]
    if len(missing) == 1:
        raise _error(path, f"missing (columns present: {schema.names})", missing[0])
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        raise _error(path, f"missing columns {listed} (columns present: {schema.names})")


def _is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _is_int_list(kind: pa.DataType) -> bool:
    return _is_list(kind) and bool(pa.types.is_integer(kind.value_type))


def _is_float_list(kind: pa.DataType) -> bool:
    return _is_list(kind) and bool(pa.types.is_floating(kind.value_type))


def _is_label(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (
            pa.types.is_integer,
            pa.types.is_floating,
            pa.types.is_boolean,
            pa.types.is_null,
        )
    )


def _check_type(
    path: Path, schema: pa.Schema, column: str, accept: Callable[[pa.DataType], bool], want: str
) -> None:
    """Fail when a column's arrow type is not one we accept."""
    kind = schema.field(column).type
    if not accept(kind):
        raise _error(path, f"expected {want}, got {kind}", column)


def _column(table: pa.Table, column: str) -> pa.Array:
    """One contiguous array for a column (parquet row groups arrive as chunks)."""
    return table.column(column).combine_chunks()


def _check_no_nulls(path: Path, column: str, array: pa.Array, row_base: int = 0) -> None:
    """Nulls have no meaning in any column, so reject them with the first row."""
    if array.null_count:
        _, first = _first(array.is_null().to_numpy(zero_copy_only=False))
        raise _error(
            path, f"{array.null_count} null values, first at row {row_base + first}", column
        )


def _to_int64(path: Path, column: str, array: pa.Array) -> np.ndarray:
    """Any integer arrow array as writable int64 numpy (uint64 beyond int64 is an error)."""
    try:
        wide = array.cast(pa.int64())
    except pa.ArrowInvalid as exc:
        raise _error(path, f"values do not fit in int64 ({exc})", column) from exc
    return np.asarray(wide.to_numpy(zero_copy_only=False, writable=True), dtype=np.int64)


def _int_column(path: Path, table: pa.Table, column: str) -> np.ndarray:
    """A scalar integer column, null-checked, as int64."""
    array = _column(table, column)
    _check_no_nulls(path, column, array)
    return _to_int64(path, column, array)


def _list_parts(path: Path, column: str, array: pa.Array, row_base: int = 0) -> tuple[Any, Any]:
    """Flat values and (R + 1,) offsets of a list/large_list/fixed_size_list array.

    ``flatten`` and ``list_value_length`` respect slicing, unlike ``.values``/``.offsets``.
    """
    _check_no_nulls(path, column, array, row_base)
    values = array.flatten()
    offsets = np.zeros(len(array) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(array).to_numpy(zero_copy_only=False), out=offsets[1:])
    if values.null_count:
        _, first = _first(values.is_null().to_numpy(zero_copy_only=False))
        row = row_base + _row_of(offsets, first)
        raise _error(
            path, f"{values.null_count} null values inside lists, first at row {row}", column
        )
    return values, offsets


def _fixed_width(path: Path, table: pa.Table, column: str, width: int) -> tuple[Any, int]:
    """Flat values of a list column that must hold exactly ``width`` entries on every row."""
    array = _column(table, column)
    values, offsets = _list_parts(path, column, array)
    lengths = np.diff(offsets)
    count, first = _first(lengths != width)
    if count:
        raise _error(
            path,
            f"expected exactly {width} values per row; {count} rows differ, "
            f"first at row {first} with {lengths[first]}",
            column,
        )
    return values, len(array)


# --------------------------------------------------------------------------------------------
# item_info.parquet


def load_items(path: Path | str) -> ItemTable:
    """Load item_info.parquet: tags and frozen vectors, row i = item i, row 0 = padding."""
    path = Path(path)
    parquet = _open(path)
    try:
        schema = parquet.schema_arrow
        _require_columns(path, schema, [ITEM_ID, ITEM_TAGS, ITEM_VECTOR])
        _check_type(path, schema, ITEM_ID, pa.types.is_integer, "an integer type")
        _check_type(path, schema, ITEM_TAGS, _is_int_list, "a list of integers")
        _check_type(path, schema, ITEM_VECTOR, _is_float_list, "a list of floats")
        table = _read(parquet, path, [ITEM_ID, ITEM_TAGS, ITEM_VECTOR])
    finally:
        parquet.close()
    if table.num_rows < 2:
        raise _error(path, f"{table.num_rows} rows; need the padding row 0 and at least one item")
    _check_item_index(path, _int_column(path, table, ITEM_ID))
    items = ItemTable(tags=_item_tags(path, table), vectors=_item_vectors(path, table))
    _check_padding_row(path, items)
    return items


def _check_item_index(path: Path, ids: np.ndarray) -> None:
    """The model looks items up by row, so row i must be item i."""
    count, first = _first(ids != np.arange(len(ids)))
    if count:
        raise _error(
            path,
            f"rows must be indexed by item id (item_id == row number 0..{len(ids) - 1}); "
            f"{count} rows differ, first at row {first}: {ids[first]}",
            ITEM_ID,
        )


def _item_tags(path: Path, table: pa.Table) -> np.ndarray:
    """(N, 5) int64 tag ids; negative ids cannot index an embedding table."""
    values, rows = _fixed_width(path, table, ITEM_TAGS, TAGS_PER_ITEM)
    tags = _to_int64(path, ITEM_TAGS, values).reshape(rows, TAGS_PER_ITEM)
    count, first = _first(tags.min(axis=1) < 0)
    if count:
        raise _error(
            path,
            f"{count} rows with negative tag ids, first at row {first}: {tags[first]}",
            ITEM_TAGS,
        )
    return tags


def _item_vectors(path: Path, table: pa.Table) -> np.ndarray:
    """(N, 128) float32 vectors; NaN/inf would poison every score that touches the item."""
    values, rows = _fixed_width(path, table, ITEM_VECTOR, ITEM_VECTOR_DIM)
    with np.errstate(over="ignore"):  # float64 overflowing float32 is caught as non-finite below
        flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    vectors = flat.reshape(rows, ITEM_VECTOR_DIM)
    count, first = _first(~np.isfinite(vectors).all(axis=1))
    if count:
        raise _error(
            path,
            f"{count} rows with non-finite values (after conversion to float32), first at row "
            f"{first}",
            ITEM_VECTOR,
        )
    return vectors


def _check_padding_row(path: Path, items: ItemTable) -> None:
    """Id 0 is padding everywhere, so its features must be zero to contribute nothing."""
    if items.tags[0].any():
        raise _error(
            path, f"row 0 must be the all-zero padding item, got {items.tags[0]}", ITEM_TAGS
        )
    if items.vectors[0].any():
        raise _error(
            path, "row 0 must be the all-zero padding item, has non-zero values", ITEM_VECTOR
        )


def infer_schema(items: ItemTable, history_len: int = DEFAULT_HISTORY_LEN) -> FeatureSchema:
    """Vocabularies as the data defines them: every item id and every tag id gets a row."""
    tag_vocab = max(int(items.tags.max()) + 1, 2)
    return FeatureSchema(item_vocab=items.num_items, tag_vocab=tag_vocab, history_len=history_len)


# --------------------------------------------------------------------------------------------
# train / valid / test.parquet


def load_split(
    path: Path | str,
    items: ItemTable,
    history_len: int = DEFAULT_HISTORY_LEN,
    require_labels: bool = True,
    name: str | None = None,
) -> Split:
    """Load one split, validated against ``items``, history right-aligned to ``history_len``.

    ``require_labels=False`` is for scoring files (test may have no label column); labels are
    still loaded and checked when the column is there.
    """
    path = Path(path)
    _check_history_len(history_len)
    parquet = _open(path)
    try:
        schema = parquet.schema_arrow
        has_label = LABEL in schema.names
        scalars = [USER_ID, LIKES, VIEWS, ITEM_ID] + ([LABEL] if has_label else [])
        required = [USER_ID, HISTORY, LIKES, VIEWS, ITEM_ID] + ([LABEL] if require_labels else [])
        _require_columns(path, schema, required)
        _check_split_types(path, schema, has_label)
        if parquet.metadata.num_rows == 0:
            raise _error(path, "no rows (empty split)")
        table = _read(parquet, path, scalars)
        history = _load_history(parquet, path, items.num_items, history_len)
    finally:
        parquet.close()
    return Split(
        name=name if name is not None else path.stem,
        user_ids=_int_column(path, table, USER_ID),
        history=history,
        likes=_level_column(path, table, LIKES),
        views=_level_column(path, table, VIEWS),
        item_ids=_target_column(path, table, items.num_items),
        labels=_label_column(path, table, require_labels),
    )


def _check_history_len(history_len: int) -> None:
    if not isinstance(history_len, int) or isinstance(history_len, bool) or history_len < 1:
        raise ValueError(f"history_len must be a positive int, got {history_len!r}")


def _check_split_types(path: Path, schema: pa.Schema, has_label: bool) -> None:
    """Check every column's arrow type before reading any data."""
    for column in (USER_ID, LIKES, VIEWS, ITEM_ID):
        _check_type(path, schema, column, pa.types.is_integer, "an integer type")
    _check_type(path, schema, HISTORY, _is_int_list, "a list of integers")
    if has_label:
        _check_type(path, schema, LABEL, _is_label, "a float, integer or bool 0/1 label")


def _level_column(path: Path, table: pa.Table, column: str) -> np.ndarray:
    """likes_level / views_level: 1..10, 0 = unknown."""
    levels = _int_column(path, table, column)
    _check_range(path, column, levels, 0, LEVEL_VOCAB - 1, "levels outside the range")
    return levels


def _target_column(path: Path, table: pa.Table, num_items: int) -> np.ndarray:
    """The target must be a real item (never the padding id 0)."""
    targets = _int_column(path, table, ITEM_ID)
    _check_range(path, ITEM_ID, targets, 1, num_items - 1, "target ids outside item_info")
    return targets


def _label_column(path: Path, table: pa.Table, require: bool) -> np.ndarray | None:
    """0/1 labels as float32; an absent (or all-null placeholder) column means "no labels"."""
    if LABEL not in table.column_names:
        return None
    array = _column(table, LABEL)
    if not require and array.null_count == len(array):
        return None
    _check_no_nulls(path, LABEL, array)
    values = array.to_numpy(zero_copy_only=False)
    count, first = _first(~((values == 0) | (values == 1)))
    if count:
        raise _error(path, f"{count} labels not 0/1, first at row {first}: {values[first]}", LABEL)
    return values.astype(np.float32)


# --------------------------------------------------------------------------------------------
# History: flat list values -> right-aligned (R, L) matrix


def _load_history(
    parquet: pq.ParquetFile, path: Path, num_items: int, history_len: int
) -> np.ndarray:
    """Stream item_seq in record batches into one preallocated (R, L) int64 matrix.

    Streaming bounds the temporaries to one batch instead of the whole flattened column. Bad
    ids are counted over the whole file before failing, so the message gives the true total.
    """
    out = np.zeros((parquet.metadata.num_rows, history_len), dtype=np.int64)
    start, bad_count, first_bad = 0, 0, ""
    try:
        batches = parquet.iter_batches(batch_size=_HISTORY_BATCH_ROWS, columns=[HISTORY])
        for batch in batches:
            array = batch.column(0)
            values, offsets = _list_parts(path, HISTORY, array, start)
            ids = _to_int64(path, HISTORY, values)
            count, first = _first((ids < 0) | (ids >= num_items))
            if count and not bad_count:
                first_bad = f"first at row {start + _row_of(offsets, first)}: {ids[first]}"
            bad_count += count
            if not bad_count:
                _right_align(ids, offsets, out[start : start + len(array)])
            start += len(array)
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read ({exc})", HISTORY) from exc
    if bad_count:
        raise _error(
            path,
            f"{bad_count} ids outside item_info (0..{num_items - 1}), {first_bad}",
            HISTORY,
        )
    return out


def _right_align(values: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """Write each row's last ``out.shape[1]`` non-zero ids, right-aligned, into zeroed ``out``.

    Row r's ids are ``values[offsets[r]:offsets[r + 1]]``, oldest first. Padding zeros are
    dropped wherever they sit, so left-, right- or mid-padded sources all end up identical.
    Row r's kept ids are contiguous in ``kept`` and land contiguously at the right end of
    ``out[r]``, so each destination is its position in ``kept`` plus a per-row shift.
    """
    if not out.flags.c_contiguous:
        raise ValueError("_right_align needs a C-contiguous output")
    width = out.shape[1]
    kept, counts = _drop_padding(values, offsets)
    recent = np.minimum(counts, width)
    if (counts > width).any():
        kept = kept[_tail_mask(counts - recent, recent)]
    shift = np.arange(1, len(counts) + 1, dtype=np.int64) * width - np.cumsum(recent)
    destination = np.repeat(shift, recent)
    destination += np.arange(len(kept), dtype=np.int64)
    out.reshape(-1)[destination] = kept


def _drop_padding(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero ids (order kept) and how many each row has."""
    keep = values != 0
    if keep.all():
        return values, np.diff(offsets)
    # A trailing 0 makes every row start a valid reduceat index, empty last rows included.
    flags = np.zeros(len(values) + 1, dtype=np.uint8)
    flags[:-1] = keep
    counts = np.add.reduceat(flags, offsets[:-1], dtype=np.int64)
    counts[offsets[1:] == offsets[:-1]] = 0  # reduceat yields flags[start] for an empty row
    return values[keep], counts


def _tail_mask(skip: np.ndarray, take: np.ndarray) -> np.ndarray:
    """Per row, ``skip`` False then ``take`` True: selects each row's most recent ids."""
    runs = np.empty(2 * len(skip), dtype=np.int64)
    runs[0::2] = skip
    runs[1::2] = take
    return np.repeat(np.tile(np.array([False, True]), len(skip)), runs)


# --------------------------------------------------------------------------------------------
# Batches


def assemble_batch(split: Split, items: ItemTable, rows: np.ndarray) -> Batch:
    """Gather ``rows`` of ``split`` into unique-item form.

    Targets and history are deduplicated together so that an item appearing as both, or many
    times, is represented once.
    """
    rows = np.asarray(rows, dtype=np.int64)
    targets = split.item_ids[rows]
    history = split.history[rows]
    item_ids, inverse = _unique_inverse(
        np.concatenate([targets, history.reshape(-1)]), items.num_items
    )
    return Batch(
        item_ids=item_ids,
        item_tags=items.tags[item_ids],
        item_vectors=items.vectors[item_ids],
        target_index=inverse[: len(rows)],
        history_index=inverse[len(rows) :].reshape(history.shape),
        likes=split.likes[rows],
        views=split.views[rows],
        labels=None if split.labels is None else split.labels[rows],
    )


def _unique_inverse(ids: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)`` for ids in ``0..num_items-1``.

    Ids live in a small known range, so a presence table plus a running count replaces the sort:
    about ten times faster than ``np.unique`` on an 8192 x 65 batch, with identical output.
    """
    if len(ids) and (ids.min() < 0 or ids.max() >= num_items):
        raise ValueError(f"item ids must lie in 0..{num_items - 1}; the split does not match items")
    present = np.zeros(num_items, dtype=bool)
    present[ids] = True
    position = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present).astype(np.int64, copy=False), position[ids]


def iterate_rows(
    n_rows: int, batch_size: int, shuffle: bool, seed: int = 0
) -> Iterator[np.ndarray]:
    """Row-index arrays covering ``0..n_rows-1`` once each; the last partial batch is kept."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    if shuffle:
        order = np.random.default_rng(seed).permutation(n_rows).astype(np.int64)
    else:
        order = np.arange(n_rows, dtype=np.int64)
    for start in range(0, n_rows, batch_size):
        yield order[start : start + batch_size]


# --------------------------------------------------------------------------------------------
# Dataset folder


class Dataset:
    """A dataset folder: item_info.parquet plus train/valid/test.parquet (test optional)."""

    def __init__(self, root: Path | str, history_len: int = DEFAULT_HISTORY_LEN) -> None:
        self.root = Path(root)
        _check_history_len(history_len)
        self.history_len = history_len
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        item_path = self.root / ITEM_INFO_FILE
        if not item_path.is_file():
            raise _error(item_path, "file not found")
        self._items: ItemTable | None = None
        self._splits: dict[str, Split] = {}

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, history_len={self.history_len})"

    @property
    def items(self) -> ItemTable:
        """item_info, loaded on first use (a scoring tool may only need the schema)."""
        if self._items is None:
            self._items = load_items(self.root / ITEM_INFO_FILE)
        return self._items

    @property
    def schema(self) -> FeatureSchema:
        return infer_schema(self.items, self.history_len)

    def split_path(self, name: str) -> Path:
        """The file behind a split name; names are plain file stems, never paths."""
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"invalid split name {name!r}")
        return self.root / f"{name}.parquet"

    def has_split(self, name: str) -> bool:
        return self.split_path(name).is_file()

    def split(self, name: str, require_labels: bool = True) -> Split:
        """Load a split once and cache it; a missing file is a DataError."""
        path = self.split_path(name)
        cached = self._splits.get(name)
        if cached is None:
            cached = load_split(path, self.items, self.history_len, require_labels, name)
            self._splits[name] = cached
        if require_labels and cached.labels is None:
            raise _error(path, "missing or all null; labels are required here", LABEL)
        return cached

    def fingerprint(self) -> str:
        """sha256 over the names and bytes of every parquet file in the folder.

        A checkpoint records it so that "which data trained this" has an exact answer. Each file
        is framed by its name and size so that moving bytes between files changes the hash.
        """
        digest = hashlib.sha256()
        for file in sorted(self.root.glob("*.parquet")):
            if not file.is_file():
                continue
            digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
            with file.open("rb") as handle:
                while chunk := handle.read(_HASH_CHUNK_BYTES):
                    digest.update(chunk)
        return digest.hexdigest()
