"""Load benchmark of the scoring service against the naive one, open loop, on one machine.

    python -m bench.service_load [--rates 10,20,40] [--duration 8] [--only service|naive|both]
        [--model artifacts/demo/model.onnx --checkpoint artifacts/demo/checkpoint
         --data artifacts/demo/data] [--service-command CMD] [--naive-command CMD]
        [--candidates 100] [--provider cpu|cuda]

One command, every process its own:

1. a redis-server (``RedisServer``) loaded with the dataset's features
   (``python -m service.features load``);
2. the model-only floor: an onnxruntime session on the same ONNX file and provider, 1 user x
   100 candidates (``--candidates``), history 64, median and p99 of many calls (nothing else
   running); on CUDA through the service's own runner (IO binding);
3. the naive service (bench.naive_service), then the real one (``python -m service``, configured
   by MODEL_PATH, REDIS_URL, HOST and PORT), each a child process that must answer ``/readyz``;
4. for each, the open-loop generator (bench.loadgen, its own process) at fixed rates on a
   geometric ladder, one step past saturation: climbing stops after the first step whose p99 is
   above 50 ms or whose achieved rate is below 90% of the offered one. The real service's ladder
   starts at the naive one's highest sustained rate (the comparison point; lower rates add
   nothing). A step measures at least MIN_MEASURED_REQUESTS requests (longer at low rates), so
   its p99 is not one outlier. Mean batch size per step comes from the ``qin_batch_candidates`` and
   ``qin_batch_requests`` histograms of ``/metrics`` (sum and count deltas), when present;
5. the idle penalty: the model call and a Redis GET back to back and spaced at the comparison
   rate, nothing else running (what a request at low load pays that the floor does not show).

Requests are 1 user x 100 candidates (uniform over the item vocabulary), users drawn from those
whose stored history holds 64 items; if the data has too few such users every request sends an
explicit 64-item history instead. Writes bench/results/service_load.{json,md,png}, or
service_load_cuda.* with ``--provider cuda`` (the service then runs with PROVIDER=cuda, and
refuses to start rather than fall back to the CPU; bench/gpu.sh runs it on a GPU machine).

Every child (Redis, services, generator) is stopped on exit, on error and on Ctrl-C. The
generator shares the machine's cores with the service and Redis: the step's dispatch lag says
when the generator, not the service, was the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from bench.report import RESULTS_DIR, markdown_table, write_result
from service.features.testing import RedisServer, free_port

HISTORY = 64
CANDIDATES = 100
#: A step is sustained when p99 is at most this and the achieved rate at least RATE_FRACTION.
P99_LIMIT_MS = 50.0
#: The GPU target's latency bound: the highest rate whose p99 stays within it is reported too.
P99_TIGHT_MS = 5.0
RATE_FRACTION = 0.9
#: Bisections between the last sustained and the first unsustained ladder rate.
REFINEMENTS = 2
#: A step is measured over at least this many requests (after warm-up), so that its p99 is not
#: one outlier: at low rates the step runs longer than --duration.
MIN_MEASURED_REQUESTS = 300
#: Below this many users with a full stored history, requests carry an explicit history.
MIN_FULL_USERS = 100
#: User ids written to the generator's users file.
USERS_SAMPLED = 5000
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
BATCH_METRICS = ("qin_batch_candidates", "qin_batch_requests")
#: The service's per-stage histogram (label ``stage``): where a scored request's time goes inside
#: the service (redis: features; queue: waiting for the model; model: its batch, from the hand-off
#: to the model thread to the result back on the event loop; total: arrival to scores).
STAGE_METRIC = "qin_stage_duration_seconds"
STAGES = ("redis", "queue", "model", "total")


# --------------------------------------------------------------------------------------------
# Pure functions: ladder, saturation, metrics, summary


def ladder(start: float, factor: float, maximum: float) -> list[float]:
    """Geometric rates ``start * factor**k`` up to ``maximum``, rounded to 3 significant digits."""
    if start <= 0 or factor <= 1:
        raise ValueError(f"need start > 0 and factor > 1, got {start} and {factor}")
    rates: list[float] = []
    rate = start
    while rate <= maximum * (1 + 1e-9):
        rates.append(float(f"{rate:.3g}"))
        rate *= factor
    return rates


def step_seconds(rate: float, duration: float, warmup: float) -> float:
    """How long a step at ``rate`` runs: ``duration``, or longer so that the measured window
    (after ``warmup``) holds at least MIN_MEASURED_REQUESTS requests."""
    return max(duration, warmup + math.ceil(MIN_MEASURED_REQUESTS / rate))


def saturated(step: dict[str, Any]) -> bool:
    """The service did not keep up: under 90% of the offered rate answered OK."""
    offered = step.get("scheduled_rate", step["offered_rate"])
    return bool(step["achieved_rate"] < RATE_FRACTION * offered)


def sustained(step: dict[str, Any]) -> bool:
    """p99 within the limit and at least 90% of the offered rate answered OK.

    The offered rate is the one counted in the window (``scheduled_rate``), so that at a few
    requests per second the rounding to whole requests does not fail a step.
    """
    p99 = step["latency"]["p99_ms"]
    offered = step.get("scheduled_rate", step["offered_rate"])
    return (
        p99 is not None and p99 <= P99_LIMIT_MS and step["achieved_rate"] >= RATE_FRACTION * offered
    )


def parse_metrics(text: str, names: tuple[str, ...] = BATCH_METRICS) -> dict[str, float]:
    """``NAME_sum`` and ``NAME_count`` of the given histograms, summed over label sets; the
    stage histogram per stage, as ``STAGE_METRIC:STAGE_sum`` and ``..._count``."""
    wanted = {f"{name}_{part}" for name in names for part in ("sum", "count")}
    per_stage = {f"{STAGE_METRIC}_{part}": part for part in ("sum", "count")}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, rest = line.partition(" ")
        metric, _, labels = series.partition("{")
        if metric in per_stage:
            stage = _label(labels, "stage")
            if stage is None:
                continue
            metric = f"{STAGE_METRIC}:{stage}_{per_stage[metric]}"
        elif metric not in wanted:
            continue
        values[metric] = values.get(metric, 0.0) + float(rest.split()[0])
    return values


def _label(labels: str, name: str) -> str | None:
    """The value of label ``name`` in a series' ``a="x",b="y"}`` tail (no escapes needed here:
    stage names are plain words)."""
    for pair in labels.rstrip("}").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == name:
            return value.strip().strip('"')
    return None


def stage_means_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """Mean milliseconds per stage between two scrapes; None when the service has no stages
    (the naive one) or scored nothing in between."""
    means = {}
    for stage in STAGES:
        mean = mean_batch(before, after, f"{STAGE_METRIC}:{stage}")
        if mean is not None:
            means[stage] = mean * 1e3
    return means or None


def mean_batch(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    """Mean observation of histogram ``name`` between two scrapes; None when absent or idle."""
    total, count = f"{name}_sum", f"{name}_count"
    if total not in before or total not in after or count not in after:
        return None
    batches = after[count] - before.get(count, 0.0)
    return (after[total] - before[total]) / batches if batches > 0 else None


def best_rate(steps: list[dict[str, Any]], key: str, rule: Any = sustained) -> float | None:
    """The largest ``key`` among steps the rule accepts."""
    values = [step[key] for step in steps if rule(step)]
    return max(values) if values else None


def within_p99(step: dict[str, Any], limit_ms: float = P99_LIMIT_MS) -> bool:
    p99 = step["latency"]["p99_ms"]
    return p99 is not None and p99 <= limit_ms


def within_tight_p99(step: dict[str, Any]) -> bool:
    """p99 within P99_TIGHT_MS and the offered rate kept up with (a step that shed load or fell
    behind has a short p99 for the wrong reason)."""
    return within_p99(step, P99_TIGHT_MS) and not saturated(step)


def step_at(steps: list[dict[str, Any]], offered: float) -> dict[str, Any] | None:
    return next((step for step in steps if math.isclose(step["offered_rate"], offered)), None)


def comparison(
    service: list[dict[str, Any]], naive: list[dict[str, Any]], floor_ms: float | None
) -> dict[str, Any]:
    """The headline figures; None where a side was not measured or never met the rule.

    * naive max sustainable rate: the highest offered rate the naive service sustained;
    * service overhead: the service's p50 at that rate minus the model-only median (latency from
      the actual send, so the generator's timer granularity is not counted; from the due time
      too, for reference);
    * throughput within p99 <= 50 ms: the highest achieved rate of a step with p99 <= 50 ms;
    * against the naive peak: the service's figure over the naive service's best achieved rate at
      any latency. The naive peak bounds its throughput under every latency limit, so this ratio
      is a lower bound, defined even when the naive service never meets p99 <= 50 ms, but only
      when the naive ladder reached a saturated step (else its peak bounds nothing).
    """
    naive_rate = best_rate(naive, "offered_rate")
    # Where the naive service sustained nothing, the service's lowest step stands in.
    at_rate = (
        naive_rate
        if naive_rate is not None
        else min((step["offered_rate"] for step in service), default=None)
    )
    at = step_at(service, at_rate) if at_rate is not None else None
    overhead = overhead_scheduled = None
    if at is not None and floor_ms is not None and at["ok"]:
        overhead = at["latency_from_send"]["p50_ms"] - floor_ms
        overhead_scheduled = at["latency"]["p50_ms"] - floor_ms
    service_max = best_rate(service, "achieved_rate", within_p99)
    service_max_tight = best_rate(service, "achieved_rate", within_tight_p99)
    naive_max = best_rate(naive, "achieved_rate", within_p99)
    ratio = service_max / naive_max if service_max and naive_max else None
    # The naive peak bounds its throughput only if its ladder went past its capacity.
    naive_peak = (
        max((step["achieved_rate"] for step in naive), default=None)
        if any(saturated(step) for step in naive)
        else None
    )
    lower_bound = service_max / naive_peak if service_max and naive_peak else None
    return {
        "naive_max_sustainable_rate": naive_rate,
        "overhead_at_rate": at_rate if at is not None else None,
        "service_p50_minus_floor_ms": overhead,
        "service_p50_minus_floor_from_due_ms": overhead_scheduled,
        "service_stage_means_at_rate_ms": at.get("stage_means_ms") if at is not None else None,
        "service_max_rate_p99_50ms": service_max,
        "service_max_rate_p99_5ms": service_max_tight,
        "naive_max_rate_p99_50ms": naive_max,
        "throughput_ratio": ratio,
        "naive_peak_rate": naive_peak,
        "throughput_ratio_vs_naive_peak": lower_bound,
        "targets": {
            "overhead_ms_at_most": 2.0,
            "throughput_ratio_at_least": 5.0,
            "overhead_met": overhead is not None and overhead <= 2.0,
            "ratio_met": max(ratio or 0.0, lower_bound or 0.0) >= 5.0,
        },
    }


# --------------------------------------------------------------------------------------------
# Child processes


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


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """Poll ``/readyz`` until 200; fail at once if the process exits, with its log's tail."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}: {tail(log)}")
        try:
            status, body = http_get(f"{base}/readyz", timeout=2.0)
        except OSError:
            status, body = 0, ""
        if status == 200:
            try:
                return dict(json.loads(body))
            except (ValueError, TypeError):
                return {"body": body}
        time.sleep(0.2)
    raise RuntimeError(f"{base}/readyz not 200 within {READY_TIMEOUT_S:.0f} s: {tail(log)}")


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def scrape(base: str) -> dict[str, float]:
    """The batch and stage histograms from /metrics; empty when the service has none (the
    naive one)."""
    try:
        status, body = http_get(f"{base}/metrics")
    except OSError:
        return {}
    return parse_metrics(body) if status == 200 else {}


