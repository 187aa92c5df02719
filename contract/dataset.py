"""The one validator of MicroLens_1M_x1 dataset folders, for training and for the bulk feature load.

A dataset is a folder of parquet files (docs/model.md, "Data"): ``item_info.parquet`` plus
``train/valid/test.parquet``. Real challenge data must load unchanged, and a malformed file must
fail at load time with a message naming the file, the column and the problem
(``<file>: column '<name>': <problem>``), rather than as an index error deep inside training, a
silently wrong model or a feature store serving garbage.

Training (model.data) and the bulk load (service.features.source) read the same files through
this module, so both accept and refuse exactly the same data. Everything is vectorised over
pyarrow's flat list values: 3.6M training rows load in seconds.

The only module of the project that imports pyarrow: ``contract.schema`` and ``contract.onnx_io``
do not, and neither does anything the scoring service imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.schema import ITEM_VECTOR_DIM, LEVEL_MAX, TAGS_PER_ITEM

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

#: The scalar columns of every split (the label is optional), in reading order.
SPLIT_SCALARS = (USER_ID, LIKES, VIEWS, ITEM_ID)

#: What a reader wants of a split's label column: ``required`` (training), ``optional`` (read and
#: checked when present: scoring files) or ``ignored`` (not read at all: the feature store).
Labels = Literal["required", "optional", "ignored"]

READ_ERRORS = (OSError, pa.ArrowException)


class DataError(ValueError):
    """A dataset file is missing or malformed.

    The message always names the file, the column when one is at fault, and the problem, so a user
    pointing the project at their own data can fix it without reading a traceback.
    """


# --------------------------------------------------------------------------------------------
# Error helpers


def error(path: Path, problem: str, column: str | None = None) -> DataError:
    """Build the one message format: ``<file>: column '<name>': <problem>``."""
    where = f"{path}: column '{column}': " if column else f"{path}: "
    return DataError(where + problem)


def first(bad: np.ndarray) -> tuple[int, int]:
    """How many entries are flagged and the index of the first one (-1 when none)."""
    count = int(np.count_nonzero(bad))
    return count, (int(np.argmax(bad)) if count else -1)


def row_of(offsets: np.ndarray, flat_index: int) -> int:
    """The row owning a position of a flattened list column."""
    return int(np.searchsorted(offsets, flat_index, side="right")) - 1


def check_range(
    path: Path, column: str, values: np.ndarray, low: int, high: int, what: str
) -> None:
    """Reject values outside ``low..high``, reporting how many and the first offender."""
    count, at = first((values < low) | (values > high))
    if count:
        problem = f"{count} {what} ({low}..{high}), first at row {at}: {values[at]}"
        raise error(path, problem, column)


def check_history_len(history_len: int) -> None:
    if not isinstance(history_len, int) or isinstance(history_len, bool) or history_len < 1:
        raise ValueError(f"history_len must be a positive int, got {history_len!r}")


def check_folder(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")


# --------------------------------------------------------------------------------------------
# Reading parquet


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open a parquet file, turning "missing" and "not parquet" into DataError."""
    if not path.is_file():
        raise error(path, "file not found")
    try:
        return pq.ParquetFile(path)
    except (*READ_ERRORS, ValueError) as exc:
        raise error(path, f"not a readable parquet file ({exc})") from exc


def read_columns(parquet: pq.ParquetFile, path: Path, columns: Sequence[str]) -> pa.Table:
    """Read only the columns we use; a corrupt page becomes a DataError."""
    try:
        return parquet.read(columns=list(columns))
    except READ_ERRORS as exc:
        raise error(path, f"cannot read columns {list(columns)} ({exc})") from exc


def require_columns(path: Path, schema: pa.Schema, names: Sequence[str]) -> None:
    """Fail on missing columns, naming all of them at once."""
    missing = [name for name in names if name not in schema.names]
    if len(missing) == 1:
        raise error(path, f"missing (columns present: {schema.names})", missing[0])
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        raise error(path, f"missing columns {listed} (columns present: {schema.names})")


def is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def is_int_list(kind: pa.DataType) -> bool:
    return is_list(kind) and bool(pa.types.is_integer(kind.value_type))


