"""Capacity plan from measured figures: Redis memory and shards, replicas, what breaks first.

    python -m bench.capacity [--users 100000000] [--items 10000000] [--rate 100000]

Reads the committed results of other benchmarks and scales them, so the plan changes when they
are measured again and no figure in it is typed by hand:

* ``feature_store.json``: Redis bytes per user (full 64-id history) and per item;
* ``redis_ops.json``: commands per second one Redis process serves, per command a request sends;
* ``service_load.json``: the service's throughput on this CPU machine at p99 <= 5 ms;
* ``service_load_cuda.json``: the same on a GPU, when it has been measured (else "pending").

Assumptions, each a flag: every user has a full history (the worst case); during a load three
versions exist at once (``FEATURE_VERSIONS_KEPT`` = 2 plus the one being written); a master holds
at most ``--shard-data-gb`` of data (half of a 32 GB node: forks for persistence and replica syncs
copy pages); replicas are sized by the measured candidates per second per core, with
``--headroom`` to spare.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, markdown_table, publish

GB = 1e9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=float, default=100e6)
    parser.add_argument("--items", type=float, default=10e6)
    parser.add_argument("--rate", type=float, default=100_000, help="requests per second")
    parser.add_argument("--candidates", type=int, default=200, help="per request")
    parser.add_argument("--versions-at-peak", type=int, default=3)
    parser.add_argument("--shard-data-gb", type=float, default=16.0)
    parser.add_argument("--replicas-per-master", type=int, default=1)
    parser.add_argument("--headroom", type=float, default=0.3, help="spare share of capacity")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="results to read")
    parser.add_argument("--out-dir", type=Path, help="where to write (default bench/results)")
    return parser


def _read(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _rate(ops: dict[str, float], prefix: str) -> float:
    return next(rate for name, rate in ops.items() if name.startswith(prefix))


def plan(args: argparse.Namespace) -> dict[str, Any]:
    store = _read(args.results, "feature_store")
    ops_result = _read(args.results, "redis_ops")
    load = _read(args.results, "service_load")
    if store is None or ops_result is None or load is None:
        raise SystemExit(
            "error: needs bench/results/feature_store.json, redis_ops.json and service_load.json "
            "(run python -m bench.feature_store, bench.redis_ops, bench.service_load)"
        )
    per_user = store["load"]["bytes_per_user_full_history"]
    per_item = store["load"]["bytes_per_item"]
    version_gb = (args.users * per_user + args.items * per_item) / GB
    items_gb = args.items * per_item / GB
    peak_gb = version_gb * args.versions_at_peak
    masters_for_memory = math.ceil(peak_gb / args.shard_data_gb)

    ops = ops_result["commands_per_s"]
    get_s, hget_s, hmget_s = _rate(ops, "GET"), _rate(ops, "HGET"), _rate(ops, "HMGET")
    # HGETs spread over the masters; each master must keep them under (1 - headroom) of its rate
    masters_for_ops = math.ceil(args.rate / (hget_s * (1 - args.headroom)))
    masters = max(masters_for_memory, masters_for_ops, 3)
    control_load = args.rate / get_s  # every request's GET of {P}:live goes to one master
    # a request whose candidates are not all cached sends an HMGET to the items' one master
    cold_requests_s = hmget_s * (1 - args.headroom)

    cpu_candidates = load["summary"]["service_max_rate_p99_5ms"] * load["candidates"]
    cpu_cores = load["machine"]["cpus"]
    per_core = cpu_candidates / cpu_cores
    needed = args.rate * args.candidates / (1 - args.headroom)
    cpu_replica_cores = cpu_cores
    cpu_replicas = math.ceil(needed / (per_core * cpu_replica_cores))
    gpu = _read(args.results, "service_load_cuda")
    gpu_replicas: int | str = "pending: no GPU measurement yet"
    if gpu is not None:
        gpu_rate = gpu["summary"]["service_max_rate_p99_5ms"] * gpu["candidates"]
        gpu_replicas = math.ceil(needed / gpu_rate)

    breaks = sorted(
        [
            ("the master of the control keys ({P}:live is read by every request)", control_load),
            ("the history reads (HGET) on each master", args.rate / masters / hget_s),
            (
                "the master of the live item hash if every request missed the item cache",
                args.rate / hmget_s,
            ),
        ],
        key=lambda pair: -pair[1],
    )
    return {
        "inputs": {
            "bytes_per_user_full_history": per_user,
            "bytes_per_item": per_item,
            "commands_per_s": ops,
            "service_candidates_per_s_per_core": per_core,
            "sources": {
                "feature_store": store["commit"],
                "redis_ops": ops_result["commit"],
                "service_load": load["commit"],
                "service_load_cuda": gpu["commit"] if gpu else None,
            },
        },
        "assumptions": {k: v for k, v in vars(args).items() if k not in ("results", "out_dir")},
        "redis": {
            "version_gb": version_gb,
            "items_gb": items_gb,
            "peak_gb": peak_gb,
            "masters_for_memory": masters_for_memory,
            "masters_for_ops": masters_for_ops,
            "masters": masters,
            "replicas": masters * args.replicas_per_master,
            "data_per_master_gb": peak_gb / masters,
            "control_master_load": control_load,
            "hget_per_master_s": args.rate / masters,
            "cold_requests_s_max": cold_requests_s,
            "cache_hit_requests_needed": max(0.0, 1 - cold_requests_s / args.rate),
        },
        "service": {
            "candidates_per_s": args.rate * args.candidates,
            "cpu_replicas": cpu_replicas,
            "cpu_cores_per_replica": cpu_replica_cores,
            "gpu_replicas": gpu_replicas,
        },
        "breaks_first": [{"what": what, "load": load} for what, load in breaks],
    }


def table(result: dict[str, Any]) -> str:
    a, r, s, i = result["assumptions"], result["redis"], result["service"], result["inputs"]
    rows: list[list[Any]] = [
        ["one feature version in Redis", f"{r['version_gb']:.1f} GB "
         f"({i['bytes_per_user_full_history']:.0f} B per user, {i['bytes_per_item']:.0f} B per "
         f"item; the items {r['items_gb']:.1f} GB are one hash on one master)"],
        [f"peak during a load ({a['versions_at_peak']} versions)", f"{r['peak_gb']:.1f} GB"],
        ["masters (memory / commands / chosen)",
         f"{r['masters_for_memory']} / {r['masters_for_ops']} / {r['masters']}, "
         f"{r['data_per_master_gb']:.1f} GB each at peak"],
        ["replicas", f"{r['replicas']} ({a['replicas_per_master']} per master)"],
        ["GET of the live key on its master",
         f"{a['rate']:,.0f}/s = {r['control_master_load']:.0%} of one master's measured GET rate"],
        ["HGET of histories per master", f"{r['hget_per_master_s']:,.0f}/s"],
        ["requests that may read items from Redis",
         f"at most {r['cold_requests_s_max']:,.0f}/s (HMGET of 200 on the items' master): "
         f"{r['cache_hit_requests_needed']:.1%} of requests must find every candidate cached"],
        ["service replicas on CPU",
         f"{s['cpu_replicas']:,} of {s['cpu_cores_per_replica']} cores "
         f"({i['service_candidates_per_s_per_core']:,.0f} candidates/s per core measured)"],
        ["service replicas on GPU", str(s["gpu_replicas"])],
    ]  # fmt: skip
    first = result["breaks_first"][0]
    return (
        f"### Capacity plan: {a['users']:,.0f} users, {a['items']:,.0f} items, "
        f"{a['rate']:,.0f} requests/s of {a['candidates']} candidates "
        f"({a['headroom']:.0%} headroom)\n\n"
        + markdown_table(["", "plan"], rows)
        + f"\n\nBreaks first: {first['what']}, at {first['load']:.0%} of its measured rate. "
        "Ranked: "
        + "; ".join(f"{b['what']} {b['load']:.0%}" for b in result["breaks_first"])
        + ".\n\nFrom bench/results: feature_store "
        f"{i['sources']['feature_store']}, redis_ops {i['sources']['redis_ops']}, service_load "
        f"{i['sources']['service_load']}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = plan(args)
    return publish("capacity", result, table(result), args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
