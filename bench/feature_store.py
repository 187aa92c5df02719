"""Redis feature store: bulk-load throughput, memory per user and item, read latency.

    python -m bench.feature_store [--users 1000000] [--items 91717] [--requests 2000]

Generates a MicroLens-format dataset (model.synth; reused from --data-dir when its meta.json
matches), starts its own redis-server on loopback, and measures:

* bulk load, step by step: parquet -> feature set, items written, users written, replay + switch;
  throughput in items/s and users/s;
* Redis ``used_memory`` before and after each step, hence bytes per item and per user;
* read latency of ``FeatureStore.fetch`` for 1 user (history 64) + 200 random candidates, one
  request at a time (latency, not throughput), with a cold item cache (cleared before every
  request) and a warm one (every item cached), with the round trips each request took;
* append latency (one item per call).

The synthetic data draws each row's user by a heavy-tailed activity, so not every one of the
generated users appears in a row; only those that do have a history to load (reported).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table, write_result
from service.features import FeatureStore
from service.features.layout import ITEM_RECORD_DTYPE
from service.features.loader import BulkLoader, connect
from service.features.source import FeatureSet, read_feature_set
from service.settings import Settings
from tests.support.redis import RedisServer

DEFAULT_DATA_DIR = Path("artifacts/bench/feature_store_data")
HISTORY_LEN = 64
PREFIX = "qin"


def add_dataset_arguments(
    parser: argparse.ArgumentParser,
    *,
    users: int,
    items: int,
    train_rows: int,
    held_out_rows: int,
    data_dir: Path,
) -> None:
    """The generated dataset a benchmark runs on (what :func:`ensure_dataset` reads): its size,
    seed and cache folder; ``held_out_rows`` is each of the valid and test splits."""
    parser.add_argument("--users", type=int, default=users)
    parser.add_argument("--items", type=int, default=items)
    parser.add_argument("--train-rows", type=int, default=train_rows)
    parser.add_argument("--valid-rows", type=int, default=held_out_rows)
    parser.add_argument("--test-rows", type=int, default=held_out_rows)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--data-dir", type=Path, default=data_dir, help="dataset cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.feature_store",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset_arguments(
        parser,
        users=1_000_000,
        items=91_717,
        train_rows=5_000_000,
        held_out_rows=500_000,
        data_dir=DEFAULT_DATA_DIR,
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per mode")
    parser.add_argument("--candidates", type=int, default=200, help="candidates per request")
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder")
    return parser


# --------------------------------------------------------------------------------------------
# Data


def ensure_dataset(args: argparse.Namespace) -> tuple[Path, float | None]:
    """The dataset folder, generated unless an identical one is cached; returns generation time."""
    config = {
        "items": args.items,
        "users": args.users,
        "train_rows": args.train_rows,
        "valid_rows": args.valid_rows,
        "test_rows": args.test_rows,
        "seed": args.seed,
        "history_max": HISTORY_LEN,
    }
    meta = args.data_dir / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()) == config:
        print(f"reusing {args.data_dir}", flush=True)
        return args.data_dir, None
    command = [sys.executable, "-m", "model.synth", "--out", str(args.data_dir)]
    for key, value in config.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    print("generating:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)  # a child process: its memory is returned afterwards
    return args.data_dir, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Bulk load


def used_memory(server: RedisServer) -> int:
    client = server.client()
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def timed(step: Callable[[], Any]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def bulk_load(server: RedisServer, data: Path) -> tuple[FeatureSet, dict[str, Any]]:
    """Run the loader's steps one by one, timing each and reading memory in between."""
    started = time.perf_counter()
    features = read_feature_set(data, HISTORY_LEN)
    read_s = time.perf_counter() - started
    client = connect(server.url, 120)
    loader = BulkLoader(client, PREFIX, progress=True)
    memory = [used_memory(server)]
    version = loader.begin(features)
    items_s = timed(lambda: loader.write_items(version, features))
    memory.append(used_memory(server))
    users_s = timed(lambda: loader.write_users(version, features))
    memory.append(used_memory(server))
    switch_s = timed(lambda: loader.finish(version))
    keys = int(client.dbsize())
    full_user_bytes = bytes_per_full_user(server, client)
    client.close()
    items, users = features.item_vocab - 1, features.num_users
    lengths = np.diff(features.history_offsets)
    return features, {
        "items": items,
        "users": users,
        "mean_history_len": float(lengths.mean()),
        "rows": features.rows,
        "read_parquet_s": read_s,
        "write_items_s": items_s,
        "write_users_s": users_s,
        "switch_s": switch_s,
        "items_per_s": items / items_s,
        "users_per_s": users / users_s,
        "load_total_s": read_s + items_s + users_s + switch_s,
        "redis_keys": keys,
        "used_memory_bytes": memory[-1],
        "bytes_per_item": (memory[1] - memory[0]) / items,
        "bytes_per_user": (memory[2] - memory[1]) / users,
        "bytes_per_user_full_history": full_user_bytes,
    }


