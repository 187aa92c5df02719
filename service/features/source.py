"""Read a MicroLens-format dataset folder into the feature set a bulk load writes.

The rules (also in the README):

* **Item features**: tags and vectors from ``item_info.parquet`` (validated by model.data).
* **Item levels**: an item's likes/views levels are attributes carried on the rows where it is the
  target, and they drift over time, so an item takes the values of its *latest* such row: splits
  in time order (train, then valid, then test) and, within a file, the last row. An item never
  seen as a target gets level 0 ("unknown", as in the data).
* **User history**: a user's latest history comes from the latest split the user appears in, and
  there from the row with the longest history, counted in non-padding ids before any trimming
  (rows within a split are not time ordered, but a history only grows, so the longest is the
  newest); ties go to the later row. Padding zeros are dropped and the last ``history_len`` ids
  are kept, oldest first.

Everything is vectorised: one pass reads the small columns and counts each row's history, a second
pass reads only the chosen rows' histories. Memory stays at a few arrays of one value per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.schema import LEVEL_VOCAB
from model.data import (
    HISTORY,
    ITEM_ID,
    ITEM_INFO_FILE,
    LIKES,
    SPLIT_NAMES,
    USER_ID,
    VIEWS,
    DataError,
    load_items,
)

from .layout import MAX_ID, pack_items

#: Rows decoded per step when streaming item_seq: bounds the temporaries.
_BATCH_ROWS = 1 << 16
_READ_ERRORS = (OSError, pa.ArrowException)


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """What one bulk load writes: item records and each user's latest history."""

    source: Path
    history_len: int
    item_records: np.ndarray  # (N,) ITEM_RECORD_DTYPE, row i = item i, row 0 = padding
    user_ids: np.ndarray  # (U,) int64, ascending, distinct
    history_offsets: np.ndarray  # (U + 1,) int64 into history_items
    history_items: np.ndarray  # (H,) int32, each user's ids oldest first
    rows: int  # dataset rows read

    @property
    def item_vocab(self) -> int:
        """Item-id vocabulary including the padding row 0."""
        return len(self.item_records)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def history_of(self, index: int) -> np.ndarray:
        """The history of ``user_ids[index]``, int32 oldest first."""
        start, end = self.history_offsets[index], self.history_offsets[index + 1]
        return self.history_items[start:end]


@dataclass(frozen=True, eq=False)
class _SplitScan:
    """Pass one over a split: one value per row."""

    path: Path
    users: np.ndarray  # (R,) int64
    lengths: np.ndarray  # (R,) int64 non-padding history length
    targets: np.ndarray  # (R,) int64
    likes: np.ndarray  # (R,) int64
    views: np.ndarray  # (R,) int64


def read_feature_set(root: Path | str, history_len: int) -> FeatureSet:
    """Read and validate a dataset folder; raises DataError naming the file and problem."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if history_len < 1:
        raise ValueError(f"history_len must be positive, got {history_len}")
    items = load_items(root / ITEM_INFO_FILE)
    if items.tags.max() > MAX_ID:
        raise DataError(f"{root / ITEM_INFO_FILE}: tag ids above {MAX_ID} do not fit int32")
    paths = [root / f"{name}.parquet" for name in SPLIT_NAMES]
    paths = [path for path in paths if path.exists()]
    if not paths:
        raise DataError(f"{root}: no split file (expected any of {list(SPLIT_NAMES)} .parquet)")
    scans = [_scan_split(path, items.num_items) for path in paths]
    likes, views = _latest_levels(scans, items.num_items)
    user_ids, chosen = _latest_rows(scans)
    offsets, values = _read_histories(scans, chosen, history_len)
    return FeatureSet(
        source=root,
        history_len=history_len,
        item_records=pack_items(items.tags, items.vectors, likes, views),
        user_ids=user_ids,
        history_offsets=offsets,
        history_items=values,
        rows=sum(len(scan.users) for scan in scans),
    )


# --------------------------------------------------------------------------------------------
# Pass one: scalars and history lengths


def _error(path: Path, problem: str, column: str | None = None) -> DataError:
    """model.data's message format: ``<file>: column '<name>': <problem>``."""
    return DataError(f"{path}: column '{column}': {problem}" if column else f"{path}: {problem}")


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (*_READ_ERRORS, ValueError) as exc:
        raise _error(path, f"not a readable parquet file ({exc})") from exc