# --------------------------------------------------------------------------------------------
# Set-up: features, users, model floor


def load_features(redis_url: str, data: Path, log: Path) -> None:
    command = [sys.executable, "-m", "service.features", "load", "--data", str(data)]
    with log.open("wb") as out:
        subprocess.run(
            [*command, "--redis-url", redis_url], check=True, stdout=out, stderr=subprocess.STDOUT
        )


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


def model_call(
    model: Path, candidates: int = CANDIDATES, provider: str = "cpu"
) -> tuple[dict[str, Any], Callable[[], Any]]:
    """The model's metadata and one onnxruntime call on 1 user x ``candidates``, history 64.

    On CUDA the call goes through the service's ModelRunner (inputs and output bound on the
    device, the result copied back), which refuses a session that fell back to the CPU."""
    from bench.model_latency import requests
    from contract.schema import FeatureSchema
    from export.onnx_io import make_session, read_metadata

    meta = read_metadata(model)
    schema = FeatureSchema.from_dict(meta["feature_schema"])
    feeds = requests(schema, 1, candidates).feeds(meta["graph"])
    if provider == "cuda":
        from service.runtime import ModelRunner

        runner = ModelRunner(model, "cuda")
        session, run = runner.session, runner.run
    else:
        session = make_session(model)
        run = partial(session.run, None)
    arrays = {i.name: feeds[i.name] for i in session.get_inputs()}

    def call() -> Any:
        return run(arrays)

    for _ in range(20):
        call()
    return meta, call


