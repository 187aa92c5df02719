"""What losing, draining or replacing a replica costs the requests going through HAProxy.

    python -m bench.replicas [--rate 60] [--duration 45] [--event-at 8]

Three replicas (``deploy/replicas.py``: ``python -m service`` processes, one core thread each) on
one Redis behind HAProxy, a fresh set for each scenario. ``bench.loadgen`` offers an open-loop
rate in its own process for ``--duration`` s; ``--event-at`` s in, one thing happens:

* ``baseline``: nothing (the reference for the latencies);
* ``kill``: one replica SIGKILLed (a crash: what it had in flight is dropped);
* ``kill (no retries)``: the same with HAProxy's retries and ``redispatch`` removed, so the
  table shows what resending buys;
* ``drain``: one replica sent SIGTERM (SHUTDOWN_DRAIN_S, then it exits);
* ``rolling restart``: ``deploy/replicas.py restart``, every replica replaced in turn;
* ``reload``: ``deploy/replicas.py reload``, every replica's model swapped in turn (SIGHUP).

Per scenario: requests sent and answered, status counts, latency p50/p99 over the run and p99
and max in the 10 s from the event, when the balancer had a killed or drained replica out of
rotation, and how long a restart or reload round took. Latency is from each request's due time
(so a request that waited for a connection carries the wait). Exit 1 when a request is lost
(sent but never answered), or when a scenario that keeps HAProxy's retries answers anything
but 200.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.cluster import add_small_dataset_arguments, export_model
from bench.feature_store import HISTORY_LEN, ensure_dataset
from bench.loadgen import STATUS_ERROR, STATUS_TIMEOUT
from bench.report import markdown_table, publish_checked
from bench.supervisor import Children, feature_redis, interrupts_as_exit, supervised, tail
from tests.support.redis import free_run_of_ports

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "replicas.py"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
REPLICAS = 3
SCENARIOS = ("baseline", "kill", "kill (no retries)", "drain", "rolling restart", "reload")
WINDOW_S = 10.0  # the "after the event" window


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_small_dataset_arguments(parser)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second offered")
    parser.add_argument("--candidates", type=int, default=100, help="item ids per request")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds of arrivals")
    parser.add_argument("--event-at", type=float, default=8.0, help="seconds in, the event")
    parser.add_argument("--drain-s", type=float, default=5.0, help="replicas' SHUTDOWN_DRAIN_S")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder")
    return parser


class Fleet:
    """A set of replicas and its balancer, driven through deploy/replicas.py."""

    def __init__(self, run_dir: Path, env: dict[str, str], base_port: int, config: Path) -> None:
        self.run_dir, self.env, self.base_port, self.config = run_dir, env, base_port, config
        self.lb_url = f"http://127.0.0.1:{base_port + REPLICAS}"

    def cli(self, command: str) -> subprocess.CompletedProcess[str]:
        args = [
            sys.executable, str(SCRIPT), command, "--replicas", str(REPLICAS),
            "--base-port", str(self.base_port), "--lb-port", str(self.base_port + REPLICAS),
            "--stats-port", str(self.base_port + REPLICAS + 1), "--run-dir", str(self.run_dir),
            "--haproxy-config", str(self.config),
        ]  # fmt: skip
        return subprocess.run(
            args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=900
        )

    def checked(self, command: str) -> float:
        """Runs a command that must succeed; its wall time."""
        started = time.perf_counter()
        done = self.cli(command)
        if done.returncode != 0:
            raise RuntimeError(f"replicas.py {command} failed: {done.stderr.strip()}")
        return time.perf_counter() - started

    def pids(self) -> dict[str, int]:
        state = json.loads((self.run_dir / "state.json").read_text())
        return {r["name"]: r["pid"] for r in state["replicas"]}

    def server_status(self, name: str) -> str:
        stats = f"http://127.0.0.1:{self.base_port + REPLICAS + 1}/stats;csv"
        with urllib.request.urlopen(stats, timeout=5) as response:
            lines = response.read().decode().lstrip("# ").splitlines()
        header = lines[0].split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "qin" and row.get("svname") == name:
                return row["status"]
        return "?"


def no_retries_config(folder: Path) -> Path:
    """haproxy.cfg with no retries and no redispatch: a dropped request is the client's error."""
    lines = HAPROXY_CFG.read_text().splitlines()
    dropped = ("retries", "retry-on", "option redispatch")
    kept = [line for line in lines if not line.strip().startswith(dropped)]
    defaults = next(i for i, line in enumerate(kept) if line.startswith("defaults"))
    kept.insert(defaults + 1, "  retries 0")
    path = folder / "haproxy-no-retries.cfg"
    path.write_text("\n".join(kept) + "\n")
    return path


