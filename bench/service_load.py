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

This module is the command line; the parts are bench.ladder (the step policy and the headline
figures), bench.supervisor (child processes, readiness, Redis), bench.workload (users, one step,
a service's ladder), bench.scrape (``/metrics``), bench.floor (model-only floor, idle penalty)
and bench.load_report (table, plot, result files).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.floor import idle_penalty, model_floor
from bench.ladder import P99_LIMIT_MS, comparison, ladder, service_rates
from bench.load_report import write_load_result
from bench.supervisor import Children, feature_redis, interrupts_as_exit, python_command, supervised
from bench.workload import (
    HISTORY,
    ServiceRun,
    add_load_arguments,
    load_settings,
    measure_service,
    population,
    write_users,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_load",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_load_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/demo/checkpoint"))
    parser.add_argument("--rates", help="comma-separated rates (overrides the ladder)")
    parser.add_argument("--start-rate", type=float, default=10.0, help="ladder's first rate")
    parser.add_argument("--factor", type=float, default=1.6, help="ladder's step factor")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="ladder's top")
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
    return service_rates(rates, name, naive_steps)


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
    with feature_redis(workdir, args.data, announce=True) as redis_server:
        people = population(args.data)
        users_file = write_users(people, workdir / "users.txt")
        print("model-only floor ...", flush=True)
        floor = model_floor(args.model, candidates=args.candidates, provider=args.provider)
        print(f"  median {floor['median_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms", flush=True)
        settings = load_settings(args, people, users_file, workdir)
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
    started = time.monotonic()
    try:
        with interrupts_as_exit(), supervised("service_load_") as (children, workdir):
            results = run(args, children, workdir)
    except KeyboardInterrupt:
        print("interrupted: children stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"service_load: {error}", file=sys.stderr)
        return 1
    results["wall_seconds"] = time.monotonic() - started
    name = "service_load" if args.provider == "cpu" else f"service_load_{args.provider}"
    print(write_load_result(name, results, args.out_dir).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
