"""The feature store on a real Redis Cluster (3 masters, one replica each): loads, the atomic
switch, interrupted loads, appends, the command line. Failover and resharding under a serving
service are in test_service_cluster.py."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from service.features import FeatureStore, LoadError, StoreUnavailable
from service.features import loader as loader_module
from service.features.__main__ import main
from service.features.client import connect
from service.features.layout import USER_BUCKETS, Keys
from service.features.loader import BulkLoader, LoadReport, load_dataset
from service.features.source import read_feature_set
from service.settings import Settings
from tests.support.redis_cluster import LocalCluster
from tests.test_features_store import CANDIDATES, assert_items_match, other_data
from tests.test_features_unit import expected_features

__all__ = ["other_data"]

KEYS = Keys("qin")


def cluster_load(cluster: LocalCluster, data: Path, history_len: int = 64, keep: int = 2) -> Any:
    return load_dataset(
        cluster.url, data, prefix="qin", history_len=history_len, keep=keep, cluster=True
    )


def with_cluster_store(url: str, scenario: Any, **settings: Any) -> Any:
    """Run ``scenario`` on a fresh cluster-mode store inside its own event loop."""

    async def run() -> Any:
        store = FeatureStore.from_settings(Settings(redis_url=url, redis_cluster=True, **settings))
        try:
            return await scenario(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def histories(cluster: LocalCluster, users: list[int]) -> dict[int, list[int]]:
    async def scenario(store: FeatureStore) -> dict[int, list[int]]:
        return {user: (await store.fetch(user, [])).history.ids.tolist() for user in users}

    return cast(dict[int, list[int]], with_cluster_store(cluster.url, scenario))


def keys_per_master(cluster: LocalCluster) -> dict[int, int]:
    counts = {}
    for port in cluster.master_ports():
        client = cluster.node_client(port)
        counts[port] = int(client.dbsize())
        client.close()
    return counts


def version_keys_left(cluster: LocalCluster, version: str) -> list[str]:
    """Keys of ``version`` on any master (SCAN on each: a cluster has no global keyspace)."""
    found = []
    for port in cluster.master_ports():
        client = cluster.node_client(port)
        found += [k.decode() for k in client.scan_iter(match=f"qin:{version}:*", count=1000)]
        client.close()
    routed = cluster.client()
    found += [k for k in (KEYS.meta(version), KEYS.pending(version)) if routed.exists(k)]
    routed.close()
    return found


# --------------------------------------------------------------------------------------------
# Loads and reads


def test_load_then_read_back_equals_dataset(redis_cluster: LocalCluster, tiny_data: Path) -> None:
    report = cluster_load(redis_cluster, tiny_data, history_len=16)
    assert report.version == "1" and report.previous is None and report.items == 300
    expected = expected_features(tiny_data, 16)
    users = sorted(expected["histories"])

    async def scenario(store: FeatureStore) -> None:
        for user in users:
            got = await store.fetch(user, CANDIDATES)
            assert got.version == "1" and got.history_source == "stored"
            assert got.history.ids.tolist() == expected["histories"][user]
            assert_items_match(got.candidates, CANDIDATES, expected)
        assert store.stats.round_trips > 0

    with_cluster_store(redis_cluster.url, scenario)
    spread = keys_per_master(redis_cluster)
    # the users' history hashes (one per bucket in use) spread over every master
    assert len(spread) == 3 and all(count > len(users) // 6 for count in spread.values()), spread


def test_warm_read_is_one_pipeline_over_the_nodes(
    redis_cluster: LocalCluster, tiny_data: Path
) -> None:
    cluster_load(redis_cluster, tiny_data)
    user = sorted(expected_features(tiny_data, 64)["histories"])[0]

    async def scenario(store: FeatureStore) -> tuple[int, int]:
        cold = await store.fetch(user, CANDIDATES)
        warm = await store.fetch(user, CANDIDATES)
        return cold.round_trips, warm.round_trips

    cold, warm = with_cluster_store(redis_cluster.url, scenario)
    # cold: the version's meta (2), then the reads (1-2); warm: one pipeline, nodes in parallel
    assert cold >= 3 and warm == 1


def test_reader_during_load_sees_old_or_new_never_a_mix(
    redis_cluster: LocalCluster,
    tiny_data: Path,
    other_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster_load(redis_cluster, tiny_data)
    old, new = expected_features(tiny_data, 64), expected_features(other_data, 64)
    users = sorted(set(old["histories"]) | set(new["histories"]))[:60]
    monkeypatch.setattr(loader_module, "COMMANDS_PER_FLUSH", 1)  # many small steps to race
    url = redis_cluster.url

    def slow_load() -> None:
        client = connect(url, 10, cluster=True)
        BulkLoader(client, "qin", chunk=2).load(other_data, 64)
        client.close()

    async def scenario(store: FeatureStore) -> dict[str, int]:
        seen = {"1": 0, "2": 0, "rounds during the load": 0}
        thread = threading.Thread(target=slow_load)
        thread.start()
        rounds = 0
        while thread.is_alive() or rounds < 3:
            rounds += not thread.is_alive()
            seen["rounds during the load"] += bool(await store.client.exists(KEYS.loading))
            for user in users:
                got = await store.fetch(user, [1, 150, 300])
                truth = old if got.version == "1" else new
                assert got.history.ids.tolist() == truth["histories"].get(user, [])
                np.testing.assert_array_equal(
                    got.candidates.vectors, truth["vectors"][[1, 150, 300]]
                )
                seen[got.version] += 1
            await asyncio.sleep(0)
        thread.join()
        return seen

    seen = with_cluster_store(redis_cluster.url, scenario)
    assert seen["1"] > 0 and seen["2"] > 0 and seen["rounds during the load"] > 0, seen


def test_versions_are_kept_and_removed_on_every_master(
    redis_cluster: LocalCluster, tiny_data: Path
) -> None:
    reports = [cluster_load(redis_cluster, tiny_data, keep=2) for _ in range(3)]
    assert [r.version for r in reports] == ["1", "2", "3"]
    assert reports[2].removed_versions == ["1"]
    assert version_keys_left(redis_cluster, "1") == []
    assert len(version_keys_left(redis_cluster, "2")) > 1


class InterruptedLoader(BulkLoader):
    """Dies after the items are written without cleaning up, as a killed process would."""

    def write_users(self, version: str, features: Any) -> None:
        raise SystemExit("killed")

    def abort(self, version: str) -> None:  # a killed loader runs no clean-up
        pass


def test_interrupted_load_leaves_live_version_and_next_load_cleans_up(
    redis_cluster: LocalCluster, tiny_data: Path, other_data: Path
) -> None:
    cluster_load(redis_cluster, tiny_data)
    old = expected_features(tiny_data, 64)
    users = sorted(old["histories"])[:30]
    client = connect(redis_cluster.url, 10, cluster=True)
    with pytest.raises(SystemExit):
        InterruptedLoader(client, "qin", marker_ttl_s=60).load(other_data, 64)
    assert client.get(KEYS.live) == b"1"
    assert client.hget(KEYS.meta("2"), "state") == b"loading"  # its leftovers are there
    client.delete(KEYS.loading)  # as when its marker expires
    assert histories(redis_cluster, users) == {u: old["histories"][u] for u in users}
    report: LoadReport = cluster_load(redis_cluster, other_data)
    assert report.version == "3" and "2" in report.removed_versions
    assert version_keys_left(redis_cluster, "2") == []
    assert cast(list[bytes], client.zrange(KEYS.versions, 0, -1)) == [b"1", b"3"]
    client.close()


def test_failed_load_removes_its_partial_version(
    redis_cluster: LocalCluster, tiny_data: Path, other_data: Path
) -> None:
    cluster_load(redis_cluster, tiny_data)

    class Failing(BulkLoader):
        def write_users(self, version: str, features: Any) -> None:
            raise RuntimeError("disk on fire")

    client = connect(redis_cluster.url, 10, cluster=True)
    with pytest.raises(RuntimeError):
        Failing(client, "qin").load(other_data, 64)
    assert client.get(KEYS.live) == b"1" and client.get(KEYS.loading) is None
    assert version_keys_left(redis_cluster, "2") == []
    client.close()


# --------------------------------------------------------------------------------------------
# Appends


def test_append_trims_and_concurrent_appends_are_never_lost(
    redis_cluster: LocalCluster, tiny_data: Path
) -> None:
    cluster_load(redis_cluster, tiny_data, history_len=8)
    known = expected_features(tiny_data, 8)["histories"]
    user = next(u for u, h in known.items() if 2 <= len(h) < 8)

    async def scenario(store: FeatureStore) -> None:
        result = await store.append(user, [1, 2, 3])
        expected = (known[user] + [1, 2, 3])[-8:]
        assert result.version == "1" and result.history_len == len(expected)
        assert (await store.fetch(user, [])).history.ids.tolist() == expected
        await store.append(user, list(range(10, 30)))
        assert (await store.fetch(user, [])).history.ids.tolist() == list(range(22, 30))
        # users of every bucket, so the appends land on every master, concurrently
        users = [10**9 + bucket for bucket in range(0, USER_BUCKETS, 97)]
        await asyncio.gather(*(store.append(u, [item]) for u in users for item in (5, 6, 7, 8)))
        for u in users:
            assert sorted((await store.fetch(u, [])).history.ids.tolist()) == [5, 6, 7, 8]

    with_cluster_store(redis_cluster.url, scenario)


def test_appends_during_a_load_survive_the_switch(
    redis_cluster: LocalCluster, tiny_data: Path, other_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_load(redis_cluster, tiny_data)
    new = expected_features(other_data, 64)["histories"]
    early, late, racing = sorted(new)[:3]
    client = connect(redis_cluster.url, 10, cluster=True)
    loader = BulkLoader(client, "qin")
    features = read_feature_set(other_data, 64)

    def append(user: int, items: list[int]) -> str:
        result = with_cluster_store(redis_cluster.url, lambda store: store.append(user, items))
        return cast(str, result.version)

    version = loader.begin(features)
    assert append(early, [11, 12]) == "1"  # before its history is written
    loader.write_items(version, features)
    loader.write_users(version, features)
    append(late, [13])  # after
    replay = loader._replay
    rounds: list[int] = []

    def replay_then_race(version: str, limit: int) -> int:
        replayed = replay(version, limit)
        if not rounds:  # an append slips in between the replay and the switch
            append(racing, [15])
        rounds.append(replayed)
        return replayed

    monkeypatch.setattr(loader, "_replay", replay_then_race)
    previous, replayed, _ = loader.finish(version)
    assert (previous, replayed) == ("1", 3) and rounds == [2, 1]  # the switch waited for it
    assert append(late, [14]) == "2"  # after the switch: straight to version 2
    client.close()
    assert histories(redis_cluster, [early, late, racing]) == {
        early: (new[early] + [11, 12])[-64:],
        late: (new[late] + [13, 14])[-64:],
        racing: (new[racing] + [15])[-64:],
    }


def test_lost_marker_stops_the_switch(redis_cluster: LocalCluster, tiny_data: Path) -> None:
    cluster_load(redis_cluster, tiny_data)
    client = connect(redis_cluster.url, 10, cluster=True)
    loader = BulkLoader(client, "qin")
    features = read_feature_set(tiny_data, 64)
    version = loader.begin(features)
    client.delete(KEYS.loading)
    with pytest.raises(LoadError, match="lost its loading marker"):
        loader.write_items(version, features)
    with pytest.raises(LoadError, match="was not switched"):
        loader.finish(version)
    assert client.get(KEYS.live) == b"1"
    client.close()


# --------------------------------------------------------------------------------------------
# Command line and errors


def test_cli_load_append_info(
    redis_cluster: LocalCluster, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_cluster.url
    args = ["--redis-url", url, "--cluster"]
    assert main(["load", "--data", str(tiny_data), *args, "--no-progress"]) == 0
    assert "version 1 is live (was none): 300 items" in capsys.readouterr().out
    assert main(["append", *args, "--user", "5", "--item", "3", "4"]) == 0
    assert "user 5: 2 appended under version 1" in capsys.readouterr().out
    assert main(["info", *args]) == 0
    out = capsys.readouterr().out
    assert '"live": "1"' in out and '"state": "complete"' in out
    for port in redis_cluster.master_ports():  # memory of every master
        assert f'"127.0.0.1:{port}"' in out


def test_single_node_client_on_a_cluster_says_so(
    redis_cluster: LocalCluster, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --cluster, some key lives on another node than the seed: one line saying so."""
    codes = []
    for port in redis_cluster.master_ports():  # one of them does not own the control keys
        url = f"redis://127.0.0.1:{port}/0"
        codes.append(main(["load", "--data", str(tiny_data), "--redis-url", url, "--no-progress"]))
        err = capsys.readouterr().err
        if codes[-1] == 2:
            assert err.count("\n") == 1 and "REDIS_CLUSTER=true" in err, err
            assert "\\x" not in err and "Traceback" not in err
    assert 2 in codes


def test_unreachable_cluster_is_store_unavailable() -> None:
    async def scenario(store: FeatureStore) -> None:
        with pytest.raises(StoreUnavailable, match=r"cannot reach|cannot serve"):
            await store.fetch(1, [1, 2])
        with pytest.raises(StoreUnavailable):
            await store.append(1, [1])

    with_cluster_store("redis://127.0.0.1:1/0", scenario)