def percentile_ms(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q) * 1000.0) if len(values) else None


def analyse(records: Path, event_s: float) -> dict[str, Any]:
    table = np.loadtxt(records, delimiter=",", skiprows=1, ndmin=2)
    scheduled, sent, done, status = table[:, 0], table[:, 2], table[:, 3], table[:, 4]
    status = status.astype(np.int64)
    ok = status == 200
    latency = done - scheduled
    after = (scheduled >= event_s) & (scheduled < event_s + WINDOW_S)
    codes, counts = np.unique(status[status > 0], return_counts=True)
    return {
        "requests": len(status),
        "sent": int((~np.isnan(sent)).sum()),
        "answered": int((status > 0).sum()),
        "ok": int(ok.sum()),
        "status_counts": {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
        "non_200": int(((status > 0) & ~ok).sum()),
        "timeouts": int((status == STATUS_TIMEOUT).sum()),
        "transport_errors": int((status == STATUS_ERROR).sum()),
        "p50_ms": percentile_ms(latency[ok], 50),
        "p99_ms": percentile_ms(latency[ok], 99),
        "window_requests": int(after.sum()),
        "window_p99_ms": percentile_ms(latency[ok & after], 99),
        "window_max_ms": percentile_ms(latency[ok & after], 100),
    }


def run_scenario(
    name: str,
    children: Children,
    workdir: Path,
    env: dict[str, str],
    users_file: Path,
    item_vocab: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    folder = workdir / "".join(c if c.isalnum() else "_" for c in name)
    folder.mkdir()
    config = no_retries_config(folder) if name == "kill (no retries)" else HAPROXY_CFG
    fleet = Fleet(folder / "run", env, free_run_of_ports(REPLICAS + 2), config)
    fleet.checked("start")
    records, out, log = folder / "records.csv", folder / "loadgen.json", folder / "loadgen.log"
    command = [
        sys.executable, "-m", "bench.loadgen", "--url", fleet.lb_url, "--rate", str(args.rate),
        "--duration", str(args.duration), "--warmup", "0", "--timeout", "10",
        "--candidates", str(args.candidates), "--users-file", str(users_file),
        "--item-vocab", str(item_vocab), "--records", str(records), "--out", str(out),
    ]  # fmt: skip
    result: dict[str, Any] = {"scenario": name}
    try:
        generator = children.start(command, log)
        # the event is placed on loadgen's clock afterwards, from the t0 it records
        started = time.perf_counter()
        time.sleep(args.event_at)
        if generator.poll() is not None:
            raise RuntimeError(f"loadgen exited early ({generator.returncode}): {tail(log)}")
        event_at = time.perf_counter()
        victim = fleet.pids()["r2"]
        if name.startswith("kill"):
            os.kill(victim, signal.SIGKILL)
        elif name == "drain":
            os.kill(victim, signal.SIGTERM)
        elif name == "rolling restart":
            result["command_s"] = fleet.checked("restart")
        elif name == "reload":
            result["command_s"] = fleet.checked("reload")
        if name.startswith("kill") or name == "drain":
            deadline = time.perf_counter() + 60
            while fleet.server_status("r2") == "UP" and time.perf_counter() < deadline:
                time.sleep(0.05)
            result["out_of_rotation_after_s"] = time.perf_counter() - event_at
        code = generator.wait(timeout=args.duration + 120)
        children.stop(generator)
        if code != 0:
            raise RuntimeError(f"loadgen failed ({code}): {tail(log)}")
    finally:
        fleet.cli("stop")
    t0 = float(json.loads(out.read_text())["t0_perf_counter"])
    result["event_at_s"] = event_at - t0
    result["launch_to_t0_s"] = t0 - started
    result.update(analyse(records, event_at - t0))
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: dict[str, Any]) -> str:
    rows = []
    for run in results["scenarios"]:
        others = {k: v for k, v in run["status_counts"].items() if k != "200"}
        failed = ", ".join(f"{n} x {k}" for k, n in others.items()) or "0"
        lost = run["timeouts"] + run["transport_errors"]
        out = run.get("out_of_rotation_after_s")
        took = run.get("command_s")
        rows.append([
            run["scenario"], run["requests"], run["answered"], run["ok"], failed, lost,
            _ms(run["p50_ms"]), _ms(run["p99_ms"]), _ms(run["window_p99_ms"]),
            _ms(run["window_max_ms"]), "-" if out is None else f"{out:.2f}",
            "-" if took is None else f"{took:.1f}",
        ])  # fmt: skip
    headers = [
        "scenario", "sent", "answered", "200", "not 200", "no answer", "p50 ms", "p99 ms",
        f"p99 ms, {WINDOW_S:g} s after", f"max ms, {WINDOW_S:g} s after",
        "out of rotation after s", "command s",
    ]  # fmt: skip
    return (
        f"### {REPLICAS} replicas behind HAProxy, open loop at {results['rate']:g} req/s "
        f"(1 user x {results['candidates']} candidates) for {results['duration_s']:g} s, the "
        f"event {results['event_at_s']:g} s after the generator's launch; SHUTDOWN_DRAIN_S "
        f"{results['drain_s']:g}, one core thread per replica\n\n"
        + markdown_table(headers, rows)
        + "\n\nkill: SIGKILL of one replica; drain: SIGTERM; rolling restart and reload: "
        '`deploy/replicas.py restart` / `reload` over all three. "no retries": HAProxy '
        "with no retries and no `redispatch`. Latency from each request's due time, 200s only.\n"
    )


def problems(results: dict[str, Any]) -> list[str]:
    found = []
    for run in results["scenarios"]:
        if run["sent"] != run["requests"] or run["timeouts"] or run["transport_errors"]:
            found.append(f"{run['scenario']}: {run['requests'] - run['answered']} not answered")
        if run["scenario"] != "kill (no retries)" and run["ok"] != run["requests"]:
            found.append(f"{run['scenario']}: {run['requests'] - run['ok']} not 200")
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        print(f"error: unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    data, _ = ensure_dataset(args)
    with interrupts_as_exit(), supervised("bench-replicas-") as (children, workdir):
        print("exporting a model for the replicas ...", flush=True)
        onnx = export_model(data, workdir)
        with feature_redis(workdir, data, announce=True) as redis:
            from service.features.source import read_feature_set

            features = read_feature_set(data, HISTORY_LEN)
            rng = np.random.default_rng(1)
            users = rng.choice(features.user_ids, size=min(2000, features.num_users), replace=False)
            users_file = workdir / "users.txt"
            users_file.write_text("\n".join(str(u) for u in users.tolist()) + "\n")
            env = {
                "MODEL_PATH": str(onnx),
                "REDIS_URL": redis.url,
                "PROVIDER": "cpu",
                "INTRA_OP_THREADS": "1",
                "SHUTDOWN_DRAIN_S": str(args.drain_s),
                "LOG_LEVEL": "warning",
            }
            runs = []
            for name in chosen:
                print(f"scenario: {name} ...", flush=True)
                run = run_scenario(
                    name, children, workdir, env, users_file, features.item_vocab, args
                )
                print(json.dumps(run), flush=True)
                runs.append(run)
    results = {
        "replicas": REPLICAS,
        "rate": args.rate,
        "candidates": args.candidates,
        "duration_s": args.duration,
        "event_at_s": args.event_at,
        "drain_s": args.drain_s,
        "window_s": WINDOW_S,
        "intra_op_threads": 1,
        "dataset": {"users": args.users, "items": args.items},
        "scenarios": runs,
    }
    return publish_checked("replicas", results, table(results), problems(results), args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
