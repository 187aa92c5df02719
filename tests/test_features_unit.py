"""Feature store, pure parts: record packing, key layout, item cache, dataset rules (no Redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from redis.crc import key_slot

from contract.dataset import DataError, load_items
from model.synth import ROW_SCHEMA
from service.features.cache import ItemCache
from service.features.errors import CorruptRecord, redacted
from service.features.layout import (
    ITEM_RECORD_BYTES,
    ITEM_RECORD_DTYPE,
    USER_BUCKETS,
    ItemFeatures,
    Keys,
    pack_history,
    pack_items,
    unpack_history,
    unpack_items,
)
from service.features.source import read_feature_set
from service.settings import Settings

# --------------------------------------------------------------------------------------------
# The oracle: the documented rules, written as plain Python loops over the rows


def expected_features(root: Path, history_len: int) -> dict[str, Any]:
    """Histories and levels by the README's rules, computed row by row."""
    items = load_items(root / "item_info.parquet")
    likes: dict[int, int] = {}
    views: dict[int, int] = {}
    best: dict[int, tuple[tuple[int, int, int], list[int]]] = {}
    for rank, name in enumerate(("train", "valid", "test")):
        path = root / f"{name}.parquet"
        if not path.exists():
            continue
        for row_index, row in enumerate(pq.read_table(path).to_pylist()):
            likes[row["item_id"]] = row["likes_level"]
            views[row["item_id"]] = row["views_level"]
            history = [item for item in row["item_seq"] if item != 0]
            key = (rank, len(history), row_index)
            user = row["user_id"]
            if user not in best or key >= best[user][0]:
                best[user] = (key, history)
    return {
        "tags": items.tags,
        "vectors": items.vectors,
        "likes": likes,
        "views": views,
        "histories": {user: history[-history_len:] for user, (_, history) in best.items()},
    }


def test_source_follows_the_rules(tiny_data: Path) -> None:
    features = read_feature_set(tiny_data, history_len=16)
    expected = expected_features(tiny_data, 16)
    assert features.user_ids.tolist() == sorted(expected["histories"])
    for index, user in enumerate(features.user_ids.tolist()):
        assert features.history_of(index).tolist() == expected["histories"][user]
    records = features.item_records
    for item in range(1, features.item_vocab):
        assert records["likes"][item] == expected["likes"].get(item, 0)
        assert records["views"][item] == expected["views"].get(item, 0)
    np.testing.assert_array_equal(records["tags"], expected["tags"])
    np.testing.assert_array_equal(records["vector"], expected["vectors"])
    assert records["format"][0] == 1 and not records["vector"][0].any()


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), path)


def _row(user: int, seq: list[int], item: int, likes: int = 5, views: int = 5) -> dict[str, Any]:
    return {
        "user_id": user,
        "item_seq": seq,
        "likes_level": likes,
        "views_level": views,
        "item_id": item,
        "label": 1.0,
    }


@pytest.fixture
def handmade(tiny_data: Path, tmp_path: Path) -> Path:
    """tiny_data's item_info with hand-written rows that exercise every tie rule."""
    root = tmp_path / "handmade"
    root.mkdir()
    (root / "item_info.parquet").write_bytes((tiny_data / "item_info.parquet").read_bytes())
    _write_rows(
        root / "train.parquet",
        [
            _row(1, [0, 0, 5, 6, 7, 8], 9, likes=1),  # longest in train, but valid wins
            _row(2, [5, 6], 9, likes=2),
            _row(2, [7, 8], 10, likes=3),  # tie on length: the later row wins
            _row(3, [1, 2, 3, 4, 5, 6, 7], 11),  # longest before trimming
            _row(3, [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], 11),  # longer list, fewer real ids
        ],
    )
    _write_rows(root / "valid.parquet", [_row(1, [5], 12, likes=7), _row(4, [], 9, likes=9)])
    return root


def test_source_tie_rules(handmade: Path) -> None:
    features = read_feature_set(handmade, history_len=4)
    histories = {
        int(user): features.history_of(i).tolist() for i, user in enumerate(features.user_ids)
    }
    assert histories == {1: [5], 2: [7, 8], 3: [4, 5, 6, 7], 4: []}
    likes = features.item_records["likes"]
    assert likes[9] == 9  # latest split wins over train
    assert likes[10] == 3 and likes[12] == 7 and likes[13] == 0  # 13 never a target: unknown


def test_source_rejects_bad_data(handmade: Path) -> None:
    _write_rows(handmade / "test.parquet", [_row(1, [5, 99_999], 9)])
    with pytest.raises(DataError, match=r"test\.parquet: column 'item_seq': .*outside item_info"):
        read_feature_set(handmade, history_len=4)
    _write_rows(handmade / "test.parquet", [_row(1, [5], 9, likes=11)])
    with pytest.raises(DataError, match=r"column 'likes_level'"):
        read_feature_set(handmade, history_len=4)
    for name in ("train", "valid", "test"):
        (handmade / f"{name}.parquet").unlink()
    with pytest.raises(DataError, match="no split file"):
        read_feature_set(handmade, history_len=4)
    with pytest.raises(DataError, match="not found"):
        read_feature_set(handmade / "missing", history_len=4)


# --------------------------------------------------------------------------------------------
# Records and keys