def paced_median_ms(call: Callable[[], Any], spacing_s: float, calls: int = 300) -> float:
    """Median time of ``call`` made once every ``spacing_s`` (sleeping between), in ms."""
    samples = []
    for _ in range(calls):
        time.sleep(spacing_s)
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(samples)


def idle_penalty(
    model: Path, redis_url: str, rate: float, candidates: int = CANDIDATES, provider: str = "cpu"
) -> dict[str, Any]:
    """The same work back to back and spaced at ``rate`` (nothing else running): on a machine
    whose idle cores sleep, each hand-off between processes or threads and each cold start of
    the model costs more at a low rate than in a tight loop. It explains part of the service's
    overhead at low load, which the back-to-back floor does not show."""
    import redis

    from service.features.layout import Keys

    live = Keys("qin").live
    _, run_model = model_call(model, candidates, provider)
    client = redis.Redis.from_url(redis_url)
    try:

        def redis_get() -> Any:
            return client.get(live)

        return {
            "rate": rate,
            "model_back_to_back_ms": paced_median_ms(run_model, 0.0),
            "model_paced_ms": paced_median_ms(run_model, 1.0 / rate),
            "redis_get_back_to_back_ms": paced_median_ms(redis_get, 0.0),
            "redis_get_paced_ms": paced_median_ms(redis_get, 1.0 / rate),
        }
    finally:
        client.close()