def is_float_list(kind: pa.DataType) -> bool:
    return is_list(kind) and bool(pa.types.is_floating(kind.value_type))


def is_label(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (
            pa.types.is_integer,
            pa.types.is_floating,
            pa.types.is_boolean,
            pa.types.is_null,
        )
    )


def check_type(
    path: Path, schema: pa.Schema, column: str, accept: Callable[[pa.DataType], bool], want: str
) -> None:
    """Fail when a column's arrow type is not one we accept."""
    kind = schema.field(column).type
    if not accept(kind):
        raise error(path, f"expected {want}, got {kind}", column)


def column_array(table: pa.Table, column: str) -> pa.Array:
    """One contiguous array for a column (parquet row groups arrive as chunks)."""
    return table.column(column).combine_chunks()


def check_no_nulls(path: Path, column: str, array: pa.Array, row_base: int = 0) -> None:
    """Nulls have no meaning in any column, so reject them with the first row."""
    if array.null_count:
        _, at = first(array.is_null().to_numpy(zero_copy_only=False))
        raise error(path, f"{array.null_count} null values, first at row {row_base + at}", column)


def to_int64(path: Path, column: str, array: pa.Array) -> np.ndarray:
    """Any integer arrow array as writable int64 numpy (uint64 beyond int64 is an error)."""
    try:
        wide = array.cast(pa.int64())
    except pa.ArrowInvalid as exc:
        raise error(path, f"values do not fit in int64 ({exc})", column) from exc
    return np.asarray(wide.to_numpy(zero_copy_only=False, writable=True), dtype=np.int64)


def int_column(path: Path, table: pa.Table, column: str) -> np.ndarray:
    """A scalar integer column, null-checked, as int64."""
    array = column_array(table, column)
    check_no_nulls(path, column, array)
    return to_int64(path, column, array)


def list_parts(path: Path, column: str, array: pa.Array, row_base: int = 0) -> tuple[Any, Any]:
    """Flat values and (R + 1,) offsets of a list/large_list/fixed_size_list array.

    ``flatten`` and ``list_value_length`` respect slicing, unlike ``.values``/``.offsets``.
    """
    check_no_nulls(path, column, array, row_base)
    values = array.flatten()
    offsets = np.zeros(len(array) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(array).to_numpy(zero_copy_only=False), out=offsets[1:])
    if values.null_count:
        _, at = first(values.is_null().to_numpy(zero_copy_only=False))
        row = row_base + row_of(offsets, at)
        raise error(
            path, f"{values.null_count} null values inside lists, first at row {row}", column
        )
    return values, offsets


def fixed_width(path: Path, table: pa.Table, column: str, width: int) -> tuple[Any, int]:
    """Flat values of a list column that must hold exactly ``width`` entries on every row."""
    array = column_array(table, column)
    values, offsets = list_parts(path, column, array)
    lengths = np.diff(offsets)
    count, at = first(lengths != width)
    if count:
        raise error(
            path,
            f"expected exactly {width} values per row; {count} rows differ, "
            f"first at row {at} with {lengths[at]}",
            column,
        )
    return values, len(array)


# --------------------------------------------------------------------------------------------
# item_info.parquet


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


def load_items(path: Path | str) -> ItemTable:
    """Load item_info.parquet: tags and frozen vectors, row i = item i, row 0 = padding."""
    path = Path(path)
    parquet = open_parquet(path)
    try:
        schema = parquet.schema_arrow
        require_columns(path, schema, [ITEM_ID, ITEM_TAGS, ITEM_VECTOR])
        check_type(path, schema, ITEM_ID, pa.types.is_integer, "an integer type")
        check_type(path, schema, ITEM_TAGS, is_int_list, "a list of integers")
        check_type(path, schema, ITEM_VECTOR, is_float_list, "a list of floats")
        table = read_columns(parquet, path, [ITEM_ID, ITEM_TAGS, ITEM_VECTOR])
    finally:
        parquet.close()
    if table.num_rows < 2:
        raise error(path, f"{table.num_rows} rows; need the padding row 0 and at least one item")
    _check_item_index(path, int_column(path, table, ITEM_ID))
    items = ItemTable(tags=_item_tags(path, table), vectors=_item_vectors(path, table))
    _check_padding_row(path, items)
    return items


