"""Service replicas behind a real HAProxy, run by deploy/replicas.py: three ``python -m service``
processes on one Redis, the balancer health-checking /readyz. Under open-loop load (a fixed
rate, whatever the answers do) a replica is killed, drained with SIGTERM, or the replicas are
replaced one by one with a new model; every request sent must be answered, and answered 200.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service_stack import GENEROUS_DEADLINE_S, ServedModel
from tests.support.openloop import Answer, OpenLoop
from tests.support.redis import RedisServer, free_run_of_ports, port_is_free
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "replicas.py"
REPLICAS = 3
RATE = 40.0  # requests per second: what a busy two-core machine sustains with three replicas
DRAIN_S = 3.0  # the replicas' SHUTDOWN_DRAIN_S: a few of the balancer's 0.5 s health checks

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)"
)


@dataclass
class Fleet:
    run_dir: Path
    env: dict[str, str]
    base_port: int
    users: list[int]

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port + REPLICAS}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port + REPLICAS + 1}"

    def cli(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        args = [
            sys.executable, str(SCRIPT), command, "--replicas", str(REPLICAS),
            "--base-port", str(self.base_port), "--lb-port", str(self.base_port + REPLICAS),
            "--stats-port", str(self.base_port + REPLICAS + 1), "--run-dir", str(self.run_dir),
            "--timeout-s", str(GENEROUS_DEADLINE_S),
        ]  # fmt: skip
        return subprocess.run(
            args, env={**os.environ, **self.env, **env}, capture_output=True, text=True, timeout=600
        )

    def pids(self) -> dict[str, int]:
        state = json.loads((self.run_dir / "state.json").read_text())
        return {r["name"]: r["pid"] for r in state["replicas"]}

    def view(self) -> dict[str, str]:
        """Replica name -> its status in the balancer, from HAProxy's stats CSV."""
        text = httpx.get(self.stats_url + "/stats;csv", timeout=30).text
        header, *rows = [line.split(",") for line in text.lstrip("# ").splitlines() if line]
        named = [dict(zip(header, row, strict=False)) for row in rows]
        servers = [r for r in named if r["svname"] not in ("FRONTEND", "BACKEND")]
        return {r["svname"]: r["status"] for r in servers if r["pxname"] == "qin"}

    def body(self, index: int) -> dict[str, Any]:
        user = self.users[index % len(self.users)]
        return {"user_id": user, "item_ids": list(range(1 + index % 7, 60, 3))}

    def load(self) -> OpenLoop:
        return OpenLoop(self.lb_url, self.body, rate=RATE, timeout_s=GENEROUS_DEADLINE_S).start()


def replica_env(served_model: ServedModel, redis: RedisServer, model: Path) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "MODEL_PATH": str(model),
        "PROVIDER": "cpu",
        "INTRA_OP_THREADS": "1",
        "REQUEST_TIMEOUT_S": str(GENEROUS_DEADLINE_S),
        "SHUTDOWN_DRAIN_S": str(DRAIN_S),
        "LOG_LEVEL": "warning",
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def fleet(served_model: ServedModel, feature_redis: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    users = [int(u) for u in served_model.features.user_ids[:100]]
    model = tmp_path / "model.onnx"  # a copy, so that a test may write another model over it
    shutil.copy(served_model.onnx, model)
    env = replica_env(served_model, feature_redis, model)
    running = Fleet(tmp_path / "run", env, free_run_of_ports(REPLICAS + 2), users)
    started = running.cli("start")
    assert started.returncode == 0, started.stderr
    try:
        yield running
    finally:
        pids = running.pids() if (running.run_dir / "state.json").exists() else {}
        if pids:
            running.cli("stop")
        for pid in pids.values():  # whatever the stop could not end
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def settle(loop: OpenLoop, more: int) -> list[Answer]:
    """Let ``more`` further requests be answered, then stop the sender and return every answer."""
    target = loop.answered() + more
    wait_until(lambda: loop.answered() >= target, GENEROUS_DEADLINE_S, f"{more} more answers")
    return loop.stop()


def assert_every_request_answered_200(loop: OpenLoop, answers: list[Answer]) -> None:
    assert len(answers) == loop.sent, f"sent {loop.sent}, answered {len(answers)}"
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} not 200: {failed[:5]}"


def test_start_serves_through_the_balancer_and_stop_ends_everything(
    fleet: Fleet, served_model: ServedModel
) -> None:
    assert fleet.view() == {f"r{i + 1}": "UP" for i in range(REPLICAS)}
    status = fleet.cli("status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("/readyz 200, balancer UP") == REPLICAS, status.stdout
    scored = httpx.post(fleet.lb_url + "/score", json=fleet.body(0), timeout=30)
    assert scored.status_code == 200, scored.text
    assert scored.json()["model_version"] == served_model.model_version
    # the balancer's own metrics, for Prometheus: the backend with its three servers up
    metrics = httpx.get(fleet.stats_url + "/metrics", timeout=30).text
    assert 'haproxy_backend_active_servers{proxy="qin"} 3' in metrics
    pids = fleet.pids()
    stopped = fleet.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in pids.values())
    with pytest.raises(httpx.TransportError):
        httpx.get(fleet.lb_url + "/healthz", timeout=5)
    assert not (fleet.run_dir / "state.json").exists()


