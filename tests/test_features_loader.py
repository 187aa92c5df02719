"""Bulk loads and appends against a real Redis: atomic switch, failures, versions, CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from service.features import FeatureStore, LoadError
from service.features import loader as loader_module
from service.features.__main__ import main
from service.features.client import connect
from service.features.layout import Keys
from service.features.loader import BulkLoader
from service.features.source import FeatureSet, read_feature_set
from tests.support.redis import RedisServer, free_port
from tests.support.wait import wait_until
from tests.test_features_store import load, other_data, with_store
from tests.test_features_unit import expected_features

__all__ = ["other_data"]  # a module-scoped fixture shared with the reader tests

KEYS = Keys("qin")


def registered(server: RedisServer) -> list[str]:
    client = server.client()
    try:
        return [v.decode() for v in cast(list[bytes], client.zrange(KEYS.versions, 0, -1))]
    finally:
        client.close()


def version_keys(server: RedisServer, version: str) -> list[str]:
    client = server.client()
    try:
        found = [k.decode() for k in client.scan_iter(match=f"qin:{version}:*", count=1000)]
        return found + [k for k in (KEYS.meta(version), KEYS.pending(version)) if client.exists(k)]
    finally:
        client.close()


def histories_of(url: str, users: list[int]) -> dict[int, list[int]]:
    async def scenario(store: FeatureStore) -> dict[int, list[int]]:
        return {user: (await store.fetch(user, [])).history.ids.tolist() for user in users}

    return with_store(url, scenario)


# --------------------------------------------------------------------------------------------
# Versions and the atomic switch


def test_switch_keeps_n_versions_and_removes_the_rest(
    redis_server: RedisServer, tiny_data: Path
) -> None:
    url = redis_server.url
    reports = [load(url, tiny_data, keep=2) for _ in range(3)]
    assert [r.version for r in reports] == ["1", "2", "3"]
    assert [r.previous for r in reports] == [None, "1", "2"]
    assert reports[2].removed_versions == ["1"]
    assert registered(redis_server) == ["2", "3"]
    assert version_keys(redis_server, "1") == []
    assert len(version_keys(redis_server, "2")) > 1
    report = load(url, tiny_data, keep=1)
    assert report.removed_versions == ["3", "2"] and registered(redis_server) == ["4"]


def test_reader_during_load_sees_old_or_new_never_a_mix(
    redis_server: RedisServer,
    tiny_data: Path,
    other_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = redis_server.url
    load(url, tiny_data)
    old, new = expected_features(tiny_data, 64), expected_features(other_data, 64)
    users = sorted(set(old["histories"]) | set(new["histories"]))[:60]
    monkeypatch.setattr(loader_module, "COMMANDS_PER_FLUSH", 1)  # many small steps to race

    def slow_load() -> None:
        client = connect(url, 10)
        BulkLoader(client, "qin", chunk=1).load(other_data, 64)
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

    seen = with_store(url, scenario)
    assert seen["1"] > 0 and seen["2"] > 0 and seen["rounds during the load"] > 0, seen


def test_written_but_unswitched_version_is_invisible(
    redis_server: RedisServer, tiny_data: Path, other_data: Path
) -> None:
    url = redis_server.url
    load(url, tiny_data)
    old, new = expected_features(tiny_data, 64), expected_features(other_data, 64)
    users = sorted(new["histories"])[:20]
    client = connect(url, 10)
    loader = BulkLoader(client, "qin")
    features = read_feature_set(other_data, 64)
    version = loader.begin(features)
    loader.write_items(version, features)
    loader.write_users(version, features)
    assert histories_of(url, users) == {u: old["histories"].get(u, []) for u in users}
    loader.finish(version)
    assert histories_of(url, users) == {u: new["histories"][u] for u in users}
    client.close()


# --------------------------------------------------------------------------------------------
# Failed, interrupted and killed loads


class FailingLoader(BulkLoader):
    """Dies after the items are written, as an exception or a Ctrl-C."""

    def __init__(self, *args: Any, error: BaseException, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error = error

    def write_users(self, version: str, features: FeatureSet) -> None:
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failed_load_leaves_live_version_untouched(
    redis_server: RedisServer, tiny_data: Path, other_data: Path, error: BaseException
) -> None:
    url = redis_server.url
    load(url, tiny_data)
    old = expected_features(tiny_data, 64)
    users = sorted(old["histories"])[:20]
    client = connect(url, 10)
    with pytest.raises(type(error)):
        FailingLoader(client, "qin", error=error).load(other_data, 64)
    assert client.get(KEYS.live) == b"1" and client.get(KEYS.loading) is None
    client.close()
    assert histories_of(url, users) == {u: old["histories"][u] for u in users}
    assert registered(redis_server) == ["1"] and version_keys(redis_server, "2") == []
    assert load(url, other_data).version == "3"


KILLED_LOADER = """
import sys, time
from service.features.client import connect
from service.features.loader import BulkLoader
from service.features.source import read_feature_set
url, data = sys.argv[1], sys.argv[2]
loader = BulkLoader(connect(url, 10), "qin", marker_ttl_s=1.0)
features = read_feature_set(data, 64)
version = loader.begin(features)
loader.write_items(version, features)
loader.write_users(version, features)
print(version, flush=True)
time.sleep(120)
"""


def test_killed_load_leaves_live_version_and_is_cleaned_up(
    redis_server: RedisServer, tiny_data: Path, other_data: Path
) -> None:
    url = redis_server.url
    load(url, tiny_data)
    old = expected_features(tiny_data, 64)
    users = sorted(old["histories"])[:20]
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_LOADER, url, str(other_data)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdout is not None
    version = process.stdout.readline().strip()
    os.kill(process.pid, signal.SIGKILL)  # between writing and switching
    process.wait()
    assert version == "2"
    assert histories_of(url, users) == {u: old["histories"][u] for u in users}
    client = redis_server.client()
    # the marker (1 s TTL) expires without its loader
    wait_until(lambda: not client.exists(KEYS.loading), what="the loading marker to expire")
    client.close()
    report = load(url, other_data)
    assert report.version == "3" and "2" in report.removed_versions
    assert version_keys(redis_server, "2") == []


def test_concurrent_load_is_refused(redis_server: RedisServer, tiny_data: Path) -> None:
    client = redis_server.client()
    client.set(KEYS.loading, "9", px=60_000)
    client.close()
    with pytest.raises(LoadError, match=r"another load \(version 9\) is running"):
        load(redis_server.url, tiny_data)


def test_lost_marker_stops_the_load(redis_server: RedisServer, tiny_data: Path) -> None:
    load(redis_server.url, tiny_data)
    client = connect(redis_server.url, 10)
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
# Appends


def test_append_trims_and_is_seen_by_the_next_read(redis_url: str, tiny_data: Path) -> None:
    load(redis_url, tiny_data, history_len=8)
    histories = expected_features(tiny_data, 8)["histories"]
    user = next(u for u, h in histories.items() if 2 <= len(h) < 8)

    async def scenario(store: FeatureStore) -> None:
        result = await store.append(user, [1, 2, 3])
        expected = (histories[user] + [1, 2, 3])[-8:]
        assert result.version == "1" and result.history_len == len(expected)
        assert (await store.fetch(user, [])).history.ids.tolist() == expected
        await store.append(user, list(range(10, 30)))
        assert (await store.fetch(user, [])).history.ids.tolist() == list(range(22, 30))
        new_user = 10**12
        assert (await store.append(new_user, [7])).history_len == 1
        got = await store.fetch(new_user, [])
        assert got.history_source == "stored" and got.history.ids.tolist() == [7]
        with pytest.raises(ValueError, match="at least one"):
            await store.append(user, [])
        with pytest.raises(ValueError, match="item ids must lie in"):
            await store.append(user, [0])

    with_store(redis_url, scenario)


def test_concurrent_appends_are_never_lost(redis_url: str, tiny_data: Path) -> None:
    load(redis_url, tiny_data)

    async def scenario(store: FeatureStore) -> None:
        items = list(range(1, 41))
        await asyncio.gather(*(store.append(-3, [item]) for item in items))
        got = await store.fetch(-3, [])
        assert sorted(got.history.ids.tolist()) == items

    with_store(redis_url, scenario)


def test_appends_during_a_load_survive_the_switch(
    redis_server: RedisServer, tiny_data: Path, other_data: Path
) -> None:
    url = redis_server.url
    load(url, tiny_data)
    new = expected_features(other_data, 64)["histories"]
    early, late = sorted(new)[:2]
    client = connect(url, 10)
    loader = BulkLoader(client, "qin")
    features = read_feature_set(other_data, 64)

    def append(user: int, items: list[int]) -> str:
        return with_store(url, lambda store: store.append(user, items)).version

    version = loader.begin(features)
    assert append(early, [11, 12]) == "1"  # before its history is written
    loader.write_items(version, features)
    loader.write_users(version, features)
    append(late, [13])  # after
    previous, replayed, _ = loader.finish(version)
    assert (previous, replayed) == ("1", 2)
    assert append(late, [14]) == "2"  # after the switch: straight to version 2
    client.close()
    assert histories_of(url, [early, late]) == {
        early: (new[early] + [11, 12])[-64:],
        late: (new[late] + [13, 14])[-64:],
    }


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_load_append_info(
    redis_url: str, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["load", "--data", str(tiny_data), "--redis-url", redis_url, "--no-progress"]) == 0
    assert "version 1 is live (was none): 300 items" in capsys.readouterr().out
    assert main(["append", "--redis-url", redis_url, "--user", "5", "--item", "3", "4"]) == 0
    assert "user 5: 2 appended under version 1" in capsys.readouterr().out
    assert main(["info", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert '"live": "1"' in out and '"state": "complete"' in out


def test_cli_errors_are_one_line_and_exit_2(
    redis_url: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert main(["load", "--data", str(missing), "--redis-url", redis_url]) == 2
    err = capsys.readouterr().err
    assert f"error: {missing}: dataset folder not found" in err and "Traceback" not in err
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["load", "--data", str(tiny_data), "--redis-url", dead, "--no-progress"]) == 2
    assert "cannot reach Redis at " + dead in capsys.readouterr().err
    assert main(["append", "--redis-url", redis_url, "--user", "1", "--item", "3"]) == 2
    assert "no live feature version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["append", "--user", "1", "--item", "0"])
    assert exit_info.value.code == 2