def _check_item_index(path: Path, ids: np.ndarray) -> None:
    """The model looks items up by row, so row i must be item i."""
    count, at = first(ids != np.arange(len(ids)))
    if count:
        raise error(
            path,
            f"rows must be indexed by item id (item_id == row number 0..{len(ids) - 1}); "
            f"{count} rows differ, first at row {at}: {ids[at]}",
            ITEM_ID,
        )


def _item_tags(path: Path, table: pa.Table) -> np.ndarray:
    """(N, 5) int64 tag ids; negative ids cannot index an embedding table."""
    values, rows = fixed_width(path, table, ITEM_TAGS, TAGS_PER_ITEM)
    tags = to_int64(path, ITEM_TAGS, values).reshape(rows, TAGS_PER_ITEM)
    count, at = first(tags.min(axis=1) < 0)
    if count:
        raise error(
            path, f"{count} rows with negative tag ids, first at row {at}: {tags[at]}", ITEM_TAGS
        )
    return tags


def _item_vectors(path: Path, table: pa.Table) -> np.ndarray:
    """(N, 128) float32 vectors; NaN/inf would poison every score that touches the item."""
    values, rows = fixed_width(path, table, ITEM_VECTOR, ITEM_VECTOR_DIM)
    with np.errstate(over="ignore"):  # float64 overflowing float32 is caught as non-finite below
        flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    vectors = flat.reshape(rows, ITEM_VECTOR_DIM)
    count, at = first(~np.isfinite(vectors).all(axis=1))
    if count:
        raise error(
            path,
            f"{count} rows with non-finite values (after conversion to float32), first at row {at}",
            ITEM_VECTOR,
        )
    return vectors


def _check_padding_row(path: Path, items: ItemTable) -> None:
    """Id 0 is padding everywhere, so its features must be zero to contribute nothing."""
    if items.tags[0].any():
        raise error(
            path, f"row 0 must be the all-zero padding item, got {items.tags[0]}", ITEM_TAGS
        )
    if items.vectors[0].any():
        raise error(
            path, "row 0 must be the all-zero padding item, has non-zero values", ITEM_VECTOR
        )


# --------------------------------------------------------------------------------------------
# train / valid / test.parquet


@dataclass(frozen=True, eq=False)
class SplitScalars:
    """A split's validated one-value-per-row columns."""

    user_ids: np.ndarray  # (R,) int64
    likes: np.ndarray  # (R,) int64 in 0..LEVEL_MAX
    views: np.ndarray  # (R,) int64 in 0..LEVEL_MAX
    item_ids: np.ndarray  # (R,) int64 target, 1..num_items - 1
    labels: np.ndarray | None  # (R,) float32 0/1; None when absent (or ignored)


