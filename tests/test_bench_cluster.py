"""bench.cluster at a tiny size: one Redis against a real 3-master cluster, and a master killed
under the real service; the result names every figure the docs table shows."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cluster import main
from tests.redis_server import require_redis_server


def test_cluster_bench_compares_single_and_cluster_and_measures_failover(tmp_path: Path) -> None:
    require_redis_server()
    args = [
        "--users", "400", "--items", "300", "--train-rows", "3000", "--valid-rows", "600",
        "--test-rows", "600", "--requests", "50", "--rate", "10", "--duration", "10",
        "--kill-after", "2.5", "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0  # nonzero when a request is lost or answered other than 200/503
    result = json.loads((tmp_path / "cluster.json").read_text())
    for mode in ("warm", "cold", "append"):
        for where in ("single", "cluster"):
            assert result["reads"][mode][where]["p99_ms"] > 0, (mode, where)
    assert len(result["load"]["cluster"]["used_memory_bytes"]) == 3
    for victim in ("control", "other"):
        run = result["failover"][victim]
        assert run["sent"] == run["answered"] == run["requests"] > 0
        assert run["status_500"] == 0 and run["status_other"] == 0
        assert run["promotion_s"] > 0
    assert result["commit"] and result["machine"]["cpus"] and result["command"]
    table = (tmp_path / "cluster.md").read_text()
    assert "cluster / single" in table and "Failover under load" in table
