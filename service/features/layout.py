"""Key layout and binary record formats of the Redis feature store (layout format 1).

Why this shape: one request must cost one network round trip, so everything a request reads is
addressable without a lookup (key names are computed from ids), records are fixed binary layouts
that numpy reads without a per-field parse, and a feature set is written under a version that a
reader only ever sees complete.

Keys, for prefix ``P`` (``FEATURE_KEY_PREFIX``, default ``qin``) and version ``V`` (an integer):

============================  ======  =========================================================
key                           type    content
============================  ======  =========================================================
``{P}:live``                  string  the live version ``V``: readers follow it, one SET switches
``{P}:loading``               string  version being loaded (expires unless the loader refreshes it)
``{P}:next``                  string  version counter (INCR)
``{P}:versions``              zset    every version that may own keys, scored by version
``{P}:meta:V``                hash    format, buckets, history_len, item_vocab, counts, state
``{P}:pending:V``             list    appends made while V was loading, replayed before the switch
``P:V:items``                 hash    field item id (decimal) -> 536-byte item record
``P:V:h:{bB}``                hash    field user id (decimal) -> history, B = user_id mod 4096
============================  ======  =========================================================

Item record (536 bytes, little-endian, 4-byte aligned so numpy views it in place)::

    u8 format (= 1) | u8 likes_level | u8 views_level | u8 reserved (0)
    5 x int32 tags (0-padded) | 128 x float32 item_emb_d128

History: little-endian int32 item ids, oldest first, at most the version's ``history_len``.

A version is deleted as a unit without SCAN: its keys are exactly ``P:V:items``, the 4096 bucket
hashes, ``{P}:meta:V`` and ``{P}:pending:V``, so UNLINK of that fixed list frees it (Redis frees
the big hashes in a background thread).

Redis Cluster: the text in braces is the hash tag that picks the slot. All control keys share the
``{P}`` slot, so the begin/switch steps touch one slot; a user's history hashes of every version
share the ``{bB}`` slot (4096 tags spread users over the cluster); each version's item hash is one
slot, so a request's item HMGET is one command. A request reads three slots (the live key, the
user's bucket, the version's items): redis-py's cluster pipeline groups them per node and sends
the groups concurrently, which still costs one round trip of wall time. On one Redis the APPEND,
DRAIN and SWITCH scripts build history key names at run time; on Cluster (where a script may
only touch one slot) each splits along the slots: an append is a ``{P}``-slot script (read the
live version, log to ``{P}:pending:V`` if V is loading) followed by a ``{bB}``-slot script
(read-concat-trim-write); the loader replays the log one history at a time, and the switch script
makes V live only if the log is empty, else the loader replays again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from contract.schema import ITEM_VECTOR_DIM, TAGS_PER_ITEM

from .errors import CorruptRecord

#: The layout this module reads and writes; stored in every version's meta hash.
LAYOUT_FORMAT: Final = 1
#: User histories are spread over this many hashes: small enough to delete a version with one
#: fixed list of keys, large enough to spread users over Cluster slots (a few hundred per hash at
#: a million users keeps every hash operation O(1) and cheap).
USER_BUCKETS: Final = 4096
#: Item ids and tag ids are stored as int32.
MAX_ID: Final = 2**31 - 1

ITEM_RECORD_DTYPE: Final = np.dtype(
    [
        ("format", "u1"),
        ("likes", "u1"),
        ("views", "u1"),
        ("reserved", "u1"),
        ("tags", "<i4", (TAGS_PER_ITEM,)),
        ("vector", "<f4", (ITEM_VECTOR_DIM,)),
    ]
)
ITEM_RECORD_BYTES: Final = ITEM_RECORD_DTYPE.itemsize
#: Record format byte of a stored item. The in-process cache marks absent items with 0.
ITEM_FORMAT: Final = 1
HISTORY_DTYPE: Final = np.dtype("<i4")


class Keys:
    """Key names for one prefix. Versions are decimal strings (as Redis returns them)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or any(char in prefix for char in "{} \t\r\n"):
            raise ValueError(f"invalid key prefix {prefix!r}: no braces or whitespace")
        self.prefix = prefix
        self.tag = f"{{{prefix}}}"
        self.live = f"{self.tag}:live"
        self.loading = f"{self.tag}:loading"
        self.next = f"{self.tag}:next"
        self.versions = f"{self.tag}:versions"

    def meta(self, version: str) -> str:
        return f"{self.tag}:meta:{version}"

    def pending(self, version: str) -> str:
        return f"{self.tag}:pending:{version}"

    def items(self, version: str) -> str:
        return f"{self.prefix}:{version}:items"

    def bucket(self, version: str, bucket: int) -> str:
        return f"{self.prefix}:{version}:h:{{b{bucket}}}"

    def history(self, version: str, user_id: int) -> str:
        return self.bucket(version, user_bucket(user_id))

    def version_keys(self, version: str) -> list[str]:
        """Every key a version can own: deleting these deletes the version."""
        buckets = [self.bucket(version, bucket) for bucket in range(USER_BUCKETS)]
        return [self.items(version), self.meta(version), self.pending(version), *buckets]


def user_bucket(user_id: int) -> int:
    """The history hash of a user (Python's modulo is never negative for a positive divisor)."""
    return user_id % USER_BUCKETS


# --------------------------------------------------------------------------------------------
# Item records


