"""The feature store's domain errors, and the one place where Redis exceptions become them.

The service maps these to HTTP statuses in one place (suggested: StoreUnavailable and
NoLiveVersion 503, StoreTimeout 504, CorruptRecord 500 with a generic body); the command line maps
them to exit code 2. Messages say what failed and where, never a password from the Redis URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis.exceptions


class FeatureStoreError(Exception):
    """Base of every feature-store failure."""


class StoreUnavailable(FeatureStoreError):
    """Redis cannot be reached (refused, reset, DNS, still loading its data set)."""


class StoreTimeout(FeatureStoreError):
    """Redis did not answer within the configured timeout."""


class NoLiveVersion(FeatureStoreError):
    """No feature version is live yet: run ``python -m service.features load`` first."""


class CorruptRecord(FeatureStoreError):
    """A stored record does not have the layout this code reads (wrong size, format or type)."""


class LoadError(FeatureStoreError):
    """A bulk load was refused or could not complete (another load running, marker lost)."""


def redacted(url: str) -> str:
    """The Redis URL without credentials, for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:
        return "<invalid Redis URL>"


#: Redis Cluster's own failures: its topology is changing or part of it is down (CLUSTERDOWN,
#: redirects that did not settle, a slot nobody serves, no reachable node). All are "retry
#: shortly", like a single Redis that cannot be reached. RedisClusterException is not a RedisError.
CLUSTER_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # MovedError is an AskError
    redis.exceptions.RedisClusterException,
)


def translate(exc: BaseException, url: str, operation: str) -> FeatureStoreError:
    """The domain error for an exception raised by redis-py while doing ``operation``.

    Timeouts are checked first: redis-py's TimeoutError is not a ConnectionError, but
    asyncio's and the socket's are plain OSError relatives that must not read as "refused".
    """
    where = redacted(url)
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return StoreTimeout(f"Redis at {where} did not answer in time while {operation}")
    if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError | OSError):
        return StoreUnavailable(f"cannot reach Redis at {where} while {operation}: {exc}")
    if isinstance(exc, redis.exceptions.MovedError):
        return StoreUnavailable(
            f"Redis at {where} redirected a key to another node while {operation} (MOVED "
            f"{_first_line(exc)}): it is a Redis Cluster node; set REDIS_CLUSTER=true (--cluster "
            "on the command line) so that the client routes keys to their nodes"
        )
    if isinstance(exc, CLUSTER_ERRORS):
        return StoreUnavailable(
            f"the Redis Cluster at {where} cannot serve while {operation}: {_first_line(exc)}"
        )
    if isinstance(exc, redis.exceptions.ResponseError):
        message = str(exc)
        if "NOLIVE" in message:
            return NoLiveVersion(
                f"no live feature version in Redis at {where}: run "
                "'python -m service.features load --data DIR' first"
            )
        if message.startswith("WRONGTYPE"):
            return CorruptRecord(f"a feature key has the wrong Redis type while {operation}")
        if message.startswith("CORRUPT"):
            return CorruptRecord(f"{message.removeprefix('CORRUPT ')} (while {operation})")
    return FeatureStoreError(f"Redis at {where} failed while {operation}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    """An exception's message without what redis-py appends (a pipeline's command and its raw,
    possibly binary, arguments), at most 200 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if text.startswith("Command # ") and "caused error: " in text:
        text = text.rsplit("caused error: ", 1)[1]
    return text[:200]


@contextmanager
def translating(url: str, operation: str) -> Iterator[None]:
    """Turn redis-py and socket exceptions raised inside the block into domain errors."""
    try:
        yield
    except (
        TimeoutError,
        redis.exceptions.RedisError,
        redis.exceptions.RedisClusterException,
        OSError,
    ) as exc:
        raise translate(exc, url, operation) from exc
