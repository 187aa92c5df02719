"""Commands per second one Redis process (one shard) serves, for the commands a request sends.

    python -m bench.redis_ops [--requests 200000] [--clients 50] [--pipeline 2]

A /score request sends one pipeline: ``GET {P}:live`` (a few bytes), ``HGET`` of the user's
history (256 bytes: 64 int32 ids) and, with a cold item cache, ``HMGET`` of up to 200 item
records (536 bytes each). This starts its own redis-server on loopback, writes such keys, and
runs ``redis-benchmark`` (shipped with the server) on each command: ``--clients`` connections,
``--pipeline`` commands per round trip, one benchmark thread. The capacity plan (docs/capacity.md)
divides the cluster's command rate by these figures.

On a small shared machine the benchmark client competes with the server for the cores, so the
figures are a lower bound of what a dedicated shard serves; the ratios between commands hold.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table, publish
from service.features.layout import ITEM_RECORD_BYTES
from tests.support.redis import RedisServer

HISTORY_BYTES = 64 * 4
HMGET_FIELDS = 200


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.redis_ops",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=200_000, help="commands per benchmark")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=2, help="commands per round trip")
    parser.add_argument("--out-dir", type=Path, help="where to write (default bench/results)")
    return parser


def populate(server: RedisServer, items: int = 20_000, users: int = 4096) -> None:
    rng = np.random.default_rng(0)
    client = server.client()
    try:
        client.set("{qin}:live", "1")
        pipe = client.pipeline(transaction=False)
        for low in range(1, items + 1, 500):
            fields: dict[bytes, bytes] = {
                b"%d" % i: rng.bytes(ITEM_RECORD_BYTES)
                for i in range(low, min(low + 500, items + 1))
            }
            pipe.hset("qin:1:items", mapping=fields)  # type: ignore[arg-type]
        for user in range(users):
            pipe.hset(f"qin:1:h:{{b{user % 4096}}}", str(user), rng.bytes(HISTORY_BYTES))
        pipe.execute()
    finally:
        client.close()


def benchmark(server: RedisServer, args: argparse.Namespace, command: list[str]) -> float:
    """Requests per second redis-benchmark reports for ``command``."""
    executable = shutil.which("redis-benchmark") or str(
        Path(server.executable).with_name("redis-benchmark")
    )
    done = subprocess.run(
        [executable, "-h", "127.0.0.1", "-p", str(server.port), "-n", str(args.requests),
         "-c", str(args.clients), "-P", str(args.pipeline), "--csv", *command],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    rows = list(csv.reader(io.StringIO(done.stdout)))
    return float(rows[-1][1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hmget = ["HMGET", "qin:1:items", *(str(i) for i in range(1, 20_000, 20_000 // HMGET_FIELDS))]
    commands = {
        "GET {qin}:live (the live key, every request)": ["GET", "{qin}:live"],
        "HGET of a 64-id history (every request)": ["HGET", "qin:1:h:{b7}", "7"],
        f"HMGET of {len(hmget) - 2} item records (cold cache)": hmget,
    }
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as server:
        populate(server)
        version = server.client().info("server")["redis_version"]
        measured = {name: benchmark(server, args, command) for name, command in commands.items()}
    rows: list[list[Any]] = [[name, rate] for name, rate in measured.items()]
    table = (
        f"### One Redis {version} process: commands per second ({args.clients} clients, "
        f"{args.pipeline} per round trip, {args.requests:,} each, redis-benchmark on the same "
        "machine)\n\n" + markdown_table(["command", "commands/s"], rows)
    )
    results = {"redis_version": version, "settings": vars(args) | {"out_dir": None},
               "commands_per_s": measured}  # fmt: skip
    return publish("redis_ops", results, table, args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