@dataclass(frozen=True, eq=False)
class ItemFeatures:
    """Features of a list of items as model-ready columns; unknown items: id 0, all zero."""

    ids: np.ndarray  # (n,) int64
    tags: np.ndarray  # (n, 5) int64
    vectors: np.ndarray  # (n, 128) float32
    likes: np.ndarray  # (n,) int64, 0..10
    views: np.ndarray  # (n,) int64, 0..10

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> ItemFeatures:
        """The rows at ``index`` (positions or a boolean mask), as new arrays."""
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        return ItemFeatures(
            ids=np.take(self.ids, index),
            tags=np.take(self.tags, index, axis=0),
            vectors=np.take(self.vectors, index, axis=0),
            likes=np.take(self.likes, index),
            views=np.take(self.views, index),
        )

    def put(self, where: np.ndarray, rows: ItemFeatures) -> None:
        """Write ``rows`` into the rows at ``where`` (positions or a boolean mask), in place."""
        self.ids[where] = rows.ids
        self.tags[where] = rows.tags
        self.vectors[where] = rows.vectors
        self.likes[where] = rows.likes
        self.views[where] = rows.views

    @staticmethod
    def concat(parts: list[ItemFeatures]) -> ItemFeatures:
        return ItemFeatures(
            ids=np.concatenate([p.ids for p in parts]),
            tags=np.concatenate([p.tags for p in parts]),
            vectors=np.concatenate([p.vectors for p in parts]),
            likes=np.concatenate([p.likes for p in parts]),
            views=np.concatenate([p.views for p in parts]),
        )

    @staticmethod
    def zeros(n: int) -> ItemFeatures:
        """n padding items."""
        return ItemFeatures(
            ids=np.zeros(n, dtype=np.int64),
            tags=np.zeros((n, TAGS_PER_ITEM), dtype=np.int64),
            vectors=np.zeros((n, ITEM_VECTOR_DIM), dtype=np.float32),
            likes=np.zeros(n, dtype=np.int64),
            views=np.zeros(n, dtype=np.int64),
        )

    @staticmethod
    def from_records(ids: np.ndarray, records: np.ndarray) -> ItemFeatures:
        """Columns of parsed records; records with format 0 (absent) become padding, id 0."""
        known = records["format"] == ITEM_FORMAT
        return ItemFeatures(
            ids=np.where(known, ids, 0).astype(np.int64),
            tags=records["tags"].astype(np.int64),
            vectors=np.ascontiguousarray(records["vector"], dtype=np.float32),
            likes=records["likes"].astype(np.int64),
            views=records["views"].astype(np.int64),
        )


def pack_items(
    tags: np.ndarray, vectors: np.ndarray, likes: np.ndarray, views: np.ndarray
) -> np.ndarray:
    """(N,) structured records from per-item arrays; ``.tobytes()`` of row i is item i's value."""
    records = np.zeros(len(tags), dtype=ITEM_RECORD_DTYPE)
    records["format"] = ITEM_FORMAT
    records["likes"] = likes
    records["views"] = views
    records["tags"] = tags
    records["vector"] = vectors
    return records


def unpack_items(values: list[bytes | None], ids: np.ndarray, key: str) -> np.ndarray:
    """Records for HMGET replies, absent items (None) as format-0 padding records.

    Raises CorruptRecord naming the key and the first bad item, so one bad write is found fast.
    """
    records = np.zeros(len(values), dtype=ITEM_RECORD_DTYPE)
    present = [index for index, value in enumerate(values) if value is not None]
    if not present:
        return records
    sizes = [len(values[index]) for index in present]  # type: ignore[arg-type]
    if any(size != ITEM_RECORD_BYTES for size in sizes):
        first = next(i for i, size in zip(present, sizes, strict=True) if size != ITEM_RECORD_BYTES)
        raise CorruptRecord(
            f"{key}: item {int(ids[first])} has {len(values[first] or b'')} bytes, "
            f"expected {ITEM_RECORD_BYTES} (layout format {LAYOUT_FORMAT})"
        )
    joined = b"".join(values[index] for index in present)  # type: ignore[misc]
    parsed = np.frombuffer(joined, dtype=ITEM_RECORD_DTYPE)
    bad = parsed["format"] != ITEM_FORMAT
    if bad.any():
        first = present[int(np.argmax(bad))]
        raise CorruptRecord(
            f"{key}: item {int(ids[first])} has record format {int(parsed['format'][bad][0])}, "
            f"expected {ITEM_FORMAT}"
        )
    records[present] = parsed
    return records


# --------------------------------------------------------------------------------------------
# Histories


def pack_history(item_ids: np.ndarray | list[int]) -> bytes:
    """Item ids (oldest first) as the stored int32 string; ids must lie in 1..2**31-1."""
    ids = np.asarray(item_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"a history is a 1-D list of item ids, got shape {ids.shape}")
    if len(ids) and (ids.min() < 1 or ids.max() > MAX_ID):
        raise ValueError(f"item ids must lie in 1..{MAX_ID}, got {ids.min()}..{ids.max()}")
    return ids.astype(HISTORY_DTYPE).tobytes()


def unpack_history(value: bytes | None, key: str, user_id: int) -> np.ndarray | None:
    """A stored history as int64 ids oldest first; None when the user has none (unknown)."""
    if value is None:
        return None
    if len(value) % HISTORY_DTYPE.itemsize:
        raise CorruptRecord(
            f"{key}: history of user {user_id} has {len(value)} bytes, not a multiple of 4"
        )
    return np.frombuffer(value, dtype=HISTORY_DTYPE).astype(np.int64)
