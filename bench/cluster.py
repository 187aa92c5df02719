"""The feature store on one Redis against a 3-master Redis Cluster, in one run on loopback.

    python -m bench.cluster [--users 20000] [--items 10000] [--requests 2000] [--rate 20]

One dataset (model.synth; reused from --data-dir when its meta.json matches), loaded into (a)
one redis-server and (b) a LocalCluster of 3 masters with one replica each (cluster-node-timeout
``--node-timeout-ms``, 2000 as the tests' cluster), and measured:

* read latency of ``FeatureStore.fetch`` for 1 user (history 64) + 200 random candidates, one
  request at a time, with a warm item cache (every item cached) and a cold one (cleared before
  every request), and the round trips each request took (``RequestFeatures.round_trips``);
* append latency (one item per call);
* bulk load: items/s and users/s (the loader's steps timed one by one) and ``used_memory`` of the
  single node and of each master.

Single and cluster requests are interleaved one by one (the order swapped every request), so
the noise of a shared machine hits both alike; the tables give cluster / single ratios.

Then failover under load with the real service (``python -m service``, REDIS_CLUSTER=true, the
seed node as REDIS_URL) on the cluster, bench.loadgen open loop at ``--rate`` in its own process
(per-request records: due, send, answer times and status): the master owning the control keys
(``{P}:live``, read by every request) is SIGKILLed, its replica's promotion waited for, the node
restarted (it rejoins as a replica); then the same for a master owning neither the control keys
nor the item hash (only user histories). Counted: 200 / 503 / other answers, sent and answered,
the first and last 503 after the kill, the promotion time. The promotion is dominated by
cluster-node-timeout (the time a master may be unreachable before its replica takes over).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis.crc import key_slot

from bench.feature_store import (
    HISTORY_LEN,
    add_dataset_arguments,
    ensure_dataset,
    run_async,
    timed,
)
from bench.report import markdown_table, publish_checked
from bench.supervisor import Children, interrupts_as_exit, running_service, supervised, tail
from service.features import FeatureStore
from service.features.layout import Keys
from service.features.loader import BulkLoader, connect
from service.features.source import FeatureSet, read_feature_set
from service.settings import Settings
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalCluster

DEFAULT_DATA_DIR = Path("artifacts/bench/cluster_data")
PREFIX = "qin"
KEYS = Keys(PREFIX)
MODES = ("single", "cluster")


def add_small_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """20,000 users and 10,000 items: big enough for the measures here, generated in seconds
    (bench.replicas runs on the same dataset and cache folder)."""
    add_dataset_arguments(
        parser,
        users=20_000,
        items=10_000,
        train_rows=200_000,
        held_out_rows=20_000,
        data_dir=DEFAULT_DATA_DIR,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_small_dataset_arguments(parser)
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per mode")
    parser.add_argument("--candidates", type=int, default=200, help="candidates per request")
    parser.add_argument("--node-timeout-ms", type=int, default=2000, help="cluster-node-timeout")
    parser.add_argument("--rate", type=float, default=20.0, help="failover: requests/s offered")
    parser.add_argument("--duration", type=float, default=24.0, help="failover: s per victim")
    parser.add_argument("--kill-after", type=float, default=6.0, help="failover: s to the kill")
    parser.add_argument("--score-candidates", type=int, default=50, help="failover: per request")
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder")
    return parser


# --------------------------------------------------------------------------------------------
# Bulk load


def used_memory(servers: list[RedisServer]) -> list[int]:
    values = []
    for server in servers:
        client = server.client()
        try:
            values.append(int(client.info("memory")["used_memory"]))
        finally:
            client.close()
    return values


def bulk_load(
    url: str, cluster: bool, features: FeatureSet, memory: Callable[[], list[int]]
) -> dict[str, Any]:
    """The loader's steps one by one, timed, with ``used_memory`` of every master around them."""
    client = connect(url, 120, cluster=cluster)
    try:
        loader = BulkLoader(client, PREFIX, url=url)
        before = memory()
        version = loader.begin(features)
        items_s = timed(lambda: loader.write_items(version, features))
        users_s = timed(lambda: loader.write_users(version, features))
        switch_s = timed(lambda: loader.finish(version))
        after = memory()
    finally:
        client.close()
    items, users = features.item_vocab - 1, features.num_users
    return {
        "version": version,
        "items": items,
        "users": users,
        "write_items_s": items_s,
        "write_users_s": users_s,
        "switch_s": switch_s,
        "items_per_s": items / items_s,
        "users_per_s": users / users_s,
        "load_s": items_s + users_s + switch_s,
        "used_memory_bytes": after,  # one per master (one value for the single node)
        "used_memory_before_bytes": before,
        "used_memory_total_bytes": sum(after),
        "used_memory_max_bytes": max(after),
    }


