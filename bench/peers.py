"""The service against the serving frameworks people would pick instead, on the same model, the
same features and the same load, in one run.

    python -m bench.peers [--servers service,litserve] [--rounds 2] [--rates 50,80,...]

Every server is a fresh process on the same Redis (loaded with the dataset's features) and the
same ONNX serving graph, reading features with the project's ``FeatureStore`` and packing with
its ``pack``; what differs is the serving around them:

* ``service``: ``python -m service`` (its batcher, its HTTP endpoint);
* ``litserve``: ``python -m bench.peer_litserve`` (LitServe's server, worker and batching);
* ``pytriton``: ``python -m bench.peer_pytriton`` in ``.venv-peers`` (``bash bench/peers_env.sh``
  makes it: nvidia-pytriton pins numpy < 2): Triton's server, its dynamic batcher and its HTTP
  protocol (the generator sends the same requests in KServe v2 form).

A peer that cannot run here is reported with the reason, not dropped.

Each is driven by ``bench.loadgen`` (open loop, its own process) up a fixed ladder of rates
until a step is not sustained (p99 above 50 ms or under 90% of the offered rate answered), then
two bisections, as ``bench.service_load`` does; 1 user x 100 candidates, history 64. The rounds
interleave the servers (service, peers, service, peers) so that the machine's noise shows as
the spread between rounds. Before the rounds every server answers the same requests and its
scores are compared with the service's (the max absolute difference is quoted: they run the
same model, so it should be float noise).

Headlines per round: the highest rate sustained, its ratio to the best peer's, p50/p99 at the
highest ladder rate every server sustained, and each server's CPU per request at 100 req/s (all
its processes, over the measured window); the model-only median on the same request is the
floor no server beats. Writes bench/results/peers.{json,md,png}. Exit
1 if a server cannot be started or a score differs by more than 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor import model_floor
from bench.ladder import P99_LIMIT_MS, best_rate, step_at, sustained
from bench.loadgen import kserve_bodies
from bench.report import RESULTS_DIR, markdown_table, publish_checked
from bench.supervisor import (
    Children,
    feature_redis,
    interrupts_as_exit,
    python_command,
    running_service,
    supervised,
)
from bench.workload import (
    HISTORY,
    ServiceRun,
    add_load_arguments,
    load_settings,
    measure_service,
    population,
    write_users,
)

SERVERS = ("service", "litserve", "pytriton")
DEFAULT_RATES = "50,100,200,400,700,1000,1400,2000,2800,4000"
SCORE_TOLERANCE = 1e-5
#: The low rate at which each server's CPU per request is compared (all keep up there).
CPU_RATE = 100.0
AGREEMENT_REQUESTS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_load_arguments(parser)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, in order")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="the ladder, requests/s")
    parser.add_argument("--threads", type=int, default=1, help="INTRA_OP_THREADS of every server")
    parser.add_argument("--litserve-batch", type=int, default=64, help="LitServe max_batch_size")
    parser.add_argument(
        "--litserve-timeout-ms", type=float, default=2.0, help="LitServe batch_timeout"
    )
    parser.add_argument("--triton-batch", type=int, default=64, help="Triton max_batch_size")
    parser.add_argument(
        "--triton-delay-us", type=int, default=2000, help="Triton max_queue_delay_microseconds"
    )
    parser.add_argument(
        "--peers-venv", type=Path, default=Path(".venv-peers"), help="PyTriton's environment"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder")
    return parser


def pytriton_run(args: argparse.Namespace) -> ServiceRun:
    """PyTriton in its own environment; its backend stub links libpython, which must be the
    one of the Python that made the environment (LD_LIBRARY_PATH)."""
    python = args.peers_venv / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{python} not found: make it with bash bench/peers_env.sh")
    base = subprocess.run(
        [str(python), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    library = f"{base}/lib"
    if os.environ.get("LD_LIBRARY_PATH"):
        library += ":" + os.environ["LD_LIBRARY_PATH"]
    command = [
        str(python), "-m", "bench.peer_pytriton", "--max-batch-size", str(args.triton_batch),
        "--queue-delay-us", str(args.triton_delay_us),
    ]  # fmt: skip
    return ServiceRun(
        "pytriton",
        command,
        env={"LD_LIBRARY_PATH": library},
        ready_path="/v2/models/qin/ready",
        score_path="/v2/models/qin/infer",
        protocol="kserve",
    )


def server_runs(
    args: argparse.Namespace, names: list[str]
) -> tuple[list[ServiceRun], dict[str, str]]:
    """The runs of the servers that can start here, and why each other one cannot."""
    runs, missing = [], {}
    for name in names:
        try:
            if name == "service":
                runs.append(ServiceRun(name, python_command("python -m service")))
            elif name == "litserve":
                import litserve  # noqa: F401  (only to know it is there)

                command = (
                    f"python -m bench.peer_litserve --max-batch-size {args.litserve_batch} "
                    f"--batch-timeout-ms {args.litserve_timeout_ms:g}"
                )
                runs.append(ServiceRun(name, python_command(command)))
            else:
                runs.append(pytriton_run(args))
        except (ImportError, RuntimeError, subprocess.CalledProcessError) as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name} cannot run here: {missing[name]}", flush=True)
    return runs, missing


def post_scores(base: str, run: ServiceRun, body: dict[str, Any]) -> list[float]:
    """One request's scores, in the server's own protocol."""
    raw = json.dumps(body).encode()
    if run.protocol == "kserve":
        raw = kserve_bodies([raw])[0]
    request = urllib.request.Request(
        f"{base}{run.score_path}", raw, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return list(answer["outputs"][0]["data"] if run.protocol == "kserve" else answer["scores"])


def agreement_bodies(users: np.ndarray, item_vocab: int, candidates: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    return [
        {
            "user_id": int(users[i % len(users)]),
            "item_ids": rng.integers(1, item_vocab, candidates).tolist(),
        }
        for i in range(AGREEMENT_REQUESTS)
    ]


def scores_of(
    children: Children,
    run: ServiceRun,
    env: dict[str, str],
    bodies: list[dict[str, Any]],
    workdir: Path,
) -> list[list[float]]:
    log = workdir / f"{run.name}_agree.log"
    with running_service(children, run.command, {**env, **run.env}, log, run.ready_path) as server:
        return [post_scores(server.base, run, body) for body in bodies]


def round_summary(steps: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    best = {name: best_rate(s, "offered_rate") for name, s in steps.items()}
    peers = {name: rate for name, rate in best.items() if name != "service"}
    best_peer = max((r for r in peers.values() if r is not None), default=None)
    ours = best.get("service")
    common = [
        rate
        for rate in sorted({s["offered_rate"] for s in steps.get("service", [])})
        if all((step := step_at(s, rate)) is not None and sustained(step) for s in steps.values())
    ]
    at = common[-1] if common else None
    latency = {}
    if at is not None:
        for name, s in steps.items():
            step = step_at(s, at)
            assert step is not None
            latency[name] = {
                "p50_ms": step["latency"]["p50_ms"],
                "p99_ms": step["latency"]["p99_ms"],
            }
    cpu = {}
    for name, s in steps.items():
        low = step_at(s, CPU_RATE)
        cpu[name] = None if low is None else low.get("server_cpu_ms_per_request")
    return {
        "cpu_ms_per_request_at_low_rate": cpu,
        "max_sustained_rate": best,
        "best_peer_rate": best_peer,
        "ratio_to_best_peer": None if not (ours and best_peer) else ours / best_peer,
        "common_rate": at,
        "latency_at_common_rate": latency,
    }


def top_step_statuses(steps: list[dict[str, Any]]) -> dict[str, int]:
    """What the highest offered step answered: how each server behaves past saturation."""
    top = max(steps, key=lambda s: s["offered_rate"]) if steps else None
    return {} if top is None else dict(top["status_counts"])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    names = results["servers"]
    headers = ["round", *[f"{n}: max req/s at p99 <= {P99_LIMIT_MS:g} ms" for n in names]]
    headers += ["service / best peer", "common rate", *[f"{n}: p50 / p99 ms" for n in names]]
    headers += [f"{n}: CPU ms/request at {CPU_RATE:g}/s" for n in names]
    rows = []
    for index, run in enumerate(results["rounds"], start=1):
        summary = run["summary"]
        row: list[Any] = [index]
        row += [_fmt(summary["max_sustained_rate"].get(n), "g") for n in names]
        row += [_fmt(summary["ratio_to_best_peer"], ".2f"), _fmt(summary["common_rate"], "g")]
        for n in names:
            lat = summary["latency_at_common_rate"].get(n)
            row.append("-" if lat is None else f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f}")
        row += [_fmt(summary["cpu_ms_per_request_at_low_rate"].get(n), ".1f") for n in names]
        rows.append(row)
    past = []
    for n in names:
        statuses = [run["top_step_statuses"].get(n, {}) for run in results["rounds"]]
        words = "; ".join(", ".join(f"{k}: {v}" for k, v in s.items()) or "-" for s in statuses)
        past.append([n, words])
    diffs = results["agreement"]["max_abs_diff"]
    agreement = ", ".join(f"{n} {d:.2g}" for n, d in diffs.items() if n != "service")
    return (
        f"### The service and its peers: 1 user x {results['candidates']} candidates, history "
        f"{results['history']}, {results['threads']} onnxruntime thread(s) each, "
        f"{len(results['rounds'])} interleaved rounds; the model alone (onnxruntime, same "
        f"request): median {results['model_floor']['median_ms']:.2f} ms\n\n"
        + markdown_table(headers, rows)
        + "\n\nAnswers at each server's highest offered step (past saturation), per round:\n\n"
        + markdown_table(["server", "statuses"], past)
        + f"\n\nScores on {AGREEMENT_REQUESTS} identical requests, max abs difference from the "
        f"service's: {agreement or '-'}. LitServe: max_batch_size {results['litserve']['batch']}, "
        f"batch_timeout {results['litserve']['timeout_ms']:g} ms. Triton: max_batch_size "
        f"{results['pytriton']['batch']}, max_queue_delay {results['pytriton']['queue_delay_us']} "
        "us.\n" + "".join(f"\nNot run: {n}: {why}\n" for n, why in results["cannot_run"].items())
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colours = {"service": "tab:blue", "litserve": "tab:orange", "pytriton": "tab:green"}
    for index, run in enumerate(results["rounds"], start=1):
        for name, steps in run["steps"].items():
            ok = [s for s in steps if s["ok"]]
            rates = [s["offered_rate"] for s in ok]
            for key, style in (("p50_ms", "-o"), ("p99_ms", "--s")):
                axes.plot(
                    rates,
                    [s["latency"][key] for s in ok],
                    style,
                    color=colours.get(name, "tab:gray"),
                    alpha=1.0 if index == 1 else 0.5,
                    label=f"{name} {key[:3]} (round {index})",
                )
    axes.axhline(P99_LIMIT_MS, color="gray", linestyle=":", label=f"{P99_LIMIT_MS:g} ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (requests/s)")
    axes.set_ylabel("latency from scheduled send (ms)")
    axes.set_title(f"The service and its peers, 1 user x {results['candidates']} candidates")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def problems(results: dict[str, Any]) -> list[str]:
    return [
        f"{name}: scores differ from the service's by {diff:.3g}"
        for name, diff in results["agreement"]["max_abs_diff"].items()
        if diff > SCORE_TOLERANCE
    ]


def measure_all(
    args: argparse.Namespace,
    runs: list[ServiceRun],
    missing: dict[str, str],
    rates: list[float],
    children: Children,
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
    """The score agreement, then the interleaved rounds, on one Redis loaded with the data. A
    peer that does not start or answer is taken out of ``runs`` and its reason put in
    ``missing``."""
    with feature_redis(workdir, args.data, announce=True) as redis_server:
        people = population(args.data)
        users_file = write_users(people, workdir / "users.txt")
        settings = load_settings(args, people, users_file, workdir)
        env = {
            "MODEL_PATH": str(args.model.resolve()),
            "REDIS_URL": redis_server.url,
            "PROVIDER": "cpu",
            "INTRA_OP_THREADS": str(args.threads),
        }
        print("model-only floor ...", flush=True)
        floor = model_floor(args.model, candidates=args.candidates)
        bodies = agreement_bodies(people.users, people.item_vocab, args.candidates)
        print("scores on identical requests ...", flush=True)
        scores = {}
        for run in list(runs):
            try:
                scores[run.name] = scores_of(children, run, env, bodies, workdir)
            except (RuntimeError, OSError) as exc:  # did not start, or did not answer
                if run.name == "service":
                    raise
                missing[run.name] = f"{type(exc).__name__}: {exc}"
                print(f"{run.name} cannot run here: {missing[run.name]}", flush=True)
                runs.remove(run)
        reference = np.asarray(scores["service"], np.float64)
        diffs = {
            name: float(np.abs(np.asarray(s, np.float64) - reference).max())
            for name, s in scores.items()
        }
        rounds = []
        for index in range(args.rounds):
            steps = {}
            for run in runs:
                print(f"round {index + 1}: {run.name}", flush=True)
                measured = measure_service(children, run, env, rates, settings)
                steps[run.name] = measured["steps"]
            rounds.append(
                {
                    "steps": steps,
                    "summary": round_summary(steps),
                    "top_step_statuses": {n: top_step_statuses(s) for n, s in steps.items()},
                }
            )
    return floor, diffs, rounds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or "service" not in names:
        print(
            f"error: --servers must name service and any of {', '.join(SERVERS)}", file=sys.stderr
        )
        return 2
    for path, what in ((args.model, "ONNX model"), (args.data / "item_info.parquet", "dataset")):
        if not path.is_file():
            print(f"error: {what} not found: {path} (run: bash deploy/demo.sh)", file=sys.stderr)
            return 2
    rates = [float(word) for word in args.rates.split(",")]
    runs, missing = server_runs(args, names)
    if not runs or runs[0].name != "service":
        print("error: the service itself cannot start", file=sys.stderr)
        return 2
    load_average = [round(x, 2) for x in os.getloadavg()]
    try:
        with interrupts_as_exit(), supervised("bench-peers-") as (children, workdir):
            floor, diffs, rounds = measure_all(args, runs, missing, rates, children, workdir)
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"bench.peers: {error}", file=sys.stderr)
        return 1
    results = {
        "servers": [run.name for run in runs],
        "cannot_run": missing,
        "commands": {run.name: " ".join(run.command) for run in runs},
        "candidates": args.candidates,
        "history": HISTORY,
        "threads": args.threads,
        "rates": rates,
        "step_seconds": args.duration,
        "warmup_seconds": args.warmup,
        "p99_limit_ms": P99_LIMIT_MS,
        "load_average": load_average,
        "litserve": {"batch": args.litserve_batch, "timeout_ms": args.litserve_timeout_ms},
        "pytriton": {"batch": args.triton_batch, "queue_delay_us": args.triton_delay_us},
        "agreement": {"requests": AGREEMENT_REQUESTS, "max_abs_diff": diffs},
        "model_floor": floor,
        "rounds": rounds,
    }
    code = publish_checked("peers", results, table(results), problems(results), args.out_dir)
    plot(results, (args.out_dir or RESULTS_DIR) / "peers.png")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
