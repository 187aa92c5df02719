"""Pytest fixtures: a real redis-server process per test (no fakes).

Registered by ``pytest_plugins`` in conftest.py. A missing redis-server FAILS the tests that need
it, with the install command, rather than skipping them: CI installs it (``.ci/run``), and a
green run without Redis would prove nothing about the feature store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.features.testing import RedisServer, find_redis_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started server on a free port; tests may stop, restart, pause and resume it."""
    executable = find_redis_server()
    if executable is None:
        pytest.fail(
            "redis-server is not installed: the feature-store tests need a real Redis server "
            "(Debian/Ubuntu: apt-get install -y redis-server; .ci/run does this in CI)",
            pytrace=False,
        )
    server = RedisServer(tmp_path / "redis", executable=executable)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
