"""bench.redis_ops runs redis-benchmark on the commands a request sends and writes its result."""

from __future__ import annotations

import json
from pathlib import Path

from bench.redis_ops import main
from tests.redis_server import require_redis_server


def test_redis_ops_writes_a_rate_per_command(tmp_path: Path) -> None:
    require_redis_server()
    assert main(["--requests", "2000", "--clients", "4", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "redis_ops.json").read_text())
    rates = result["commands_per_s"]
    assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
    assert result["commit"] and result["machine"]["cpus"] and result["command"]
    assert "HMGET of 200 item records" in (tmp_path / "redis_ops.md").read_text()