def model_floor(
    model: Path, budget_s: float = 5.0, candidates: int = CANDIDATES, provider: str = "cpu"
) -> dict[str, Any]:
    """onnxruntime alone on 1 user x ``candidates``, history 64: the latency no service beats."""
    meta, run_model = model_call(model, candidates, provider)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < 200 or (time.perf_counter() - started < budget_s and len(samples) < 5000):
        t0 = time.perf_counter()
        run_model()
        samples.append(time.perf_counter() - t0)
    ordered = np.sort(np.asarray(samples)) * 1e3
    return {
        "graph": meta["graph"],
        "provider": provider,
        "model_version": meta["model_version"],
        "median_ms": float(statistics.median(ordered)),
        "p99_ms": float(np.percentile(ordered, 99, method="inverted_cdf")),
        "calls": len(samples),
    }


# --------------------------------------------------------------------------------------------
# Load steps


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


def run_step(
    children: Children, base: str, rate: float, settings: LoadSettings, name: str
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
        "--seed", str(int(rate * 1000)), "--out", str(out),
    ]  # fmt: skip
    log = settings.workdir / f"{name}_{rate:g}.log"
    process = children.start(command, log)
    try:
        # The batch and stage means cover what the latencies cover: the service's counters are
        # read once the generator's warm-up is over (its start-up makes this a fraction of a
        # second early), not before its first request.
        time.sleep(settings.warmup)
        before = scrape(base)
        code = process.wait(timeout=duration + settings.timeout + 120)
    finally:
        children.stop(process)
    if code != 0:
        raise RuntimeError(f"loadgen failed ({code}) at {rate:g}/s: {tail(log)}")
    after = scrape(base)
    step = dict(json.loads(out.read_text())["summary"])
    step["mean_batch_candidates"] = mean_batch(before, after, "qin_batch_candidates")
    step["mean_batch_requests"] = mean_batch(before, after, "qin_batch_requests")
    step["stage_means_ms"] = stage_means_ms(before, after)
    return step