# --------------------------------------------------------------------------------------------
# Reads and appends, single and cluster interleaved


def summary(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "max_ms": float(values.max()),
    }


def ratios(pair: dict[str, dict[str, Any]]) -> dict[str, float]:
    single, cluster = pair["single"], pair["cluster"]
    return {k: cluster[k] / single[k] for k in ("p50_ms", "p99_ms", "mean_ms") if single[k] > 0}


async def interleaved_reads(
    stores: dict[str, FeatureStore], requests: list[tuple[int, list[int]]], cold: bool
) -> dict[str, Any]:
    """Each request to both stores, one after the other, the order swapped every request."""
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    trips: dict[str, list[int]] = {mode: [] for mode in MODES}
    for index, (user, candidates) in enumerate(requests):
        for mode in MODES if index % 2 == 0 else MODES[::-1]:
            store = stores[mode]
            if cold:
                store.clear_item_cache()
            started = time.perf_counter()
            result = await store.fetch(user, candidates)
            latencies[mode].append(time.perf_counter() - started)
            trips[mode].append(result.round_trips)
            assert len(result.candidates) == len(candidates)
    out: dict[str, Any] = {
        mode: {
            **summary(latencies[mode]),
            "round_trips_mean": float(np.mean(trips[mode])),
            "round_trips_max": int(np.max(trips[mode])),
            "requests": len(requests),
        }
        for mode in MODES
    }
    return {**out, "ratio": ratios(out)}


async def interleaved_appends(stores: dict[str, FeatureStore], users: list[int]) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    for index, user in enumerate(users):
        for mode in MODES if index % 2 == 0 else MODES[::-1]:
            started = time.perf_counter()
            await stores[mode].append(user, [1])
            latencies[mode].append(time.perf_counter() - started)
    out: dict[str, Any] = {
        mode: {**summary(latencies[mode]), "requests": len(users)} for mode in MODES
    }
    return {**out, "ratio": ratios(out)}


async def measure_reads(
    urls: dict[str, str], features: FeatureSet, args: argparse.Namespace
) -> dict[str, Any]:
    items = features.item_vocab - 1
    rng = np.random.default_rng(0)
    full = np.flatnonzero(np.diff(features.history_offsets) == HISTORY_LEN)
    pool = full if len(full) >= 10 else np.arange(features.num_users)
    warmup_count = min(200, args.requests)
    picked = features.user_ids[rng.choice(pool, size=args.requests + warmup_count)].tolist()
    requests = [(u, rng.integers(1, items + 1, size=args.candidates).tolist()) for u in picked]
    warmup, timed_requests = requests[:warmup_count], requests[warmup_count:]
    stores = {
        mode: FeatureStore.from_settings(
            Settings(
                redis_url=urls[mode],
                redis_cluster=mode == "cluster",
                item_cache_size=max(100_000, items),
                history_len=HISTORY_LEN,
            )
        )
        for mode in MODES
    }
    try:
        for user, candidates in warmup:  # connections, topology, version meta, code paths
            for store in stores.values():
                await store.fetch(user, candidates)
        gc.collect()
        cold = await interleaved_reads(stores, timed_requests, cold=True)
        for store in stores.values():  # every item cached: the warm steady state
            for low in range(1, items + 1, 5000):
                await store.fetch(picked[0], list(range(low, min(low + 5000, items + 1))))
        gc.collect()
        warm = await interleaved_reads(stores, timed_requests, cold=False)
        appends = await interleaved_appends(
            stores, rng.choice(features.user_ids, size=args.requests).tolist()
        )
    finally:
        for store in stores.values():
            await store.aclose()
    return {"cold": cold, "warm": warm, "append": appends, "users_with_full_history": len(full)}


# --------------------------------------------------------------------------------------------
# Failover under load