def bytes_per_full_user(server: RedisServer, client: Any, users: int = 200_000) -> float:
    """Memory of users whose history is full (64 ids), written under a scratch prefix."""
    ids = np.arange(10**9, 10**9 + users, dtype=np.int64)
    histories = np.random.default_rng(1).integers(1, 90_000, size=users * HISTORY_LEN)
    scratch = FeatureSet(
        source=Path("."),
        history_len=HISTORY_LEN,
        item_records=np.zeros(1, dtype=ITEM_RECORD_DTYPE),
        user_ids=ids,
        history_offsets=np.arange(users + 1, dtype=np.int64) * HISTORY_LEN,
        history_items=histories.astype(np.int32),
        rows=0,
    )
    loader = BulkLoader(client, "scratch")
    before = used_memory(server)
    version = loader.begin(scratch)
    loader.write_users(version, scratch)
    grown = used_memory(server) - before
    loader.abort(version)
    return grown / users


# --------------------------------------------------------------------------------------------
# Reads


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


async def time_reads(
    store: FeatureStore, requests: list[tuple[int, list[int]]], cold: bool
) -> dict[str, Any]:
    latencies, trips = [], []
    for user, candidates in requests:
        if cold:
            store.clear_item_cache()
        started = time.perf_counter()
        result = await store.fetch(user, candidates)
        latencies.append(time.perf_counter() - started)
        trips.append(result.round_trips)
        assert len(result.history) == HISTORY_LEN and len(result.candidates) == len(candidates)
    return {
        **percentiles(latencies),
        "round_trips_mean": float(np.mean(trips)),
        "round_trips_max": int(np.max(trips)),
        "requests": len(requests),
    }


async def time_appends(store: FeatureStore, users: np.ndarray) -> dict[str, Any]:
    latencies = []
    for user in users.tolist():
        started = time.perf_counter()
        await store.append(user, [1])
        latencies.append(time.perf_counter() - started)
    return {**percentiles(latencies), "requests": len(latencies)}


