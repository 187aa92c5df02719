"""The capacity plan is arithmetic over other benchmarks' result files: checked on inputs chosen so
that every figure can be worked out by hand, and on the committed results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import capacity
from bench.report import RESULTS_DIR

GET_S, HGET_S, HMGET_S = 100_000.0, 50_000.0, 5_000.0


def _inputs(folder: Path, gpu_rate: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    common = {"commit": "abc1234"}
    (folder / "feature_store.json").write_text(
        json.dumps({**common, "load": {"bytes_per_user_full_history": 400, "bytes_per_item": 1000}})
    )
    (folder / "redis_ops.json").write_text(
        json.dumps(
            {
                **common,
                "commands_per_s": {
                    "GET {qin}:live": GET_S,
                    "HGET of a history": HGET_S,
                    "HMGET of 200 items": HMGET_S,
                },
            }
        )
    )
    load = {
        **common,
        "candidates": 100,
        "machine": {"cpus": 2},
        "summary": {"service_max_rate_p99_5ms": 1_000.0},
    }
    (folder / "service_load.json").write_text(json.dumps(load))
    if gpu_rate is not None:
        gpu = {**load, "summary": {"service_max_rate_p99_5ms": gpu_rate}}
        (folder / "service_load_cuda.json").write_text(json.dumps(gpu))
    return folder


def _plan(results: Path, *extra: str) -> dict[str, object]:
    args = capacity.build_parser().parse_args(["--results", str(results), *extra])
    return capacity.plan(args)


def test_the_plan_scales_the_measured_figures(tmp_path: Path) -> None:
    result = _plan(_inputs(tmp_path / "in"), "--users", "1e8", "--items", "1e7", "--rate", "1e5")
    redis, service = result["redis"], result["service"]
    assert isinstance(redis, dict) and isinstance(service, dict)
    # 1e8 users x 400 B + 1e7 items x 1000 B = 50 GB a version; 3 versions at peak = 150 GB
    assert redis["version_gb"] == pytest.approx(50.0)
    assert redis["peak_gb"] == pytest.approx(150.0)
    assert redis["masters_for_memory"] == math.ceil(150 / 16)
    # 1e5 HGET/s over masters that each keep 30 % of 50,000/s spare
    assert redis["masters_for_ops"] == math.ceil(1e5 / (HGET_S * 0.7))
    assert redis["masters"] == max(redis["masters_for_memory"], redis["masters_for_ops"])
    assert redis["replicas"] == redis["masters"]
    assert redis["control_master_load"] == pytest.approx(1e5 / GET_S)
    # 200 candidates x 1e5/s with 30 % headroom over 50,000 candidates/s per core, 2 cores each
    assert service["cpu_replicas"] == math.ceil(2e7 / 0.7 / (50_000 * 2))
    assert isinstance(service["gpu_replicas"], str) and "pending" in service["gpu_replicas"]
    ranked = [entry["load"] for entry in result["breaks_first"]]  # type: ignore[attr-defined]
    assert ranked == sorted(ranked, reverse=True)
    assert result["breaks_first"][0]["what"].startswith("the master of the live item hash")  # type: ignore[index]


def test_a_gpu_measurement_replaces_pending(tmp_path: Path) -> None:
    result = _plan(_inputs(tmp_path / "in", gpu_rate=20_000.0))
    service = result["service"]
    assert isinstance(service, dict)
    assert service["gpu_replicas"] == math.ceil(2e7 / 0.7 / (20_000 * 100))


def test_missing_inputs_name_the_benchmarks_to_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"bench\.feature_store"):
        _plan(tmp_path)


def test_the_plan_from_the_committed_results_is_written(tmp_path: Path) -> None:
    assert capacity.main(["--out-dir", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "capacity.json").read_text())
    table = (tmp_path / "capacity.md").read_text()
    assert written["redis"]["peak_gb"] > written["redis"]["version_gb"] > 0
    assert written["service"]["cpu_replicas"] >= 1
    assert "Breaks first:" in table and "service replicas on CPU" in table
    assert (
        written["inputs"]["sources"]["redis_ops"]
        == json.loads((RESULTS_DIR / "redis_ops.json").read_text())["commit"]
    )
