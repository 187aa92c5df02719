"""The synchronous Redis client of the command-line tools (bulk load, ``info``) and their defaults.

Apart from the bulk loader so that ``python -m service.features append`` and ``info`` run on a
serving install: the loader needs pyarrow and tqdm (the ``load`` extra), this module only redis.

With ``cluster`` the URL names one seed node of a Redis Cluster and the client is redis-py's
``RedisCluster``: it discovers the other nodes, routes each key to its slot's master and follows
redirects. Bulk work may wait out a failover, so its retries are several, with a backoff.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

#: Fields per HSET command of a bulk load: big enough to amortise the command, small enough to
#: stream.
DEFAULT_CHUNK = 500
#: A cluster client's retries of one command after a connection error, CLUSTERDOWN or a moved
#: slot (each after re-reading the topology), with 50 ms to 2 s between them: long enough for a
#: replica to be promoted (about the cluster's node timeout plus a second).
CLUSTER_RETRIES = 8

SyncClient: TypeAlias = redis.Redis | redis.RedisCluster


def connect(
    url: str, timeout_s: float, tls: Mapping[str, str] | None = None, *, cluster: bool = False
) -> SyncClient:
    """A synchronous client for bulk work: one retry so a stale pooled socket reconnects.
    ``tls``: redis-py's TLS file arguments for a rediss:// URL (``Settings.redis_tls``)."""
    if cluster:
        return redis.RedisCluster.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            require_full_coverage=False,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), CLUSTER_RETRIES),
            **(tls or {}),
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        **(tls or {}),
    )