def _check_columns(path: Path, schema: pa.Schema) -> None:
    missing = [c for c in (USER_ID, HISTORY, LIKES, VIEWS, ITEM_ID) if c not in schema.names]
    if missing:
        raise _error(path, f"missing columns {missing} (columns present: {schema.names})")
    for column in (USER_ID, LIKES, VIEWS, ITEM_ID):
        if not pa.types.is_integer(schema.field(column).type):
            raise _error(path, f"expected an integer type, got {schema.field(column).type}", column)
    kind = schema.field(HISTORY).type
    is_list = (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )
    if not (is_list and pa.types.is_integer(kind.value_type)):
        raise _error(path, f"expected a list of integers, got {kind}", HISTORY)


def _int64(path: Path, column: str, array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as int64 numpy."""
    if array.null_count:
        raise _error(path, f"{array.null_count} null values", column)
    try:
        wide = array.cast(pa.int64())
    except pa.ArrowInvalid as exc:
        raise _error(path, f"values do not fit in int64 ({exc})", column) from exc
    return np.asarray(wide.to_numpy(), dtype=np.int64)


def _check_range(path: Path, column: str, values: np.ndarray, low: int, high: int) -> None:
    bad = (values < low) | (values > high)
    if bad.any():
        first = int(np.argmax(bad))
        raise _error(
            path,
            f"{int(bad.sum())} values outside {low}..{high}, first at row {first}: {values[first]}",
            column,
        )


def _scan_split(path: Path, num_items: int) -> _SplitScan:
    parquet = _open(path)
    try:
        _check_columns(path, parquet.schema_arrow)
        if parquet.metadata.num_rows == 0:
            raise _error(path, "no rows (empty split)")
        try:
            table = parquet.read(columns=[USER_ID, LIKES, VIEWS, ITEM_ID])
        except _READ_ERRORS as exc:
            raise _error(path, f"cannot read ({exc})") from exc
        lengths = _history_lengths(parquet, path, num_items)
    finally:
        parquet.close()
    scan = _SplitScan(
        path=path,
        users=_int64(path, USER_ID, table.column(USER_ID)),
        lengths=lengths,
        targets=_int64(path, ITEM_ID, table.column(ITEM_ID)),
        likes=_int64(path, LIKES, table.column(LIKES)),
        views=_int64(path, VIEWS, table.column(VIEWS)),
    )
    _check_range(path, ITEM_ID, scan.targets, 1, num_items - 1)
    _check_range(path, LIKES, scan.likes, 0, LEVEL_VOCAB - 1)
    _check_range(path, VIEWS, scan.views, 0, LEVEL_VOCAB - 1)
    return scan


def _list_parts(path: Path, array: pa.Array, row_base: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat int64 values and (R + 1,) offsets of a list array, with nulls and ranges checked."""
    if array.null_count:
        raise _error(path, f"{array.null_count} null lists in rows {row_base}..", HISTORY)
    flat = array.flatten()
    if flat.null_count:
        raise _error(path, f"null ids inside lists in rows {row_base}..", HISTORY)
    offsets = np.zeros(len(array) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(array).to_numpy(zero_copy_only=False), out=offsets[1:])
    return _int64(path, HISTORY, flat), offsets


def _history_lengths(parquet: pq.ParquetFile, path: Path, num_items: int) -> np.ndarray:
    """Each row's number of non-padding history ids, validating every id on the way."""
    out = np.empty(parquet.metadata.num_rows, dtype=np.int64)
    start = 0
    try:
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[HISTORY]):
            values, offsets = _list_parts(path, batch.column(0), start)
            bad = (values < 0) | (values >= num_items)
            if bad.any():
                row = start + int(np.searchsorted(offsets, int(np.argmax(bad)), side="right")) - 1
                raise _error(
                    path,
                    f"{int(bad.sum())} ids outside item_info (0..{num_items - 1}) in rows from "
                    f"{start}, first at row {row}: {values[np.argmax(bad)]}",
                    HISTORY,
                )
            lengths = np.diff(offsets)
            rows = np.repeat(np.arange(len(lengths)), lengths)
            zeros = np.bincount(rows[values == 0], minlength=len(lengths))
            out[start : start + len(lengths)] = lengths - zeros
            start += len(lengths)
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read ({exc})", HISTORY) from exc
    return out