def export_model(data: Path, folder: Path) -> Path:
    """An untrained model of the small preset on the dataset's vocabularies, exported for the
    service (scores do not matter here, only that requests go through the whole path)."""
    import torch

    from contract.dataset import load_items
    from export.exporter import export_checkpoint
    from model.checkpoint import save_checkpoint
    from model.config import build_config
    from model.data import infer_schema
    from model.factory import build_model

    torch.manual_seed(0)
    config = build_config("small", [])
    schema = infer_schema(load_items(data / "item_info.parquet"), HISTORY_LEN)
    model = build_model(config.model, schema).eval()
    save_checkpoint(folder / "checkpoint", model, config, {"data": {"path": str(data)}})
    onnx = folder / "model.onnx"
    export_checkpoint(folder / "checkpoint", onnx, verify_data=data, verify_rows=256)
    return onnx


def slot_owners(cluster: LocalCluster) -> dict[int, int]:
    """Slot -> port of the master serving it now."""
    client = cluster.node_client(cluster.running_ports()[0])
    try:
        table = client.execute_command("CLUSTER", "SLOTS")
    finally:
        client.close()
    return {
        slot: int(master[1])
        for low, high, master, *_ in table
        for slot in range(int(low), int(high) + 1)
    }


def request_users(users: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The user of each loadgen request body, drawn as bench.loadgen.score_bodies draws them."""
    from bench.loadgen import BODIES

    bodies = np.random.default_rng(seed).choice(users, size=min(count, BODIES))
    return bodies[np.arange(count) % len(bodies)]


def one_failover(
    children: Children,
    cluster: LocalCluster,
    base: str,
    victim: str,
    users: np.ndarray,
    item_vocab: int,
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    owners = slot_owners(cluster)
    control = owners[key_slot(KEYS.live.encode())]
    live = cluster.client()
    try:
        raw = live.get(KEYS.live)
        assert isinstance(raw, bytes), f"no live feature version ({KEYS.live} is {raw!r})"
        version = raw.decode()
    finally:
        live.close()
    items_owner = owners[key_slot(KEYS.items(version).encode())]
    if victim == "control":
        port = control
    else:
        port = next(p for p in sorted(set(owners.values())) if p not in (control, items_owner))
    replica = cluster.replica_of(port)
    users_file, records, out = (workdir / f"{victim}.{ext}" for ext in ("users", "csv", "json"))
    users_file.write_text("\n".join(str(u) for u in users.tolist()) + "\n")
    command = [
        sys.executable, "-m", "bench.loadgen", "--url", base, "--rate", str(args.rate),
        "--duration", str(args.duration), "--warmup", "0", "--timeout", "10",
        "--candidates", str(args.score_candidates), "--users-file", str(users_file),
        "--item-vocab", str(item_vocab), "--records", str(records), "--out", str(out),
    ]  # fmt: skip
    log = workdir / f"loadgen_{victim}.log"
    generator = children.start(command, log)
    time.sleep(args.kill_after)
    if generator.poll() is not None:
        raise RuntimeError(f"loadgen exited early ({generator.returncode}): {tail(log)}")
    killed_at = time.perf_counter()
    cluster.kill(port)
    promotion_s = cluster.wait_promoted(replica)
    code = generator.wait(timeout=args.duration + 60)
    children.stop(generator)  # exited: only forgotten
    if code != 0:
        raise RuntimeError(f"loadgen failed ({code}): {tail(log)}")
    cluster.restart(port)  # back as a replica of its former replica: 3 + 3 again
    t0 = float(json.loads(out.read_text())["t0_perf_counter"])
    table = np.loadtxt(records, delimiter=",", skiprows=1, ndmin=2)
    sent_s, status = table[:, 2], table[:, 4].astype(np.int64)
    kill_s = killed_at - t0
    user_of = request_users(users, len(status), 0)
    mine = {
        u for u in users.tolist() if owners[key_slot(KEYS.history(version, u).encode())] == port
    }
    affected = np.ones(len(status), bool) if victim == "control" else np.isin(user_of, list(mine))
    failed = status == 503
    after_kill = sent_s - kill_s
    return {
        "victim": victim,
        "port": port,
        "replica": replica,
        "owns_control_keys": port == control,
        "owns_item_hash": port == items_owner,
        "affected_users_share": float(affected.mean()),
        "sent": int((~np.isnan(sent_s)).sum()),
        "answered": int((status > 0).sum()),
        "requests": len(status),
        "status_200": int((status == 200).sum()),
        "status_503": int(failed.sum()),
        "status_500": int(((status >= 500) & (status != 503)).sum()),
        "status_other": int(((status != 200) & (status != 503)).sum()),
        "non_200_before_kill": int(((status != 200) & (after_kill < 0)).sum()),
        "requests_before_kill": int((after_kill < 0).sum()),
        "unaffected_503": int((failed & ~affected).sum()),
        "kill_at_s": kill_s,
        "first_503_after_kill_s": float(after_kill[failed].min()) if failed.any() else None,
        "last_503_after_kill_s": float(after_kill[failed].max()) if failed.any() else None,
        "promotion_s": promotion_s,
        "loadgen": json.loads(out.read_text())["summary"],
    }


def failover(
    cluster: LocalCluster, data: Path, features: FeatureSet, args: argparse.Namespace
) -> dict[str, Any]:
    with supervised("bench-cluster-") as (children, workdir):
        print("exporting a model for the service ...", flush=True)
        onnx = export_model(data, workdir)
        env = {
            "MODEL_PATH": str(onnx),
            "REDIS_URL": cluster.url,
            "REDIS_CLUSTER": "true",
            "PROVIDER": "cpu",
            "FEATURE_KEY_PREFIX": PREFIX,
        }
        rng = np.random.default_rng(1)
        users = rng.choice(features.user_ids, size=min(2000, features.num_users), replace=False)
        command = [sys.executable, "-m", "service"]
        log = workdir / "service.log"
        with running_service(children, command, env, log) as service:
            runs = {}
            for victim in ("control", "other"):
                print(f"failover: killing the {victim} master under load ...", flush=True)
                runs[victim] = one_failover(
                    children, cluster, service.base, victim, users, features.item_vocab,
                    workdir, args,
                )  # fmt: skip
                print(json.dumps({k: v for k, v in runs[victim].items() if k != "loadgen"}))
    return {
        "rate": args.rate,
        "duration_s": args.duration,
        "kill_after_s": args.kill_after,
        "candidates": args.score_candidates,
        "node_timeout_ms": args.node_timeout_ms,
        **runs,
    }


# --------------------------------------------------------------------------------------------
# Report


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _ratio(single: float, cluster: float) -> str:
    return f"{cluster / single:.2f}" if single > 0 else "-"


def table(results: dict[str, Any]) -> str:
    reads, load = results["reads"], results["load"]
    rows: list[list[Any]] = []
    for mode, name in (("warm", "fetch, warm item cache"), ("cold", "fetch, cold item cache")):
        pair = reads[mode]
        for key, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("mean_ms", "mean ms")):
            s, c = pair["single"][key], pair["cluster"][key]
            rows.append([f"{name}: {label}", _ms(s), _ms(c), _ratio(s, c)])
        s, c = pair["single"]["round_trips_mean"], pair["cluster"]["round_trips_mean"]
        rows.append([f"{name}: round trips (mean)", f"{s:.2f}", f"{c:.2f}", _ratio(s, c)])
    for key, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("mean_ms", "mean ms")):
        s, c = reads["append"]["single"][key], reads["append"]["cluster"][key]
        rows.append([f"append (1 item): {label}", _ms(s), _ms(c), _ratio(s, c)])
    single, cluster = load["single"], load["cluster"]
    for key, label in (("items_per_s", "items/s"), ("users_per_s", "users/s")):
        rows.append([f"bulk load: {label}", f"{single[key]:,.0f}", f"{cluster[key]:,.0f}",
                     _ratio(single[key], cluster[key])])  # fmt: skip
    total = "bulk load: items + users + switch, s"
    rows.append([total, f"{single['load_s']:.2f}", f"{cluster['load_s']:.2f}",
                 _ratio(single["load_s"], cluster["load_s"])])  # fmt: skip
    mib = 2**20
    per_master = " / ".join(f"{b / mib:,.1f}" for b in cluster["used_memory_bytes"])
    rows.append(["used_memory MiB (cluster: per master)",
                 f"{single['used_memory_total_bytes'] / mib:,.1f}", per_master,
                 _ratio(single["used_memory_max_bytes"], cluster["used_memory_max_bytes"])
                 + " (largest master)"])  # fmt: skip
    s_total, c_total = single["used_memory_total_bytes"], cluster["used_memory_total_bytes"]
    rows.append(["used_memory MiB, all masters", f"{s_total / mib:,.1f}", f"{c_total / mib:,.1f}",
                 _ratio(s_total, c_total)])  # fmt: skip
    fail = results["failover"]
    fail_rows = []
    for victim, label in (
        ("control", "master of the control keys ({qin}:live)"),
        ("other", "master of user histories only"),
    ):
        run = fail[victim]
        first, last = run["first_503_after_kill_s"], run["last_503_after_kill_s"]
        fail_rows.append([
            label, f"{run['affected_users_share']:.0%}", run["sent"], run["answered"],
            run["status_200"], run["status_503"], run["status_other"], run["status_500"],
            "-" if first is None else f"{first:.2f}", "-" if last is None else f"{last:.2f}",
            f"{run['promotion_s']:.2f}", run["unaffected_503"],
        ])  # fmt: skip
    dataset = results["dataset"]
    c = results["cluster"]
    return (
        f"### One Redis vs a {c['masters']}-master cluster ({c['replicas']} replica each), "
        f"Redis {results['redis_version']}, loopback: {load['single']['users']:,} users, "
        f"{load['single']['items']:,} items ({dataset['users']:,} generated)\n\n"
        f"Reads: 1 user (history {HISTORY_LEN}) + {results['candidates']} candidates, one at a "
        f"time ({results['event_loop']}), {reads['warm']['single']['requests']:,} requests per "
        "mode, single and cluster requests interleaved one by one.\n\n"
        + markdown_table(["measure", "single node", "cluster", "cluster / single"], rows)
        + f"\n\n### Failover under load: the service on the cluster, open loop at "
        f"{fail['rate']:g} req/s (1 user x {fail['candidates']} candidates), one master "
        f"SIGKILLed {fail['kill_after_s']:g} s into a {fail['duration_s']:g} s run, "
        f"cluster-node-timeout {fail['node_timeout_ms']} ms\n\n"
        + markdown_table(
            [
                "master killed",
                "users affected",
                "sent",
                "answered",
                "200",
                "503",
                "other",
                "500",
                "first 503 after kill s",
                "last 503 after kill s",
                "replica promoted after s",
                "503 of unaffected users",
            ],
            fail_rows,
        )
        + "\n\nThe 503 window is set by cluster-node-timeout: the replica takes over only after "
        "its master has been unreachable that long (plus the election).\n"
    )


def problems(results: dict[str, Any]) -> list[str]:
    found = []
    for victim in ("control", "other"):
        run = results["failover"][victim]
        if run["sent"] != run["answered"] or run["sent"] != run["requests"]:
            found.append(f"{victim}: sent {run['sent']}, answered {run['answered']}")
        if run["status_other"]:
            found.append(f"{victim}: {run['status_other']} answers neither 200 nor 503")
        if run["non_200_before_kill"] or not run["requests_before_kill"]:
            found.append(f"{victim}: not all 200 before the kill")
        if run["unaffected_503"]:
            found.append(f"{victim}: {run['unaffected_503']} 503s for users on live masters")
        if not run["status_503"]:
            found.append(f"{victim}: the kill was never felt (no 503)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data, generate_s = ensure_dataset(args)
    features = read_feature_set(data, HISTORY_LEN)
    with (
        interrupts_as_exit(),
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
        RedisServer(Path(tmp) / "single") as single,
        LocalCluster(Path(tmp) / "cluster", node_timeout_ms=args.node_timeout_ms) as cluster,
    ):
        masters = [cluster.nodes[port] for port in sorted(cluster.master_ports())]
        print("bulk load: single, then cluster ...", flush=True)
        load = {
            "single": bulk_load(single.url, False, features, lambda: used_memory([single])),
            "cluster": bulk_load(cluster.url, True, features, lambda: used_memory(masters)),
        }
        cluster.wait_synced()
        print("reads, interleaved ...", flush=True)
        reads, loop = run_async(
            measure_reads({"single": single.url, "cluster": cluster.url}, features, args)
        )
        client = single.client()
        version = client.info("server")["redis_version"]
        client.close()
        fail = failover(cluster, data, features, args)
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
        "cluster": {"masters": 3, "replicas": 1, "node_timeout_ms": args.node_timeout_ms},
        "load": load,
        "reads": reads,
        "failover": fail,
    }
    return publish_checked("cluster", results, table(results), problems(results), args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