def climb(
    children: Children, base: str, rates: list[float], settings: LoadSettings, name: str
) -> list[dict[str, Any]]:
    """Steps up the ladder, stops after the first step that is not sustained, then narrows the
    gap between the last sustained rate and that one by REFINEMENTS geometric bisections (a
    ladder step of 1.6x alone would understate the maximum by up to 60%)."""
    steps: list[dict[str, Any]] = []

    def run(rate: float) -> bool:
        step = run_step(children, base, rate, settings, name)
        steps.append(step)
        print(f"  {name} {describe(step)}", flush=True)
        return sustained(step)

    good: float | None = None
    for rate in rates:
        if not run(rate):
            bad = rate
            break
        good = rate
    else:
        return steps
    for _ in range(REFINEMENTS if good is not None else 0):
        assert good is not None
        middle = float(f"{math.sqrt(good * bad):.3g}")
        if middle in (good, bad):
            break
        if run(middle):
            good = middle
        else:
            bad = middle
    return sorted(steps, key=lambda step: step["offered_rate"])


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


def measure_service(
    children: Children,
    run: ServiceRun,
    env: dict[str, str],
    rates: list[float],
    settings: LoadSettings,
) -> dict[str, Any]:
    """Start the service, wait for readiness, climb the ladder, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = settings.workdir / f"{run.name}.log"
    child_env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)}
    print(f"starting {run.name}: {shlex.join(run.command)}", flush=True)
    process = children.start(run.command, log, child_env)
    try:
        ready = wait_ready(base, process, log)
        steps = climb(children, base, rates, settings, run.name)
    finally:
        children.stop(process)
    return {"command": shlex.join(run.command), "readyz": ready, "steps": steps}


# --------------------------------------------------------------------------------------------
# Report


def status_text(counts: dict[str, int]) -> str:
    other = {code: n for code, n in counts.items() if code != "200"}
    return ", ".join(f"{code}: {n}" for code, n in sorted(other.items())) or "0"


def table(results: dict[str, Any]) -> str:
    columns = [
        "service", "offered req/s", "achieved req/s", "candidates/s", "p50 ms", "p95 ms",
        "p99 ms", "mean batch candidates", "mean batch requests", "in service ms",
        "non-200", "send lag p99 ms",
    ]  # fmt: skip
    rows = []
    for name, run in results["services"].items():
        for step in run["steps"]:
            latency = step["latency"]
            rows.append(
                [
                    name, f"{step['offered_rate']:g}", f"{step['achieved_rate']:.1f}",
                    f"{step['candidates_per_s']:,.0f}", _ms(latency["p50_ms"]),
                    _ms(latency["p95_ms"]), _ms(latency["p99_ms"]),
                    _num(step["mean_batch_candidates"]), _num(step["mean_batch_requests"]),
                    _stages_cell(step.get("stage_means_ms")), status_text(step["status_counts"]),
                    _ms(step["send_lag"]["p99_ms"]),
                ]
            )  # fmt: skip
    return (
        f"Open-loop load, 1 user x {results['candidates']} candidates, history {HISTORY}, "
        f"model on {_provider(results)}; "
        f"{results['step_seconds']:g} s per step ({results['warmup_seconds']:g} s warm-up left "
        f"out; longer at low rates, so that at least {MIN_MEASURED_REQUESTS} requests are "
        "measured); latency from the scheduled send time (queueing in the generator counts). "
        "In service: mean ms per request inside the service after the warm-up (from "
        f"``{STAGE_METRIC}``), as features from Redis / queue / model batch (hand-off to the "
        "model thread and back included) / total.\n\n"
        + markdown_table(columns, rows)
        + "\n\n"
        + "\n".join(f"- {line}" for line in summary_lines(results))
        + "\n"
    )


def _comparison_point(summary: dict[str, Any]) -> str:
    """Where the overhead was read: the naive service's best sustained rate, or, when the naive
    service was not run or sustained nothing, the service's lowest step (see comparison)."""
    if summary["naive_max_sustainable_rate"] is not None:
        return "at a load the naive service sustains"
    return "at its lowest measured load (no sustained naive rate to compare at)"


