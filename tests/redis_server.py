"""Pytest fixtures: a real redis-server process per test, or a real Redis Cluster (no fakes).

Registered by ``pytest_plugins`` in conftest.py. A missing redis-server FAILS the tests that need
it, saying how to get one, rather than skipping them: CI installs it (``.ci/run``), and a green
run without Redis would prove nothing about the feature store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis import HOW_TO_INSTALL, RedisServer, find_redis_server
from tests.support.redis_cluster import LocalCluster


def require_redis_server() -> str:
    """The redis-server executable; fails the calling test, saying how to get one, without."""
    executable = find_redis_server()
    if executable is None:
        pytest.fail(
            "redis-server is not installed: the feature-store and service tests need a real "
            f"Redis server. To get one, {HOW_TO_INSTALL}.",
            pytrace=False,
        )
    return executable


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started server on a free port; tests may stop, restart, pause and resume it."""
    server = RedisServer(tmp_path / "redis", executable=require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A started Redis Cluster: 3 masters with one replica each, replicas synced; tests may kill,
    restart and add nodes."""
    cluster = LocalCluster(tmp_path / "cluster", executable=require_redis_server())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
