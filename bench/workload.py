"""What the load benchmarks offer the service and how one step is measured: the users and items
requests are drawn from, a generator run (bench.loadgen, its own process) at one rate with the
service's batch and stage means over its measured part, and a service's whole ladder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.ladder import climb, step_seconds
from bench.scrape import mean_batch, scrape, stage_means_ms
from bench.supervisor import Children, group_cpu_seconds, running_service, tail

HISTORY = 64
CANDIDATES = 100
#: Below this many users with a full stored history, requests carry an explicit history.
MIN_FULL_USERS = 100
#: User ids written to the generator's users file.
USERS_SAMPLED = 5000


@dataclass(frozen=True)
class Population:
    """Who the generator asks for: users with full histories and the item vocabulary."""

    users: np.ndarray
    item_vocab: int
    explicit_history: bool
    full_history_users: int


def population(data: Path, seed: int = 0) -> Population:
    from service.features.source import read_feature_set

    features = read_feature_set(data, HISTORY)
    lengths = np.diff(features.history_offsets)
    full = features.user_ids[lengths == HISTORY]
    explicit = len(full) < MIN_FULL_USERS
    pool = features.user_ids if explicit else full
    rng = np.random.default_rng(seed)
    users = rng.choice(pool, size=min(USERS_SAMPLED, len(pool)), replace=False)
    return Population(users, int(features.item_vocab), explicit, len(full))


def write_users(people: Population, path: Path) -> Path:
    """The generator's users file: one user id a line."""
    path.write_text("\n".join(str(u) for u in people.users.tolist()) + "\n")
    return path


@dataclass(frozen=True)
class LoadSettings:
    duration: float
    warmup: float
    timeout: float
    connections: int
    users_file: Path
    item_vocab: int
    history: int
    workdir: Path
    candidates: int = CANDIDATES


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """What a load benchmark against the demo artifacts takes: the model and data, the length
    of a step and the generator's limits, the request's size."""
    parser.add_argument("--model", type=Path, default=Path("artifacts/demo/model.onnx"))
    parser.add_argument("--data", type=Path, default=Path("artifacts/demo/data"))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="of which left out")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, from due time")
    parser.add_argument("--connections", type=int, default=256, help="generator's most")
    parser.add_argument(
        "--candidates", type=int, default=CANDIDATES, help="candidates per request (1 user)"
    )


def load_settings(
    args: argparse.Namespace, people: Population, users_file: Path, workdir: Path
) -> LoadSettings:
    """The steps' settings from ``add_load_arguments``' flags; an explicit history is sent
    when too few users have a full stored one."""
    return LoadSettings(
        args.duration, args.warmup, args.timeout, args.connections, users_file,
        people.item_vocab, HISTORY if people.explicit_history else 0, workdir,
        candidates=args.candidates,
    )  # fmt: skip


def run_step(
    children: Children,
    base: str,
    rate: float,
    settings: LoadSettings,
    name: str,
    path: str = "/score",
    protocol: str = "score",
    server_pgid: int | None = None,
) -> dict[str, Any]:
    """One generator run at ``rate`` (its own process), with the batch and stage means of its
    measured part (after the warm-up)."""
    out = settings.workdir / f"{name}_{rate:g}.json"
    duration = step_seconds(rate, settings.duration, settings.warmup)
    command = [
        sys.executable, "-m", "bench.loadgen", "--url", base, "--rate", str(rate),
        "--duration", str(duration), "--warmup", str(settings.warmup),
        "--candidates", str(settings.candidates), "--users-file", str(settings.users_file),
        "--item-vocab", str(settings.item_vocab), "--history", str(settings.history),
        "--timeout", str(settings.timeout), "--connections", str(settings.connections),
        "--seed", str(int(rate * 1000)), "--out", str(out), "--path", path,
        "--protocol", protocol,
    ]  # fmt: skip
    log = settings.workdir / f"{name}_{rate:g}.log"
    process = children.start(command, log)
    try:
        # The batch and stage means cover what the latencies cover: the service's counters are
        # read once the generator's warm-up is over (its start-up makes this a fraction of a
        # second early), not before its first request.
        time.sleep(settings.warmup)
        before = scrape(base)
        cpu_before = None if server_pgid is None else group_cpu_seconds(server_pgid)
        code = process.wait(timeout=duration + settings.timeout + 120)
        cpu_after = None if server_pgid is None else group_cpu_seconds(server_pgid)
    finally:
        children.stop(process)
    if code != 0:
        raise RuntimeError(f"loadgen failed ({code}) at {rate:g}/s: {tail(log)}")
    after = scrape(base)
    step = dict(json.loads(out.read_text())["summary"])
    # The server's CPU (all its processes) over the measured window, per request in it.
    step["server_cpu_ms_per_request"] = (
        None
        if cpu_before is None or cpu_after is None or not step["requests"]
        else (cpu_after - cpu_before) * 1000.0 / step["requests"]
    )
    step["mean_batch_candidates"] = mean_batch(before, after, "qin_batch_candidates")
    step["mean_batch_requests"] = mean_batch(before, after, "qin_batch_requests")
    step["stage_means_ms"] = stage_means_ms(before, after)
    return step


def describe(step: dict[str, Any]) -> str:
    latency = step["latency"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return (
        f"offered {step['offered_rate']:g}/s achieved {step['achieved_rate']:.1f}/s "
        f"p50 {ms(latency['p50_ms'])} p99 {ms(latency['p99_ms'])} ms, "
        f"statuses {step['status_counts']}, dispatch lag p99 {ms(step['dispatch_lag']['p99_ms'])}"
    )


@dataclass(frozen=True)
class ServiceRun:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the common environment
    ready_path: str = "/readyz"
    score_path: str = "/score"
    protocol: str = "score"  # bench.loadgen --protocol


def measure_service(
    children: Children,
    run: ServiceRun,
    env: dict[str, str],
    rates: list[float],
    settings: LoadSettings,
) -> dict[str, Any]:
    """Start the service, wait for readiness, climb the ladder (bench.ladder.climb), stop it."""
    print(f"starting {run.name}: {shlex.join(run.command)}", flush=True)
    log = settings.workdir / f"{run.name}.log"
    with running_service(children, run.command, {**env, **run.env}, log, run.ready_path) as service:

        def measure(rate: float) -> dict[str, Any]:
            step = run_step(
                children, service.base, rate, settings, run.name, run.score_path, run.protocol,
                server_pgid=service.process.pid,  # its own group (start_new_session)
            )  # fmt: skip
            print(f"  {run.name} {describe(step)}", flush=True)
            return step

        steps = climb(rates, measure)
    return {"command": shlex.join(run.command), "readyz": service.readyz, "steps": steps}
