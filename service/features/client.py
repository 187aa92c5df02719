"""The synchronous Redis client of the command-line tools (bulk load, ``info``) and their defaults.

Apart from the bulk loader so that ``python -m service.features append`` and ``info`` run on a
serving install: the loader needs pyarrow and tqdm (the ``load`` extra), this module only redis.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Fields per HSET command of a bulk load: big enough to amortise the command, small enough to
#: stream.
DEFAULT_CHUNK = 500


def connect(url: str, timeout_s: float, tls: Mapping[str, str] | None = None) -> redis.Redis:
    """A synchronous client for bulk work: one retry so a stale pooled socket reconnects.
    ``tls``: redis-py's TLS file arguments for a rediss:// URL (``Settings.redis_tls``)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        **(tls or {}),
    )
