"""Run several service replicas behind HAProxy on one machine, without containers.

    .venv/bin/python deploy/replicas.py start [--replicas 3] [--lb-port 8080]
    .venv/bin/python deploy/replicas.py status
    MODEL_PATH=new.onnx .venv/bin/python deploy/replicas.py restart
    .venv/bin/python deploy/replicas.py reload
    .venv/bin/python deploy/replicas.py stop

Each replica is ``python -m service`` on its own port, configured by the environment this script
is run with (MODEL_PATH, REDIS_URL, ...); HAProxy (deploy/haproxy/haproxy.cfg) balances them and
health-checks /readyz. ``restart`` replaces them one at a time, each only once the others are up
in the balancer: SIGTERM (the replica drains: /readyz 503 while it still answers), wait for it to
exit, start it again with the environment ``restart`` is run with, wait until the balancer has it
up. So a rolling upgrade (new model file, new code, new settings) costs no request. ``reload`` is
the lighter way to a new model written over MODEL_PATH: each replica in turn gets SIGHUP and
swaps the model between two batches (the service's hot reload), and the next one is told only
once this one has swapped; a replica that refuses the file keeps its model and stops the round.

The run directory (default build/replicas) holds state.json, the generated backend file and the
logs. Standard library only, so that it runs with the same Python as the service.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "qin"


class Refused(Exception):
    """A problem the user can act on: printed as one line, exit 1."""


@dataclass
class Replica:
    name: str
    port: int
    pid: int


@dataclass
class State:
    replicas: list[Replica]
    haproxy_pid: int
    lb_port: int
    stats_port: int
    host: str

    @classmethod
    def read(cls, run_dir: Path) -> State:
        path = run_dir / "state.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise Refused(f"nothing is running from {run_dir} (no state.json)") from None
        raw["replicas"] = [Replica(**r) for r in raw["replicas"]]
        return cls(**raw)

    def write(self, run_dir: Path) -> None:
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(run_dir / "state.json")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a child of this process that exited stays a zombie until reaped: not alive
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET; status 0 when no HTTP answer came."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def balancer_view(state: State) -> dict[str, str]:
    """Server name -> its status in HAProxy's backend ("UP", "DOWN", "UP 1/2", ...)."""
    status, body = get(f"http://{state.host}:{state.stats_port}/stats;csv")
    if status != 200:
        return {}
    rows = csv.DictReader(io.StringIO(body.lstrip("# ")))
    return {
        r["svname"]: r["status"]
        for r in rows
        if r["pxname"] == BACKEND and r["svname"] not in ("FRONTEND", "BACKEND")
    }


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise Refused(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start_replica(run_dir: Path, name: str, port: int, host: str) -> Replica:
    env = {**os.environ, "HOST": host, "PORT": str(port)}
    with (run_dir / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this script, and Ctrl-C here does not reach it
        )
    return Replica(name, port, process.pid)


def wait_replica_ready(run_dir: Path, replica: Replica, host: str, timeout_s: float) -> None:
    url = f"http://{host}:{replica.port}/readyz"

    def ready() -> bool:
        if not alive(replica.pid):
            tail = log_tail(run_dir / f"{replica.name}.log")
            raise Refused(f"replica {replica.name} exited before it was ready:\n{tail}")
        return get(url)[0] == 200

    wait_for(f"replica {replica.name} to answer {url} with 200", ready, timeout_s)


def stop_processes(pids: list[int], timeout_s: float) -> bool:
    """SIGTERM to all at once, wait up to ``timeout_s``, then SIGKILL what is left; whether all
    exited on the SIGTERM."""
    running = [pid for pid in pids if alive(pid)]
    for pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running := [pid for pid in running if alive(pid)]:
        if time.monotonic() > deadline:
            for pid in running:
                os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.1)
    return True


def stop_process(pid: int, timeout_s: float) -> bool:
    return stop_processes([pid], timeout_s)


def write_backend(run_dir: Path, replicas: list[Replica], host: str) -> Path:
    lines = [f"backend {BACKEND}"] + [f"  server {r.name} {host}:{r.port}" for r in replicas]
    path = run_dir / "backend.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def haproxy_binary() -> str:
    found = os.environ.get("HAPROXY") or shutil.which("haproxy")
    if not found:
        raise Refused("haproxy not found: install it (apt-get install haproxy) or set HAPROXY")
    return found