def summary_lines(results: dict[str, Any]) -> list[str]:
    floor = results["model_floor"]
    summary = results["summary"]
    lines = [
        f"Model-only floor (onnxruntime {_provider(results)}, {floor['graph']} graph, 1 x "
        f"{results['candidates']}, history {HISTORY}): median {floor['median_ms']:.3f} ms, "
        f"p99 {floor['p99_ms']:.3f} ms "
        f"({floor['calls']:,} calls).",
        f"Naive max sustainable rate (p99 <= {P99_LIMIT_MS:g} ms, >= "
        f"{RATE_FRACTION:.0%} of offered): {_rate(summary['naive_max_sustainable_rate'])}.",
        f"Service p50 {_comparison_point(summary)} "
        f"({_rate(summary['overhead_at_rate'])}) minus model-only time (target <= 2 ms): "
        f"{_ms(summary['service_p50_minus_floor_ms'])} ms from the actual send, "
        f"{_ms(summary['service_p50_minus_floor_from_due_ms'])} ms from the due time.",
        f"Max throughput at p99 <= {P99_LIMIT_MS:g} ms: service "
        f"{_rate(summary['service_max_rate_p99_50ms'])}, naive "
        f"{_rate(summary['naive_max_rate_p99_50ms'])}, ratio "
        f"{_ratio(summary['throughput_ratio'])} (target >= 5x); against the naive service's "
        f"peak at any latency ({_rate(summary['naive_peak_rate'])}): at least "
        f"{_ratio(summary['throughput_ratio_vs_naive_peak'])}.",
        f"Max throughput at p99 <= {P99_TIGHT_MS:g} ms (offered rate kept up with): service "
        f"{_rate(summary.get('service_max_rate_p99_5ms'))}.",
        *_stage_lines(summary.get("service_stage_means_at_rate_ms"), floor["median_ms"]),
        *_penalty_lines(results.get("idle_penalty")),
        f"Load average at start: {results['load_average']}; the generator, the services and "
        "Redis share the machine's cores.",
    ]
    return lines


def _provider(results: dict[str, Any]) -> str:
    return "CUDA" if results.get("provider") == "cuda" else "CPU"


def _stages_cell(means: dict[str, float] | None) -> str:
    if not means:
        return "-"
    return " / ".join(_ms(means.get(stage)) for stage in STAGES)


def _stage_lines(means: dict[str, float] | None, floor_ms: float) -> list[str]:
    """Where the service's own time went at the comparison rate (the rest of the client's p50
    is HTTP, JSON and the hand-offs between the generator and the service)."""
    if not means or "total" not in means:
        return []
    parts = ", ".join(
        f"{label} {_ms(means.get(stage))} ms"
        for stage, label in (("redis", "features from Redis"), ("queue", "queue"))
    )
    return [
        f"Inside the service at that rate (mean per request, from /metrics): {parts}, model "
        f"batch {_ms(means.get('model'))} ms (the floor above is {floor_ms:.3f} ms: the rest "
        f"is the hand-off to the model thread and back, packing, and a colder model call), "
        f"total {_ms(means['total'])} ms."
    ]