class SplitFile:
    """One open split file whose columns and types are checked and whose scalars are read.

    Checks run in a fixed order, the same for every reader: the file opens, the columns exist and
    have the right types, it has rows, the scalar columns read; then ``histories`` streams and
    validates ``item_seq``; then ``scalars`` validates the scalar values. Opened by
    :func:`open_split`, which closes it.
    """

    def __init__(self, path: Path, labels: Labels = "required") -> None:
        self.path = path
        self._labels = labels
        self._parquet = open_parquet(path)
        try:
            schema = self._parquet.schema_arrow
            self.has_labels = labels != "ignored" and LABEL in schema.names
            required = [USER_ID, HISTORY, LIKES, VIEWS, ITEM_ID]
            require_columns(path, schema, required + ([LABEL] if labels == "required" else []))
            for column in SPLIT_SCALARS:
                check_type(path, schema, column, pa.types.is_integer, "an integer type")
            check_type(path, schema, HISTORY, is_int_list, "a list of integers")
            if self.has_labels:
                check_type(path, schema, LABEL, is_label, "a float, integer or bool 0/1 label")
            self.rows = int(self._parquet.metadata.num_rows)
            if self.rows == 0:
                raise error(path, "no rows (empty split)")
            scalars = [*SPLIT_SCALARS, *([LABEL] if self.has_labels else [])]
            self._table = read_columns(self._parquet, path, scalars)
        except BaseException:
            self._parquet.close()
            raise

    def close(self) -> None:
        self._parquet.close()

    def histories(
        self, num_items: int, batch_rows: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Stream item_seq: per record batch, its first row, int64 ids and (R + 1,) offsets.

        Every id must be an item of item_info (0 is padding). Bad ids are counted over the whole
        file before failing, so the message gives the true total; no batch is yielded after the
        first bad one.
        """
        start, bad_count, first_bad = 0, 0, ""
        try:
            for batch in self._parquet.iter_batches(batch_size=batch_rows, columns=[HISTORY]):
                array = batch.column(0)
                values, offsets = list_parts(self.path, HISTORY, array, start)
                ids = to_int64(self.path, HISTORY, values)
                count, at = first((ids < 0) | (ids >= num_items))
                if count and not bad_count:
                    first_bad = f"first at row {start + row_of(offsets, at)}: {ids[at]}"
                bad_count += count
                if not bad_count:
                    yield start, ids, offsets
                start += len(array)
        except READ_ERRORS as exc:
            raise error(self.path, f"cannot read ({exc})", HISTORY) from exc
        if bad_count:
            raise error(
                self.path,
                f"{bad_count} ids outside item_info (0..{num_items - 1}), {first_bad}",
                HISTORY,
            )

    def scalars(self, num_items: int) -> SplitScalars:
        """The scalar columns, validated: levels in 0..LEVEL_MAX, targets real items, 0/1 labels."""
        path, table = self.path, self._table
        return SplitScalars(
            user_ids=int_column(path, table, USER_ID),
            likes=_level_column(path, table, LIKES),
            views=_level_column(path, table, VIEWS),
            item_ids=_target_column(path, table, num_items),
            labels=_label_column(path, table, self._labels) if self.has_labels else None,
        )


@contextmanager
def open_split(path: Path, labels: Labels = "required") -> Iterator[SplitFile]:
    """A :class:`SplitFile` for the ``with`` block, closed after it."""
    split = SplitFile(path, labels)
    try:
        yield split
    finally:
        split.close()


def _level_column(path: Path, table: pa.Table, column: str) -> np.ndarray:
    """likes_level / views_level: 1..10, 0 = unknown."""
    levels = int_column(path, table, column)
    check_range(path, column, levels, 0, LEVEL_MAX, "levels outside the range")
    return levels


def _target_column(path: Path, table: pa.Table, num_items: int) -> np.ndarray:
    """The target must be a real item (never the padding id 0)."""
    targets = int_column(path, table, ITEM_ID)
    check_range(path, ITEM_ID, targets, 1, num_items - 1, "target ids outside item_info")
    return targets


def _label_column(path: Path, table: pa.Table, labels: Labels) -> np.ndarray | None:
    """0/1 labels as float32; an all-null placeholder column means "no labels" unless required."""
    array = column_array(table, LABEL)
    if labels != "required" and array.null_count == len(array):
        return None
    check_no_nulls(path, LABEL, array)
    values = array.to_numpy(zero_copy_only=False)
    count, at = first(~((values == 0) | (values == 1)))
    if count:
        raise error(path, f"{count} labels not 0/1, first at row {at}: {values[at]}", LABEL)
    return values.astype(np.float32)


def history_rows(
    path: Path, rows: np.ndarray, batch_rows: int
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Read back the item_seq lists of chosen ``rows`` (ascending) of a split already validated.

    Per record batch holding any of them: the slice of ``rows`` it holds, their int64 ids and
    (len + 1,) offsets.
    """
    parquet = open_parquet(path)
    try:
        start = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[HISTORY]):
            low, high = (int(i) for i in np.searchsorted(rows, [start, start + batch.num_rows]))
            if high > low:
                lists = batch.column(0).take(pa.array(rows[low:high] - start))
                values, offsets = list_parts(path, HISTORY, lists, start)
                yield slice(low, high), to_int64(path, HISTORY, values), offsets
            start += batch.num_rows
    except READ_ERRORS as exc:
        raise error(path, f"cannot read ({exc})", HISTORY) from exc
    finally:
        parquet.close()
