"""The benchmarks' child processes: each in its own process group, every one stopped on exit, on
error and on Ctrl-C; a service started on a free loopback port and waited for until ``/readyz``
answers; a Redis loaded with a dataset's features.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support.redis import RedisServer, free_port

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


class Children:
    """Every child process started here, each in its own process group, stopped on exit."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("wb") if log is not None else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        finally:
            if log is not None and not isinstance(out, int):
                out.close()
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the child's group, SIGKILL if it is still there after STOP_TIMEOUT_S."""
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the group the child leads (start_new_session)


@contextmanager
def supervised(prefix: str) -> Iterator[tuple[Children, Path]]:
    """A ``Children`` and a scratch folder for their logs and files; every child still running
    is stopped on the way out, before the folder is removed."""
    children = Children()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            yield children, Path(tmp)
        finally:
            children.stop_all()  # before their log folder goes


@contextmanager
def interrupts_as_exit() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all raise KeyboardInterrupt, so the ``finally`` blocks stop the
    children whichever way the run is ended (SIGINT too: a shell starts background jobs with it
    ignored)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def python_command(text: str) -> list[str]:
    """Split a command line; a leading ``python`` means this interpreter (the venv's)."""
    words = shlex.split(text)
    if words and words[0] in ("python", "python3"):
        words[0] = sys.executable
    return words


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_ready(
    base: str, process: subprocess.Popen[bytes], log: Path, path: str = "/readyz"
) -> dict[str, Any]:
    """Poll ``path`` until 200; fail at once if the process exits, with its log's tail."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}: {tail(log)}")
        try:
            status, body = http_get(f"{base}{path}", timeout=2.0)
        except OSError:
            status, body = 0, ""
        if status == 200:
            try:
                return dict(json.loads(body))
            except (ValueError, TypeError):
                return {"body": body}
        time.sleep(0.2)
    raise RuntimeError(f"{base}{path} not 200 within {READY_TIMEOUT_S:.0f} s: {tail(log)}")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of one process group (a server started
    here, with its workers: each child runs in a group of its own). Linux /proc; 0 elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        # after the command name: state, ppid, pgrp, ... utime (12th), stime (13th)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class RunningService:
    base: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    readyz: dict[str, Any]  # its /readyz answer


@contextmanager
def running_service(
    children: Children,
    command: list[str],
    env: dict[str, str],
    log: Path,
    ready_path: str = "/readyz",
) -> Iterator[RunningService]:
    """``command`` as a child with this environment plus ``env``, HOST and PORT (a free loopback
    port), once ``ready_path`` answers 200; stopped on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    child_env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)}
    process = children.start(command, log, child_env)
    try:
        yield RunningService(base, process, wait_ready(base, process, log, ready_path))
    finally:
        children.stop(process)


def load_features(redis_url: str, data: Path, log: Path) -> None:
    command = [sys.executable, "-m", "service.features", "load", "--data", str(data)]
    with log.open("wb") as out:
        subprocess.run(
            [*command, "--redis-url", redis_url], check=True, stdout=out, stderr=subprocess.STDOUT
        )


@contextmanager
def feature_redis(workdir: Path, data: Path, announce: bool = False) -> Iterator[RedisServer]:
    """A redis-server of its own (files under ``workdir/redis``) holding ``data``'s features
    (``python -m service.features load``, logged to ``workdir/features_load.log``); ``announce``
    prints where it runs before loading."""
    with RedisServer(workdir / "redis") as server:
        if announce:
            print(f"redis on {server.url}; loading {data}", flush=True)
        load_features(server.url, data, workdir / "features_load.log")
        yield server