def test_item_records_round_trip() -> None:
    rng = np.random.default_rng(0)
    tags = rng.integers(0, 1000, size=(4, 5))
    vectors = rng.standard_normal((4, 128)).astype(np.float32)
    records = pack_items(tags, vectors, np.array([0, 1, 10, 3]), np.array([2, 0, 4, 10]))
    assert ITEM_RECORD_BYTES == 536 == len(records[1].tobytes())
    values: list[bytes | None] = [records[i].tobytes() for i in range(4)]
    values[2] = None
    back = unpack_items(values, np.arange(4), "k")
    np.testing.assert_array_equal(back["vector"][[0, 1, 3]], vectors[[0, 1, 3]])
    np.testing.assert_array_equal(back["tags"][3], tags[3])
    assert back["likes"].tolist() == [0, 1, 0, 3] and back["format"].tolist() == [1, 1, 0, 1]


def test_corrupt_records_are_named() -> None:
    good = pack_items(np.zeros((1, 5)), np.zeros((1, 128)), np.zeros(1), np.zeros(1))[0].tobytes()
    with pytest.raises(CorruptRecord, match="items: item 7 has 10 bytes, expected 536"):
        unpack_items([good, b"x" * 10], np.array([3, 7]), "items")
    with pytest.raises(CorruptRecord, match="item 3 has record format 9"):
        unpack_items([b"\x09" + good[1:]], np.array([3]), "items")
    with pytest.raises(CorruptRecord, match="user 5 has 7 bytes"):
        unpack_history(b"x" * 7, "h", 5)


def test_history_packing() -> None:
    packed = pack_history([3, 1, 2**31 - 1])
    assert packed == np.array([3, 1, 2**31 - 1], "<i4").tobytes()
    assert unpack_history(packed, "h", 1).tolist() == [3, 1, 2**31 - 1]  # type: ignore[union-attr]
    assert unpack_history(None, "h", 1) is None
    for bad in ([0], [-1], [2**31]):
        with pytest.raises(ValueError, match="item ids must lie in"):
            pack_history(bad)


def test_keys_group_by_hash_tag_for_cluster() -> None:
    keys = Keys("qin")
    control = {key_slot(k.encode()) for k in (keys.live, keys.loading, keys.meta("3"))}
    assert len(control) == 1  # begin/switch scripts touch one slot
    assert key_slot(keys.history("3", 42).encode()) == key_slot(keys.history("4", 42).encode())
    assert keys.history("3", 42) == keys.bucket("3", 42 % USER_BUCKETS)
    assert keys.history("3", -1) == "qin:3:h:{b4095}"
    assert len(keys.version_keys("3")) == USER_BUCKETS + 3
    with pytest.raises(ValueError, match="no braces"):
        Keys("a{b}")


def test_redacted_url_hides_password() -> None:
    assert redacted("redis://:secret@host:6380/2") == "redis://host:6380/2"


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().redis_url == "redis://localhost:6379/0"
    monkeypatch.setenv("ITEM_CACHE_SIZE", "5")
    monkeypatch.setenv("FEATURE_KEY_PREFIX", "x{y}")
    with pytest.raises(ValueError, match="feature_key_prefix"):
        Settings()


# --------------------------------------------------------------------------------------------
# Item cache


def _features(ids: np.ndarray) -> ItemFeatures:
    """Features whose first vector entry is the item id, so a gather can be checked."""
    records = np.zeros(len(ids), dtype=ITEM_RECORD_DTYPE)
    records["format"] = 1
    records["vector"][:, 0] = ids
    return ItemFeatures.from_records(ids, records)


def test_cache_is_bounded_and_stays_correct() -> None:
    cache = ItemCache(capacity=50, vocab=1000)
    rng = np.random.default_rng(1)
    for _ in range(200):
        ids = np.unique(rng.integers(1, 1000, size=30))
        slots = cache.lookup(ids)
        hit = slots >= 0
        assert (cache.gather(slots[hit]).vectors[:, 0] == ids[hit]).all()
        cache.insert(ids[~hit], _features(ids[~hit]))
        assert len(cache) <= 50
        slots = cache.lookup(ids[-20:])  # the newest entries survive their own insert
        assert (cache.gather(slots[slots >= 0]).ids == ids[-20:][slots >= 0]).all()
    # every id the cache claims maps to its own slot, holding its own features
    everything = np.arange(1, 1000)
    slots = cache.lookup(everything)
    present = slots >= 0
    assert present.sum() == len(cache) == 50
    assert len(np.unique(slots[present])) == 50
    assert (cache.gather(slots[present]).ids == everything[present]).all()
    assert (cache.gather(slots[present]).vectors[:, 0] == everything[present]).all()


def test_cache_keeps_recently_used_and_skips_duplicates() -> None:
    cache = ItemCache(capacity=4, vocab=100)
    cache.insert(np.array([1, 2, 3, 4]), _features(np.array([1, 2, 3, 4])))
    # all four were just used: the sweep clears every bit and takes the first from the hand
    cache.insert(np.array([5]), _features(np.array([5])))
    assert (cache.lookup(np.array([1])) == -1).all()
    assert (cache.lookup(np.array([5])) >= 0).all()  # 5 is used now, in 1's old slot
    cache.lookup(np.array([2]))  # 2 is next from the hand, but used since the sweep
    cache.insert(np.array([6, 2]), _features(np.array([6, 2])))  # 2 is present: skipped
    assert (cache.lookup(np.array([3])) == -1).all()  # unused, first from the hand after 2
    assert (cache.lookup(np.array([2, 4, 5, 6])) >= 0).all()
    empty = ItemCache(capacity=0, vocab=10)
    empty.insert(np.array([1]), _features(np.array([1])))
    assert len(empty) == 0 and (empty.lookup(np.array([1])) == -1).all()