def start(args: argparse.Namespace) -> None:
    run_dir: Path = args.run_dir
    if (run_dir / "state.json").exists():
        state = State.read(run_dir)
        if alive(state.haproxy_pid) or any(alive(r.pid) for r in state.replicas):
            raise Refused(f"already running from {run_dir}; stop it first")
    binary = haproxy_binary()
    run_dir.mkdir(parents=True, exist_ok=True)
    replicas = [
        start_replica(run_dir, f"r{i + 1}", args.base_port + i, args.host)
        for i in range(args.replicas)
    ]
    state = State(replicas, 0, args.lb_port, args.stats_port, args.host)
    state.write(run_dir)  # written at once, so that stop can clean up after a failed start
    try:
        for replica in replicas:
            wait_replica_ready(run_dir, replica, args.host, args.timeout_s)
        backend = write_backend(run_dir, replicas, args.host)
        pidfile = run_dir / "haproxy.pid"
        env = {
            **os.environ,
            "QIN_LB_BIND": f"{args.host}:{args.lb_port}",
            "QIN_LB_STATS_BIND": f"{args.host}:{args.stats_port}",
        }
        checked = subprocess.run(
            [binary, "-c", "-q", "-f", str(args.haproxy_config), "-f", str(backend)],
            env=env,
            capture_output=True,
            text=True,
        )
        if checked.returncode != 0:
            raise Refused(f"haproxy refused its configuration: {checked.stderr.strip()}")
        with (run_dir / "haproxy.log").open("ab") as log:
            daemon = subprocess.run(
                [
                    binary,
                    "-D",
                    "-p",
                    str(pidfile),
                    "-f",
                    str(args.haproxy_config),
                    "-f",
                    str(backend),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if daemon.returncode != 0:  # a port in use, typically
            raise Refused(f"haproxy did not start:\n{log_tail(run_dir / 'haproxy.log')}")
        state.haproxy_pid = int(pidfile.read_text().split()[0])
        state.write(run_dir)

        def all_up() -> bool:
            view = balancer_view(state)
            return all(view.get(r.name) == "UP" for r in replicas)

        wait_for("the balancer to have every replica up", all_up, args.timeout_s)
    except Refused:
        stop(args)
        raise
    print(
        f"{len(replicas)} replicas behind http://{args.host}:{args.lb_port} "
        f"(balancer state: http://{args.host}:{args.stats_port}/stats)"
    )


def status(args: argparse.Namespace) -> None:
    state = State.read(args.run_dir)
    view = balancer_view(state)
    lb = "running" if alive(state.haproxy_pid) else "not running"
    print(f"balancer http://{state.host}:{state.lb_port}: {lb}")
    for r in state.replicas:
        ready = get(f"http://{state.host}:{r.port}/readyz")[0]
        process = f"pid {r.pid}" if alive(r.pid) else "not running"
        where = view.get(r.name, "-")
        print(f"{r.name} :{r.port} {process}, /readyz {ready or '-'}, balancer {where}")


def restart(args: argparse.Namespace) -> None:
    state = State.read(args.run_dir)
    for i, old in enumerate(state.replicas):
        view = balancer_view(state)
        others = [r.name for r in state.replicas if r.name != old.name]
        down = [name for name in others if view.get(name) != "UP"]
        if down:
            raise Refused(f"not restarting {old.name}: {', '.join(down)} not up in the balancer")
        drained = stop_process(old.pid, args.timeout_s)
        if not drained:
            print(f"{old.name} did not exit within {args.timeout_s:.0f} s; killed", file=sys.stderr)
        new = start_replica(args.run_dir, old.name, old.port, state.host)
        state.replicas[i] = new
        state.write(args.run_dir)
        wait_replica_ready(args.run_dir, new, state.host, args.timeout_s)
        wait_for(
            f"the balancer to have {new.name} up",
            lambda name=new.name: balancer_view(state).get(name) == "UP",
            args.timeout_s,
        )
        print(f"{new.name} restarted (pid {new.pid})")


def reload_count(state: State, replica: Replica, outcome: str) -> float:
    """qin_model_reloads_total{outcome=...} of one replica (0 before its first reload)."""
    status, body = get(f"http://{state.host}:{replica.port}/metrics")
    if status != 200:
        raise Refused(f"replica {replica.name} does not answer /metrics ({status or 'no answer'})")
    found = re.search(rf'^qin_model_reloads_total{{outcome="{outcome}"}} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def model_version(state: State, replica: Replica) -> str:
    body = get(f"http://{state.host}:{replica.port}/readyz")[1]
    try:
        return str(json.loads(body)["model"]["version"])
    except (ValueError, KeyError, TypeError):
        return "?"


def reload(args: argparse.Namespace) -> None:
    state = State.read(args.run_dir)
    for replica in state.replicas:
        if not alive(replica.pid):
            raise Refused(f"replica {replica.name} is not running")
        before = {o: reload_count(state, replica, o) for o in ("swapped", "refused")}
        os.kill(replica.pid, signal.SIGHUP)

        def answered(r: Replica = replica, b: dict[str, float] = before) -> bool:
            return any(reload_count(state, r, o) > n for o, n in b.items())

        wait_for(f"replica {replica.name} to reload its model", answered, args.timeout_s)
        if reload_count(state, replica, "refused") > before["refused"]:
            tail = log_tail(args.run_dir / f"{replica.name}.log")
            raise Refused(f"replica {replica.name} refused the model (it keeps its own):\n{tail}")
        print(f"{replica.name} reloaded: {model_version(state, replica)}")


def stop(args: argparse.Namespace) -> None:
    state = State.read(args.run_dir)
    # the balancer first, so that no request reaches a replica that is going away
    if state.haproxy_pid:
        stop_process(state.haproxy_pid, 10)
    # then every replica at once: nothing routes to them any more, so each drain runs in parallel
    stop_processes([r.pid for r in state.replicas], args.timeout_s)
    (args.run_dir / "state.json").unlink()
    print(f"stopped {len(state.replicas)} replicas and the balancer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "status", "restart", "reload", "stop"])
    parser.add_argument("--replicas", type=int, default=3, help="replicas to start")
    parser.add_argument("--base-port", type=int, default=8101, help="first replica's port")
    parser.add_argument("--lb-port", type=int, default=8080, help="the balancer's port")
    parser.add_argument("--stats-port", type=int, default=8404, help="HAProxy stats, /metrics")
    parser.add_argument("--host", default="127.0.0.1", help="address everything binds to")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "build" / "replicas")
    parser.add_argument(
        "--haproxy-config", type=Path, default=HAPROXY_CFG, help="the shared part of the config"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=120, help="longest wait for one replica's start or exit"
    )
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    commands = {
        "start": start,
        "status": status,
        "restart": restart,
        "reload": reload,
        "stop": stop,
    }
    try:
        commands[args.command](args)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