# --------------------------------------------------------------------------------------------
# The rules: latest levels per item, latest row per user


def _latest_levels(scans: Sequence[_SplitScan], num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Likes/views of each item's latest target row (splits in order, last row in a file)."""
    targets = np.concatenate([scan.targets for scan in scans])
    likes = np.concatenate([scan.likes for scan in scans])
    views = np.concatenate([scan.views for scan in scans])
    reversed_targets = targets[::-1]
    items, first_in_reversed = np.unique(reversed_targets, return_index=True)
    latest = len(targets) - 1 - first_in_reversed
    out_likes = np.zeros(num_items, dtype=np.uint8)
    out_views = np.zeros(num_items, dtype=np.uint8)
    out_likes[items] = likes[latest]
    out_views[items] = views[latest]
    return out_likes, out_views


def _latest_rows(scans: Sequence[_SplitScan]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct user ids (ascending) and, per split, (row, user index) pairs of chosen rows.

    Rows sorted by (user, split, length, row): each user's last row is the chosen one.
    """
    users = np.concatenate([scan.users for scan in scans])
    split = np.concatenate([np.full(len(s.users), k, dtype=np.int64) for k, s in enumerate(scans)])
    row = np.concatenate([np.arange(len(scan.users), dtype=np.int64) for scan in scans])
    lengths = np.concatenate([scan.lengths for scan in scans])
    order = np.lexsort((row, lengths, split, users))
    sorted_users = users[order]
    last = np.flatnonzero(np.append(sorted_users[1:] != sorted_users[:-1], True))
    best = order[last]  # one per user, users ascending
    user_ids = sorted_users[last]
    chosen = []
    for k in range(len(scans)):
        mine = np.flatnonzero(split[best] == k)
        rows = row[best[mine]]
        by_row = np.argsort(rows, kind="stable")
        chosen.append(np.stack([rows[by_row], mine[by_row]]))
    return user_ids, chosen


# --------------------------------------------------------------------------------------------
# Pass two: the chosen rows' histories


def _tail_non_padding(
    values: np.ndarray, offsets: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, its last ``limit`` non-zero ids (order kept) and how many that is."""
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    keep = values != 0
    kept, kept_rows = values[keep], rows[keep]
    counts = np.bincount(kept_rows, minlength=len(offsets) - 1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    position = np.arange(len(kept)) - starts[kept_rows]
    take = position >= (counts - limit)[kept_rows]
    return kept[take], np.minimum(counts, limit)


def _read_histories(
    scans: Sequence[_SplitScan], chosen: Sequence[np.ndarray], limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (U + 1,) and int32 values of every user's history, users in index order."""
    user_index, counts, pieces = [], [], []
    for scan, pairs in zip(scans, chosen, strict=True):
        rows, users = pairs
        parquet = _open(scan.path)
        try:
            start = 0
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[HISTORY]):
                low, high = np.searchsorted(rows, [start, start + batch.num_rows])
                if high > low:
                    lists = batch.column(0).take(pa.array(rows[low:high] - start))
                    values, offsets = _list_parts(scan.path, lists, start)
                    kept, kept_counts = _tail_non_padding(values, offsets, limit)
                    user_index.append(users[low:high])
                    counts.append(kept_counts)
                    pieces.append(kept)
                start += batch.num_rows
        except _READ_ERRORS as exc:
            raise _error(scan.path, f"cannot read ({exc})", HISTORY) from exc
        finally:
            parquet.close()
    return _order_by_user(user_index, counts, pieces)


def _order_by_user(
    user_index: list[np.ndarray], counts: list[np.ndarray], pieces: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder per-row histories (in file order) into user order as one flat array."""
    if not pieces:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    index = np.concatenate(user_index)
    count = np.concatenate(counts)
    flat = np.concatenate(pieces)
    old_starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    order = np.argsort(index, kind="stable")
    new_counts = count[order]
    new_offsets = np.concatenate([[0], np.cumsum(new_counts)]).astype(np.int64)
    gather = np.repeat(old_starts[order] - new_offsets[:-1], new_counts) + np.arange(len(flat))
    return new_offsets, flat[gather].astype(np.int32)
