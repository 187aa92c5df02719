"""Read a MicroLens-format dataset folder into the feature set a bulk load writes.

The rules (also in docs/operations.md, "Feature store"):

* **Item features**: tags and vectors from ``item_info.parquet``.
* **Item levels**: an item's likes/views levels are attributes carried on the rows where it is the
  target, and they drift over time, so an item takes the values of its *latest* such row: splits
  in time order (train, then valid, then test) and, within a file, the last row. An item never
  seen as a target gets level 0 ("unknown", as in the data).
* **User history**: a user's latest history comes from the latest split the user appears in, and
  there from the row with the longest history, counted in non-padding ids before any trimming
  (rows within a split are not time ordered, but a history only grows, so the longest is the
  newest); ties go to the later row. Padding zeros are dropped and the last ``history_len`` ids
  are kept, oldest first.

Every file is validated by :mod:`contract.dataset`, the same validator training reads through, so
the store accepts exactly the data a model can be trained on. Everything is vectorised: one pass
reads the small columns and counts each row's history, a second pass reads only the chosen rows'
histories. Memory stays at a few arrays of one value per row.

Needs pyarrow (the ``load`` extra): the bulk loader imports this module, the service never does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.dataset import (
    ITEM_INFO_FILE,
    SPLIT_NAMES,
    DataError,
    check_folder,
    check_history_len,
    history_rows,
    load_items,
    open_split,
)

from .layout import MAX_ID, pack_items

#: Rows decoded per step when streaming item_seq: bounds the temporaries.
_BATCH_ROWS = 1 << 16


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
    check_folder(root)
    check_history_len(history_len)
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


def _scan_split(path: Path, num_items: int) -> _SplitScan:
    with open_split(path, labels="ignored") as split:
        lengths = np.empty(split.rows, dtype=np.int64)
        for start, values, offsets in split.histories(num_items, _BATCH_ROWS):
            lengths[start : start + len(offsets) - 1] = _non_padding_counts(values, offsets)
        scalars = split.scalars(num_items)
    return _SplitScan(
        path=path,
        users=scalars.user_ids,
        lengths=lengths,
        targets=scalars.item_ids,
        likes=scalars.likes,
        views=scalars.views,
    )


def _non_padding_counts(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each row's number of non-padding history ids."""
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return lengths - np.bincount(rows[values == 0], minlength=len(lengths))


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
        for held, values, offsets in history_rows(scan.path, rows, _BATCH_ROWS):
            kept, kept_counts = _tail_non_padding(values, offsets, limit)
            user_index.append(users[held])
            counts.append(kept_counts)
            pieces.append(kept)
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
