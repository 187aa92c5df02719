"""Command line of the feature store: bulk load, online append, inspection.

    python -m service.features load --data DIR [--redis-url URL] [--keep N] [--history-len N]
    python -m service.features append --user U --item I [I ...] [--redis-url URL]
    python -m service.features info [--redis-url URL]

Defaults come from the environment (service.settings: REDIS_URL, REDIS_CLUSTER,
FEATURE_KEY_PREFIX, FEATURE_VERSIONS_KEPT, HISTORY_LEN, REDIS_TIMEOUT_S). Bad input, bad data
and an unreachable Redis end with one line on stderr and exit code 2, never a traceback.

``load`` reads parquet, so it needs the ``load`` extra (pyarrow, tqdm); its loader is imported
only when it runs, and ``append`` and ``info`` work on a serving install without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pydantic
import redis

from service.settings import Settings

from .client import DEFAULT_CHUNK, SyncClient, connect
from .errors import FeatureStoreError, translating
from .layout import Keys
from .store import FeatureStore

EXIT_USAGE = 2
#: The third-party modules the bulk loader needs beyond a serving install: the ``load`` extra.
LOAD_EXTRA_MODULES = ("pyarrow", "tqdm")
#: Reply timeout of the small admin reads of ``info``, in seconds.
ADMIN_TIMEOUT_S = 10.0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.features",
        description="Redis feature store of the QIN service: versioned bulk loads, appends.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=settings.redis_url, help="Redis to use (REDIS_URL)")
    common.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=settings.redis_cluster,
        help="the URL is a seed node of a Redis Cluster (REDIS_CLUSTER)",
    )
    common.add_argument(
        "--prefix", default=settings.feature_key_prefix, help="key prefix (FEATURE_KEY_PREFIX)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    load = commands.add_parser(
        "load",
        parents=[common],
        formatter_class=formatter,
        help="load a dataset folder under a new version and switch to it",
        description=(
            "Write item_info and each user's latest history under a new version, then make it "
            "live with one atomic switch; older versions beyond --keep are deleted. A failed or "
            "interrupted load leaves the live version untouched."
        ),
    )
    load.add_argument("--data", type=Path, required=True, help="dataset folder (MicroLens format)")
    load.add_argument(
        "--keep",
        type=_positive,
        default=settings.feature_versions_kept,
        help="versions kept after the switch, the live one included (FEATURE_VERSIONS_KEPT)",
    )
    load.add_argument(
        "--history-len",
        type=_positive,
        default=settings.history_len,
        help="most recent behaviours kept per user (HISTORY_LEN)",
    )
    load.add_argument(
        "--chunk", type=_positive, default=DEFAULT_CHUNK, help="fields per HSET command"
    )
    load.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for one Redis reply"
    )
    load.add_argument("--no-progress", action="store_true", help="no progress bar")

    append = commands.add_parser(
        "append",
        parents=[common],
        formatter_class=formatter,
        help="append behaviours to a user's history (trimmed, atomic)",
        description="Append item ids, oldest first, to a user's history under the live version.",
    )
    append.add_argument("--user", type=_integer, required=True, help="user id")
    append.add_argument(
        "--item", type=_positive, nargs="+", required=True, help="item ids, oldest first"
    )

    commands.add_parser(
        "info",
        parents=[common],
        formatter_class=formatter,
        help="print the live version, a running load and the kept versions as JSON",
    )
    return parser


class MissingExtra(RuntimeError):
    """A command needs an extra that is not installed; the message says which and how."""


def run_load(args: argparse.Namespace, settings: Settings) -> int:
    try:  # here, not at the top: append and info must run without the load extra
        from .loader import load_dataset
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in LOAD_EXTRA_MODULES:
            raise  # not an extra's module: a broken install, shown as it is
        raise MissingExtra(
            f"the load command needs the `load` extra ({missing} is not installed): "
            "pip install '.[load]'"
        ) from None
    report = load_dataset(
        args.redis_url,
        args.data,
        prefix=args.prefix,
        history_len=args.history_len,
        keep=args.keep,
        chunk=args.chunk,
        timeout_s=args.timeout,
        progress=not args.no_progress,
        tls=settings.redis_tls(args.redis_url),
        cluster=args.cluster,
    )
    write_s = report.items_s + report.users_s
    print(
        f"version {report.version} is live (was {report.previous or 'none'}): "
        f"{report.items:,} items, {report.users:,} users in {write_s:.1f} s "
        f"(read {report.read_s:.1f} s); {report.replayed_appends} appends replayed; "
        f"removed versions: {', '.join(report.removed_versions) or 'none'}"
    )
    return 0


def run_append(args: argparse.Namespace, settings: Settings) -> int:
    async def append() -> None:
        config = settings.model_copy(
            update={
                "redis_url": args.redis_url,
                "redis_cluster": args.cluster,
                "feature_key_prefix": args.prefix,
            }
        )
        store = FeatureStore.from_settings(config)
        try:
            result = await store.append(args.user, args.item)
        finally:
            await store.aclose()
        print(
            f"user {args.user}: {len(args.item)} appended under version {result.version}, "
            f"history length {result.history_len}"
        )

    asyncio.run(append())
    return 0


def run_info(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(args.prefix)
    client = connect(
        args.redis_url, ADMIN_TIMEOUT_S, settings.redis_tls(args.redis_url), cluster=args.cluster
    )
    try:
        with translating(args.redis_url, "reading store info"):
            live = client.get(keys.live)
            loading = client.get(keys.loading)
            versions = cast(list[bytes], client.zrange(keys.versions, 0, -1))
            metas = {v.decode(): client.hgetall(keys.meta(v.decode())) for v in versions}
            memory = _used_memory(client)
    finally:
        client.close()
    info: dict[str, Any] = {
        "live": _text(live),
        "loading": _text(loading),
        "versions": {
            name: {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], meta).items()}
            for name, meta in metas.items()
        },
        "used_memory": memory,
    }
    print(json.dumps(info, indent=2))
    return 0


def _used_memory(client: SyncClient) -> str | dict[str, str]:
    """used_memory_human of the Redis, or of each master of a cluster (by host:port)."""
    if isinstance(client, redis.RedisCluster):
        per_node = client.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
        return {node: info.get("used_memory_human") for node, info in sorted(per_node.items())}
    return cast(str, client.info("memory").get("used_memory_human"))


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid environment settings: {errors}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser(settings).parse_args(argv)
    commands: dict[str, Callable[[], int]] = {
        "load": lambda: run_load(args, settings),
        "append": lambda: run_append(args, settings),
        "info": lambda: run_info(args, settings),
    }
    try:
        return commands[args.command]()
    except (FeatureStoreError, MissingExtra, ValueError) as exc:  # a DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        note = ": the live version is unchanged" if args.command == "load" else ""
        print(f"interrupted{note}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