def test_a_bad_model_path_refuses_to_start_and_leaves_nothing_running(
    served_model: ServedModel, feature_redis: RedisServer, tmp_path: Path
) -> None:
    env = replica_env(served_model, feature_redis, tmp_path / "missing.onnx")
    fleet = Fleet(tmp_path / "run", env, free_run_of_ports(REPLICAS + 2), [1])
    started = fleet.cli("start")
    assert started.returncode == 1
    assert "exited before it was ready" in started.stderr
    assert "missing.onnx" in started.stderr  # the service's own one-line reason, passed on
    assert "Traceback" not in started.stderr
    assert not (fleet.run_dir / "state.json").exists()
    assert port_is_free(fleet.base_port + REPLICAS)  # no balancer left behind


def test_a_balancer_port_in_use_refuses_to_start_and_stops_the_replicas(
    served_model: ServedModel, feature_redis: RedisServer, tmp_path: Path
) -> None:
    env = replica_env(served_model, feature_redis, served_model.onnx)
    fleet = Fleet(tmp_path / "run", env, free_run_of_ports(REPLICAS + 2), [1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", fleet.base_port + REPLICAS))
        taken.listen()
        started = fleet.cli("start")
    assert started.returncode == 1
    assert "haproxy did not start" in started.stderr and "Traceback" not in started.stderr
    assert not (fleet.run_dir / "state.json").exists()
    assert all(port_is_free(fleet.base_port + i) for i in range(REPLICAS))  # replicas stopped


def test_a_replica_killed_under_load_costs_no_request(fleet: Fleet) -> None:
    loop = fleet.load()
    wait_until(lambda: loop.answered() >= 40, GENEROUS_DEADLINE_S, "40 answers before the kill")
    victim = fleet.pids()["r2"]
    os.kill(victim, signal.SIGKILL)  # no drain: requests in flight there are lost by it
    wait_until(
        lambda: fleet.view()["r2"] == "DOWN",
        GENEROUS_DEADLINE_S,
        "the balancer to mark the killed replica down",
    )
    answers = settle(loop, 80)
    # what the killed replica had in flight was sent again to another (retry-on empty-response,
    # conn-failure), so the client sees no error
    assert_every_request_answered_200(loop, answers)
    assert fleet.view() == {"r1": "UP", "r2": "DOWN", "r3": "UP"}


def test_sigterm_drains_a_replica_without_a_failed_request(fleet: Fleet) -> None:
    loop = fleet.load()
    wait_until(lambda: loop.answered() >= 40, GENEROUS_DEADLINE_S, "40 answers before SIGTERM")
    pid = fleet.pids()["r1"]
    os.kill(pid, signal.SIGTERM)
    # during the drain the replica still runs but the balancer has taken it out (its /readyz
    # answers 503): seen while the process is alive, so the drain, not a refused connection,
    # is what moved the traffic
    wait_until(
        lambda: fleet.view()["r1"] != "UP" or not alive(pid),
        GENEROUS_DEADLINE_S,
        "the balancer to take the draining replica out",
    )
    assert alive(pid), f"the replica exited before the balancer took it out ({DRAIN_S} s drain)"
    wait_until(lambda: not alive(pid), GENEROUS_DEADLINE_S, "the drained replica to exit")
    answers = settle(loop, 60)
    assert_every_request_answered_200(loop, answers)


def test_a_rolling_restart_onto_a_new_model_costs_no_request(
    fleet: Fleet, served_model: ServedModel, other_model: Path
) -> None:
    before = fleet.pids()
    loop = fleet.load()
    wait_until(lambda: loop.answered() >= 40, GENEROUS_DEADLINE_S, "40 answers before restart")
    restarted = fleet.cli("restart", MODEL_PATH=str(other_model))
    assert restarted.returncode == 0, restarted.stderr
    sent_after_restart = loop.sent
    answers = settle(loop, 60)
    assert_every_request_answered_200(loop, answers)
    versions = [a.model_version for a in answers]
    old = served_model.model_version
    new = set(versions) - {old}
    assert len(new) == 1, f"expected the old version and one new one, got {set(versions)}"
    assert versions[:10] == [old] * 10
    # once restart has returned, every replica runs the new model (answers in order of sending)
    assert set(versions[sent_after_restart:]) == new
    after = fleet.pids()
    assert all(before[name] != after[name] for name in before), (before, after)
    assert not any(alive(pid) for pid in before.values())


def test_reload_swaps_every_replica_in_turn_and_a_refused_file_changes_nothing(
    fleet: Fleet, served_model: ServedModel, other_model: Path
) -> None:
    old = served_model.model_version
    model = Path(fleet.env["MODEL_PATH"])
    model.write_bytes(b"not an onnx model")
    refused = fleet.cli("reload")
    assert refused.returncode == 1
    assert "replica r1 refused the model" in refused.stderr and "Traceback" not in refused.stderr
    for _ in range(2 * REPLICAS):  # every replica still answers with the old model
        scored = httpx.post(fleet.lb_url + "/score", json=fleet.body(0), timeout=30)
        assert scored.status_code == 200 and scored.json()["model_version"] == old

    shutil.copy(other_model, model)
    loop = fleet.load()
    wait_until(lambda: loop.answered() >= 40, GENEROUS_DEADLINE_S, "40 answers before reload")
    reloaded = fleet.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout.count("reloaded: ") == REPLICAS
    sent_after_reload = loop.sent
    answers = settle(loop, 60)
    assert_every_request_answered_200(loop, answers)
    versions = [a.model_version for a in answers]
    new = set(versions) - {old}
    assert len(new) == 1, f"expected the old version and one new one, got {set(versions)}"
    assert versions[:10] == [old] * 10
    assert set(versions[sent_after_reload:]) == new
