"""bench.replicas at a tiny size: a replica killed behind the real HAProxy under open-loop load,
with and without the balancer's retries; the result names what the docs table shows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.replicas import main
from tests.redis_server import require_redis_server


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_replicas_bench_measures_a_kill_with_and_without_retries(tmp_path: Path) -> None:
    require_redis_server()
    args = [
        "--users", "400", "--items", "300", "--train-rows", "3000", "--valid-rows", "600",
        "--test-rows", "600", "--rate", "20", "--duration", "10", "--event-at", "3",
        "--scenarios", "kill,kill (no retries)", "--data-dir", str(tmp_path / "data"),
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0  # nonzero when a request is lost, or "kill" answers other than 200
    result = json.loads((tmp_path / "replicas.json").read_text())
    kill, bare = result["scenarios"]
    assert (kill["scenario"], bare["scenario"]) == ("kill", "kill (no retries)")
    for run in (kill, bare):
        assert run["sent"] == run["answered"] == run["requests"] > 0
        assert 0 < run["out_of_rotation_after_s"] < 60
    assert kill["ok"] == kill["requests"]  # the retries resent what the dead replica dropped
    assert result["commit"] and result["machine"]["cpus"] and result["command"]
    assert "kill (no retries)" in (tmp_path / "replicas.md").read_text()
    assert main(["--scenarios", "kill,nothing"]) == 2  # an unknown scenario is refused