async def measure_reads(
    url: str, features: FeatureSet, items: int, args: argparse.Namespace
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    full = np.flatnonzero(np.diff(features.history_offsets) == HISTORY_LEN)
    users = features.user_ids[rng.choice(full, size=args.requests + 200)].tolist()
    requests = [(user, rng.integers(1, items + 1, size=args.candidates).tolist()) for user in users]
    warmup, timed_requests = requests[:200], requests[200:]
    settings = Settings(redis_url=url, item_cache_size=max(100_000, items), history_len=64)
    store = FeatureStore.from_settings(settings)
    try:
        for user, candidates in warmup:  # connections, version meta, code paths
            await store.fetch(user, candidates)
        gc.collect()
        cold = await time_reads(store, timed_requests, cold=True)
        for low in range(1, items + 1, 5000):  # every item cached: the warm steady state
            await store.fetch(users[0], list(range(low, min(low + 5000, items + 1))))
        gc.collect()
        warm = await time_reads(store, timed_requests, cold=False)
        appends = await time_appends(store, rng.choice(features.user_ids, size=args.requests))
        stats = store.stats
    finally:
        await store.aclose()
    return {
        "cold": cold,
        "warm": warm,
        "append": appends,
        "users_with_full_history": len(full),
        "cached_items": stats.cached_items,
    }


def run_async(main: Coroutine[Any, Any, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Run on uvloop when installed (as uvicorn does in the service), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main), "asyncio"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main), "uvloop"


# --------------------------------------------------------------------------------------------
# Report


def table(results: dict[str, Any]) -> str:
    load, reads = results["load"], results["reads"]
    load_rows = [
        ["items written", f"{load['items']:,}"],
        ["users written (those appearing in the rows)", f"{load['users']:,}"],
        ["mean history length (ids)", f"{load['mean_history_len']:.1f}"],
        ["parquet -> feature set", f"{load['read_parquet_s']:.1f} s"],
        ["items written per second (pipelined HSET)", f"{load['items_per_s']:,.0f}"],
        ["users written per second (pipelined HSET)", f"{load['users_per_s']:,.0f}"],
        ["replay appends + switch + cleanup", f"{load['switch_s'] * 1000:.1f} ms"],
        ["whole load", f"{load['load_total_s']:.1f} s"],
        [
            "Redis keys / used_memory",
            f"{load['redis_keys']:,} / {load['used_memory_bytes'] / 2**20:,.0f} MiB",
        ],
        ["bytes per item (536-byte record)", f"{load['bytes_per_item']:.0f}"],
        ["bytes per user, mean history above", f"{load['bytes_per_user']:.0f}"],
        [
            f"bytes per user, full {HISTORY_LEN}-id history",
            f"{load['bytes_per_user_full_history']:.0f}",
        ],
    ]
    read_rows = []
    for mode, name in (
        ("warm", "fetch, warm item cache"),
        ("cold", "fetch, cold item cache"),
        ("append", "append (1 item, Lua script)"),
    ):
        row = reads[mode]
        trips = f"{row['round_trips_mean']:.2f}" if "round_trips_mean" in row else "1"
        read_rows.append(
            [name, *(f"{row[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")), trips]
        )
    dataset = results["dataset"]
    return (
        f"### Bulk load: {dataset['users']:,} generated users, {dataset['items']:,} items, "
        f"{load['rows']:,} rows (Redis {results['redis_version']})\n\n"
        + markdown_table(["measure", "value"], load_rows)
        + f"\n\n### Reads: 1 user (history {HISTORY_LEN}) + {results['candidates']} candidates, "
        f"one request at a time on loopback ({results['event_loop']}), "
        f"{reads['warm']['requests']:,} requests each\n\n"
        + markdown_table(
            ["request", "p50 ms", "p90 ms", "p99 ms", "max ms", "round trips"], read_rows
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data, generate_s = ensure_dataset(args)
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        features, load = bulk_load(server, data)
        reads, loop = run_async(measure_reads(server.url, features, load["items"], args))
        info = server.client()
        version = info.info("server")["redis_version"]
        info.close()
    results = {
        "dataset": {
            "users": args.users,
            "items": args.items,
            "rows": args.train_rows + args.valid_rows + args.test_rows,
            "generate_s": generate_s,
        },
        "candidates": args.candidates,
        "event_loop": loop,
        "redis_version": version,
        "load": load,
        "reads": reads,
    }
    markdown = write_result("feature_store", results, table(results), args.out_dir)
    print(markdown.read_text())
    warm = reads["warm"]
    if warm["round_trips_max"] != 1 or warm["p99_ms"] >= 1.0:
        print("FAIL: warm reads must take one round trip and p99 < 1 ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