def _penalty_lines(penalty: dict[str, Any] | None) -> list[str]:
    if not penalty:
        return []
    return [
        f"Idle penalty of this machine (nothing else running; back to back vs one call every "
        f"1/{penalty['rate']:g} s): the model call {penalty['model_back_to_back_ms']:.3f} vs "
        f"{penalty['model_paced_ms']:.3f} ms, a Redis GET round trip "
        f"{penalty['redis_get_back_to_back_ms']:.3f} vs {penalty['redis_get_paced_ms']:.3f} ms. "
        "A request at low load pays the paced figures: its model call, its Redis round trip "
        "and its other hand-offs (client to event loop, loop to model thread and back) wake "
        "sleeping cores."
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value:,.1f} req/s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def plot(results: dict[str, Any], path: Path) -> None:
    """p50 and p99 against achieved rate for each service; the model-only floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(figsize=(8, 5))
    colours = {"service": "tab:blue", "naive": "tab:red"}
    for name, run in results["services"].items():
        steps = [step for step in run["steps"] if step["ok"]]
        rates = [step["achieved_rate"] for step in steps]
        colour = colours.get(name, "tab:gray")
        for key, style in (("p50_ms", "-o"), ("p99_ms", "--s")):
            values = [step["latency"][key] for step in steps]
            axes.plot(rates, values, style, color=colour, label=f"{name} {key[:3]}")
    floor = results["model_floor"]["median_ms"]
    axes.axhline(floor, color="black", linewidth=1, label=f"model-only median {floor:.2f} ms")
    axes.axhline(P99_LIMIT_MS, color="gray", linestyle=":", label=f"{P99_LIMIT_MS:g} ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("achieved rate (OK requests/s)")
    axes.set_ylabel("latency from scheduled send (ms)")
    axes.set_title(
        f"Open-loop load: 1 user x {results['candidates']} candidates, history {HISTORY}, "
        f"{_provider(results)}"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_load",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=Path("artifacts/demo/model.onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/demo/checkpoint"))
    parser.add_argument("--data", type=Path, default=Path("artifacts/demo/data"))
    parser.add_argument("--rates", help="comma-separated rates (overrides the ladder)")
    parser.add_argument("--start-rate", type=float, default=10.0, help="ladder's first rate")
    parser.add_argument("--factor", type=float, default=1.6, help="ladder's step factor")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="ladder's top")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="of which left out")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, from due time")
    parser.add_argument("--connections", type=int, default=256, help="generator's most")
    parser.add_argument("--only", choices=["both", "service", "naive"], default="both")
    parser.add_argument(
        "--service-command", default="python -m service", help="the real service (env-configured)"
    )
    parser.add_argument(
        "--naive-command",
        default=None,
        help="default: python -m bench.naive_service --checkpoint CHECKPOINT",
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--candidates", type=int, default=CANDIDATES, help="candidates per request (1 user)"
    )
    parser.add_argument(
        "--provider",
        choices=["cpu", "cuda"],
        default="cpu",
        help="onnxruntime provider of the floor and the service (PROVIDER); cuda needs "
        "onnxruntime-gpu and a GPU",
    )
    return parser


def service_runs(args: argparse.Namespace) -> list[ServiceRun]:
    """Naive first: its highest sustained rate is where the real service's ladder starts."""
    naive = args.naive_command or (
        f"python -m bench.naive_service --checkpoint {shlex.quote(str(args.checkpoint))}"
    )
    runs = []
    if args.only in ("both", "naive"):
        runs.append(ServiceRun("naive", python_command(naive)))
    if args.only in ("both", "service"):
        runs.append(ServiceRun("service", python_command(args.service_command)))
    return runs


