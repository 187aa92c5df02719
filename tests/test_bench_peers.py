"""bench.peers at a tiny size: the service and LitServe on the same model and Redis, the same
scores on identical requests, a peer that cannot run reported with its reason; and the pieces
that are pure functions (the KServe bodies, a round's headline figures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.loadgen import kserve_bodies
from bench.peers import main, round_summary
from tests.redis_server import require_redis_server
from tests.service_stack import ServedModel


def test_the_peers_score_alike_and_a_peer_that_cannot_run_is_named(
    served_model: ServedModel, tmp_path: Path
) -> None:
    require_redis_server()
    args = [
        "--model", str(served_model.onnx), "--data", str(served_model.data),
        "--servers", "service,litserve,pytriton", "--rates", "100", "--duration", "4",
        "--warmup", "1", "--rounds", "1", "--peers-venv", str(tmp_path / "no-such-venv"),
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "peers.json").read_text())
    assert result["servers"] == ["service", "litserve"]
    assert "bench/peers_env.sh" in result["cannot_run"]["pytriton"]
    assert result["agreement"]["max_abs_diff"]["litserve"] <= 1e-5
    (run,) = result["rounds"]
    for name in ("service", "litserve"):
        (measured,) = run["steps"][name]
        assert measured["status_counts"].get("200", 0) > 0, (name, measured["status_counts"])
        assert measured["server_cpu_ms_per_request"] > 0, name  # its processes did the work
    assert result["model_floor"]["median_ms"] > 0
    table = (tmp_path / "peers.md").read_text()
    assert "Not run: pytriton" in table and "litserve: p50 / p99 ms" in table
    assert (tmp_path / "peers.png").stat().st_size > 0


def test_a_peer_that_exits_at_start_is_named_with_its_error(
    served_model: ServedModel, tmp_path: Path
) -> None:
    require_redis_server()
    # an environment whose python has no pytriton: the peer starts, then exits on the import
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    args = [
        "--model", str(served_model.onnx), "--data", str(served_model.data),
        "--servers", "service,pytriton", "--rates", "100", "--duration", "4", "--warmup", "1",
        "--rounds", "1", "--peers-venv", str(venv), "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "peers.json").read_text())
    assert result["servers"] == ["service"]
    assert "pytriton" in result["cannot_run"]["pytriton"]  # the child's own error, from its log
    assert list(result["rounds"][0]["steps"]) == ["service"]


def test_kserve_bodies_carry_the_same_ids_with_a_batch_dimension() -> None:
    score = [json.dumps({"user_id": 7, "item_ids": [1, 2, 3], "history": [4, 5]}).encode()]
    (body,) = kserve_bodies(score)
    inputs = {i["name"]: i for i in json.loads(body)["inputs"]}
    assert inputs["user_id"] == {
        "name": "user_id",
        "shape": [1, 1],
        "datatype": "INT64",
        "data": [7],
    }
    assert inputs["item_ids"]["shape"] == [1, 3] and inputs["item_ids"]["data"] == [1, 2, 3]
    assert inputs["history"]["shape"] == [1, 2] and inputs["history"]["data"] == [4, 5]
    (no_history,) = kserve_bodies([json.dumps({"user_id": 1, "item_ids": [9]}).encode()])
    assert [i["name"] for i in json.loads(no_history)["inputs"]] == ["user_id", "item_ids"]


def step(rate: float, p50: float, p99: float, achieved: float | None = None) -> dict[str, Any]:
    return {
        "server_cpu_ms_per_request": p50 / 2,
        "offered_rate": rate,
        "scheduled_rate": rate,
        "achieved_rate": rate if achieved is None else achieved,
        "latency": {"p50_ms": p50, "p99_ms": p99},
    }


def test_a_round_compares_the_best_sustained_rates_and_latency_where_all_keep_up() -> None:
    steps = {
        "service": [step(100, 3, 5), step(200, 4, 8), step(400, 6, 30), step(800, 40, 90)],
        "litserve": [step(100, 5, 9), step(200, 9, 40), step(400, 30, 200, achieved=250)],
        "pytriton": [step(100, 8, 12), step(200, 20, 80)],
    }
    summary = round_summary(steps)
    assert summary["max_sustained_rate"] == {"service": 400, "litserve": 200, "pytriton": 100}
    assert summary["best_peer_rate"] == 200 and summary["ratio_to_best_peer"] == 2.0
    assert summary["common_rate"] == 100  # the highest rate every server sustained
    assert summary["latency_at_common_rate"]["litserve"] == {"p50_ms": 5, "p99_ms": 9}
    # CPU per request compared at the low rate (100/s), where every server keeps up
    assert summary["cpu_ms_per_request_at_low_rate"] == {
        "service": 1.5,
        "litserve": 2.5,
        "pytriton": 4,
    }
