"""Feature store reader against a real Redis: read-back, rules, round trips, cache, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from model.synth import SynthConfig, generate
from service.features import (
    CorruptRecord,
    FeatureStore,
    NoLiveVersion,
    StoreTimeout,
    StoreUnavailable,
)
from service.features.loader import LoadReport, load_dataset
from service.settings import Settings
from tests.support.redis import RedisServer
from tests.test_features_unit import expected_features

T = TypeVar("T")
CANDIDATES = list(range(1, 201))


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same sizes as tiny_data, another seed: every item vector and history differs."""
    out = tmp_path_factory.mktemp("other") / "data"
    generate(
        SynthConfig(items=300, users=400, train_rows=3000, valid_rows=600, test_rows=600, seed=8),
        out,
    )
    return out


def load(url: str, data: Path, history_len: int = 64, keep: int = 2) -> LoadReport:
    return load_dataset(url, data, prefix="qin", history_len=history_len, keep=keep)


def with_store(url: str, scenario: Callable[[FeatureStore], Awaitable[T]], **settings: Any) -> T:
    """Run ``scenario`` on a fresh store inside its own event loop."""

    async def main() -> T:
        store = FeatureStore.from_settings(Settings(redis_url=url, **settings))
        try:
            return await scenario(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def assert_items_match(got: Any, ids: list[int], expected: dict[str, Any]) -> None:
    """Features of known ``ids`` equal the dataset's."""
    assert got.ids.tolist() == ids
    np.testing.assert_array_equal(got.tags, expected["tags"][ids])
    np.testing.assert_array_equal(got.vectors, expected["vectors"][ids])
    assert got.likes.tolist() == [expected["likes"].get(i, 0) for i in ids]
    assert got.views.tolist() == [expected["views"].get(i, 0) for i in ids]
    assert got.tags.dtype == np.int64 and got.vectors.dtype == np.float32


def test_load_then_read_back_equals_dataset(redis_url: str, tiny_data: Path) -> None:
    report = load(redis_url, tiny_data, history_len=16)
    expected = expected_features(tiny_data, 16)
    assert report.version == "1" and report.users == len(expected["histories"])
    assert report.items == 300

    async def scenario(store: FeatureStore) -> None:
        for user, history in expected["histories"].items():
            got = await store.fetch(user, [history[-1]] if history else [1])
            assert got.version == "1" and got.history_source == "stored"
            assert_items_match(got.history, history, expected)
        everything = await store.fetch(next(iter(expected["histories"])), list(range(1, 301)))
        assert_items_match(everything.candidates, list(range(1, 301)), expected)

    with_store(redis_url, scenario)


def test_unknown_users_and_items_follow_the_rules(redis_url: str, tiny_data: Path) -> None:
    load(redis_url, tiny_data)

    async def scenario(store: FeatureStore) -> None:
        got = await store.fetch(10**15, [0, -5, 301, 10**12, 5])
        assert got.history_source == "unknown_user" and len(got.history) == 0
        assert got.history.vectors.shape == (0, 128) and got.history.tags.shape == (0, 5)
        assert got.candidates.ids.tolist() == [0, 0, 0, 0, 5]
        assert not got.candidates.vectors[:4].any() and not got.candidates.tags[:4].any()
        assert got.candidates.likes[:4].tolist() == [0, 0, 0, 0]
        assert got.candidates.vectors[4].any()
        override = await store.fetch(10**15, [5], history_override=[7, 0, 500, 8])
        assert override.history_source == "override"
        assert override.history.ids.tolist() == [7, 0, 8]  # padding dropped, unknown -> 0
        stats = store.stats
        assert stats.unknown_users == 1 and stats.unknown_items == 5

    with_store(redis_url, scenario)


def test_round_trips_cold_and_warm(redis_url: str, tiny_data: Path) -> None:
    load(redis_url, tiny_data)
    users = sorted(expected_features(tiny_data, 64)["histories"])

    async def scenario(store: FeatureStore) -> None:
        first = await store.fetch(users[0], CANDIDATES)
        assert first.round_trips == 4  # live + meta once per version, then a cold read
        warm = await store.fetch(users[0], CANDIDATES)
        assert warm.round_trips == 1
        np.testing.assert_array_equal(warm.candidates.vectors, first.candidates.vectors)
        store.clear_item_cache()
        cold = await store.fetch(users[1], CANDIDATES)
        assert cold.round_trips == 2
        everything = await store.fetch(users[2], list(range(1, 301)))  # fills the cache
        assert everything.round_trips == 1
        for user in users[3:20]:
            assert (await store.fetch(user, CANDIDATES)).round_trips == 1
        override = await store.fetch(users[0], CANDIDATES, history_override=[1, 2])
        assert override.round_trips == 1
        stats = store.stats
        assert stats.requests == 22 and stats.round_trips == 4 + 1 + 2 + 1 + 17 + 1
        assert stats.cached_items == 300 and stats.item_cache_hits > 0

    with_store(redis_url, scenario)


def test_item_cache_dropped_when_version_changes(
    redis_url: str, tiny_data: Path, other_data: Path
) -> None:
    load(redis_url, tiny_data)
    old, new = expected_features(tiny_data, 64), expected_features(other_data, 64)
    user = next(u for u in old["histories"] if u in new["histories"])

    async def scenario(store: FeatureStore) -> None:
        before = await store.fetch(user, CANDIDATES)
        assert (await store.fetch(user, CANDIDATES)).round_trips == 1
        assert_items_match(before.candidates, CANDIDATES, old)
        await asyncio.to_thread(load, redis_url, other_data)
        after = await store.fetch(user, CANDIDATES)
        assert after.version == "2" and store.stats.version_changes == 1
        assert_items_match(after.candidates, CANDIDATES, new)
        assert_items_match(after.history, new["histories"][user], new)
        assert after.round_trips == 1 + 2 + 2  # stale read, new meta, cold read
        assert (await store.fetch(user, CANDIDATES)).round_trips == 1

    with_store(redis_url, scenario)


def test_bounded_cache_still_reads_correctly(redis_url: str, tiny_data: Path) -> None:
    load(redis_url, tiny_data)
    expected = expected_features(tiny_data, 64)

    async def scenario(store: FeatureStore) -> None:
        rng = np.random.default_rng(3)
        for user in list(expected["histories"])[:30]:
            candidates = rng.integers(1, 301, size=50).tolist()
            got = await store.fetch(user, candidates)
            assert_items_match(got.candidates, candidates, expected)
            assert_items_match(got.history, expected["histories"][user], expected)
            assert store.stats.cached_items <= 40

    with_store(redis_url, scenario, item_cache_size=40)


def test_no_live_version_is_a_typed_error(redis_url: str) -> None:
    async def scenario(store: FeatureStore) -> None:
        assert await store.live_version() is None
        with pytest.raises(NoLiveVersion, match=r"python -m service.features load"):
            await store.fetch(1, [1])
        with pytest.raises(NoLiveVersion):
            await store.append(1, [1])

    with_store(redis_url, scenario)


def test_corrupt_records_are_typed_errors(redis_server: RedisServer, tiny_data: Path) -> None:
    load(redis_server.url, tiny_data)
    user = next(iter(expected_features(tiny_data, 64)["histories"]))
    client = redis_server.client()
    client.hset("qin:1:items", "5", b"short")
    client.hset(f"qin:1:h:{{b{user % 4096}}}", str(user), b"abc")

    async def scenario(store: FeatureStore) -> None:
        with pytest.raises(CorruptRecord, match=r"qin:1:items: item 5 has 5 bytes"):
            await store.fetch(10**15, [5])
        with pytest.raises(CorruptRecord, match=rf"history of user {user} has 3 bytes"):
            await store.fetch(user, [6])

    async def unknown_layout(store: FeatureStore) -> None:
        with pytest.raises(CorruptRecord, match="layout format 7"):
            await store.fetch(10**15, [6])

    with_store(redis_server.url, scenario)
    # a version's meta is read once per process and version: a fresh store reads the change
    client.hset("{qin}:meta:1", "format", "7")
    with_store(redis_server.url, unknown_layout)
    client.close()


def test_redis_stopped_mid_test_then_back(redis_server: RedisServer, tiny_data: Path) -> None:
    load(redis_server.url, tiny_data)
    user = next(iter(expected_features(tiny_data, 64)["histories"]))

    async def scenario(store: FeatureStore) -> None:
        before = await store.fetch(user, CANDIDATES)
        redis_server.stop(save=True)
        with pytest.raises(StoreUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
            await store.fetch(user, CANDIDATES)
        with pytest.raises(StoreUnavailable):
            await store.append(user, [1])
        redis_server.start()
        after = await store.fetch(user, CANDIDATES)
        assert after.round_trips == 1  # same version: the item cache survived the outage
        np.testing.assert_array_equal(after.history.ids, before.history.ids)

    with_store(redis_server.url, scenario)


def test_redis_frozen_gives_timeout_then_recovers(
    redis_server: RedisServer, tiny_data: Path
) -> None:
    load(redis_server.url, tiny_data)

    async def scenario(store: FeatureStore) -> None:
        await store.fetch(1, CANDIDATES)
        redis_server.pause()
        try:
            with pytest.raises(StoreTimeout, match="did not answer in time"):
                await store.fetch(1, CANDIDATES)
        finally:
            redis_server.resume()
        assert (await store.fetch(1, CANDIDATES)).version == "1"

    with_store(redis_server.url, scenario, redis_timeout_s=0.2)