def rates_for(
    args: argparse.Namespace, name: str, naive_steps: list[dict[str, Any]]
) -> list[float]:
    rates = (
        [float(word) for word in args.rates.split(",")]
        if args.rates
        else ladder(args.start_rate, args.factor, args.max_rate)
    )
    naive_rate = best_rate(naive_steps, "offered_rate")
    if name == "service" and naive_rate is not None:
        # Start exactly at the naive service's best sustained rate (where the overhead is
        # compared), then climb the ladder above it.
        rates = [naive_rate, *(rate for rate in rates if rate > naive_rate)]
    return rates


def check_inputs(args: argparse.Namespace) -> None:
    for path, what in ((args.model, "ONNX model"), (args.data / "item_info.parquet", "dataset")):
        if not path.is_file():
            raise SystemExit(f"{what} not found: {path} (run: bash deploy/demo.sh)")
    if args.only != "service" and args.naive_command is None and not args.checkpoint.is_dir():
        raise SystemExit(f"checkpoint not found: {args.checkpoint} (run: bash deploy/demo.sh)")
    if args.warmup >= args.duration:
        raise SystemExit("--warmup must be shorter than --duration")
    if args.candidates < 1:
        raise SystemExit(f"--candidates must be at least 1, got {args.candidates}")


def run(args: argparse.Namespace, children: Children, workdir: Path) -> dict[str, Any]:
    load_average = [round(x, 2) for x in os.getloadavg()]
    with RedisServer(workdir / "redis") as redis_server:
        print(f"redis on {redis_server.url}; loading {args.data}", flush=True)
        load_features(redis_server.url, args.data, workdir / "features_load.log")
        people = population(args.data)
        users_file = workdir / "users.txt"
        users_file.write_text("\n".join(str(u) for u in people.users.tolist()) + "\n")
        print("model-only floor ...", flush=True)
        floor = model_floor(args.model, candidates=args.candidates, provider=args.provider)
        print(f"  median {floor['median_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms", flush=True)
        settings = LoadSettings(
            args.duration, args.warmup, args.timeout, args.connections, users_file,
            people.item_vocab, HISTORY if people.explicit_history else 0, workdir,
            candidates=args.candidates,
        )  # fmt: skip
        env = {
            "MODEL_PATH": str(args.model.resolve()),
            "REDIS_URL": redis_server.url,
            "PROVIDER": args.provider,
        }
        services: dict[str, Any] = {}
        for service_run in service_runs(args):
            naive_steps = services.get("naive", {}).get("steps", [])
            rates = rates_for(args, service_run.name, naive_steps)
            services[service_run.name] = measure_service(
                children, service_run, env, rates, settings
            )
        steps = {name: run["steps"] for name, run in services.items()}
        summary = comparison(steps.get("service", []), steps.get("naive", []), floor["median_ms"])
        penalty = None
        if summary["overhead_at_rate"] is not None:
            print("idle penalty ...", flush=True)
            penalty = idle_penalty(
                args.model,
                redis_server.url,
                summary["overhead_at_rate"],
                args.candidates,
                args.provider,
            )
    return {
        "candidates": args.candidates,
        "provider": args.provider,
        "history": HISTORY,
        "explicit_history": people.explicit_history,
        "users_with_full_history": people.full_history_users,
        "item_vocab": people.item_vocab,
        "step_seconds": args.duration,
        "warmup_seconds": args.warmup,
        "p99_limit_ms": P99_LIMIT_MS,
        "load_average": load_average,
        "model_floor": floor,
        "idle_penalty": penalty,
        "services": services,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_inputs(args)
    children = Children()
    started = time.monotonic()
    try:
        with interrupts_as_exit(), tempfile.TemporaryDirectory(prefix="service_load_") as tmp:
            try:
                results = run(args, children, Path(tmp))
            finally:
                children.stop_all()  # before their log folder goes
    except KeyboardInterrupt:
        print("interrupted: children stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"service_load: {error}", file=sys.stderr)
        return 1
    results["wall_seconds"] = time.monotonic() - started
    name = "service_load" if args.provider == "cpu" else f"service_load_{args.provider}"
    markdown = write_result(name, results, table(results), args.out_dir)
    plot(results, (args.out_dir or RESULTS_DIR) / f"{name}.png")
    print(markdown.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
