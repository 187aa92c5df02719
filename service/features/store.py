"""The online reader and writer: one request's features in as few round trips as possible.

``FeatureStore.fetch(user_id, candidate_ids)`` returns the user's history and the features of the
history items and the candidates. The reader remembers the live version it last saw and sends,
in ONE pipeline: ``GET {P}:live``, ``HGET`` of the user's history under that version, and an
``HMGET`` of the candidates missing from the item cache. Item features are cached in process
(bounded, one cache per version), so a warm request is exactly that one round trip. Cold, the
history's items are only known after the first reply: a second round trip reads them (again with
the live key, so both replies are checked against the version). If the live version read back
differs from the assumed one, the cache is dropped, the new version's meta is read and the
request is redone: a reader only ever combines data of one version.

Rules, not errors:

* **Unknown user** (no history under the live version): an empty history,
  ``history_source == "unknown_user"``.
* **Unknown item** (id < 1, beyond the version's item vocabulary, or absent from Redis): padding
  features (all-zero tags and vector, levels 0) and its id reported as 0, both for candidates
  (so the model scores it as an unseen item) and inside the history (a padding position).
* ``history_override`` replaces the stored history (padding zeros dropped, last ``history_len``
  kept); the stored one is then not read.

Failures are typed (errors.py): StoreUnavailable, StoreTimeout, NoLiveVersion, CorruptRecord.
Every request counts its round trips; ``stats`` exposes the counters for tests and metrics.

Redis Cluster (``REDIS_CLUSTER``): the same pipeline, sent by redis-py's asyncio cluster
pipeline, which groups the commands per node and sends the groups concurrently, so a request
still waits one round trip (to the slowest node it needs). The client never retries by itself:
its retries sleep and rebuild the topology inside the request, which outlives the Redis timeout.
Instead each cluster operation is bounded by ``CLUSTER_OPERATION_TIMEOUTS`` times the Redis
timeout, fails fast as a typed error (503 or 504 upstream), and a failure schedules one
background re-read of the topology, so requests after a failover or a resharding go to the new
masters. Connections per node are bounded by a semaphore (the cluster pool does not queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT

from service.settings import Settings

from .cache import ItemCache
from .errors import (
    CorruptRecord,
    FeatureStoreError,
    NoLiveVersion,
    StoreTimeout,
    StoreUnavailable,
    translating,
)
from .layout import (
    LAYOUT_FORMAT,
    USER_BUCKETS,
    ItemFeatures,
    Keys,
    pack_history,
    unpack_history,
    unpack_items,
    user_bucket,
)
from .scripts import APPEND, APPLY, LOG_APPEND

log = logging.getLogger(__name__)

#: A request is retried at most this many times when the live version changes under it.
_MAX_ATTEMPTS = 4
_INT64 = np.iinfo(np.int64)

#: Where a request's history came from: the one definition, also the /score response's field.
HistorySource = Literal["stored", "unknown_user", "override", "unavailable"]
#: Cluster mode: one operation (a pipeline, a script, a topology read before it) may take this
#: many Redis timeouts: a topology re-read plus the commands.
CLUSTER_OPERATION_TIMEOUTS = 2
#: Cluster mode: at most one background topology re-read per this many seconds.
REDISCOVERY_INTERVAL_S = 0.2

AsyncClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.RedisCluster


@dataclass(frozen=True, eq=False)
class RequestFeatures:
    """Everything the model needs for one user and its candidates."""

    version: str
    history_source: HistorySource
    history: ItemFeatures  # oldest first, at most history_len
    candidates: ItemFeatures  # in request order
    round_trips: int


@dataclass(frozen=True)
class AppendResult:
    version: str  # the live version the append was written to
    history_len: int  # the user's history length after the append


@dataclass
class StoreStats:
    """Counters since start; read them through ``FeatureStore.stats`` (a copy)."""

    requests: int = 0
    round_trips: int = 0
    item_cache_hits: int = 0
    item_cache_misses: int = 0
    version_changes: int = 0
    unknown_users: int = 0
    unknown_items: int = 0
    appends: int = 0
    cached_items: int = 0


@dataclass(frozen=True, eq=False)
class _Version:
    """The live version as this process knows it, with its item cache."""

    name: str
    raw: bytes
    item_vocab: int
    history_len: int
    cache: ItemCache


class _VersionChanged(Exception):
    """Internal: the live key moved during a request; redo it under the new version."""

    def __init__(self, round_trips: int) -> None:
        super().__init__(f"live version changed after {round_trips} round trips")
        self.round_trips = round_trips


class FeatureStore:
    """Async access to the feature store over one shared redis.asyncio connection pool."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        prefix: str = "qin",
        item_cache_size: int = 100_000,
        history_len: int = 64,
        url: str = "",
        operation_timeout_s: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        """``operation_timeout_s`` and ``max_connections`` apply in cluster mode only (one
        Redis: the socket timeouts and the blocking pool of the client do the same)."""
        if history_len < 1 or item_cache_size < 0:
            raise ValueError("history_len must be positive and item_cache_size non-negative")
        self.client = client
        self.cluster = isinstance(client, redis.asyncio.RedisCluster)
        self.operation_timeout_s = operation_timeout_s
        self._connections = asyncio.Semaphore(max_connections)
        self._rediscovery: asyncio.Task[None] | None = None
        self._rediscovered_at = -REDISCOVERY_INTERVAL_S
        self.keys = Keys(prefix)
        self.item_cache_size = item_cache_size
        self.history_len = history_len
        self.url = url or "redis"
        self._view: _Version | None = None
        self._refresh_lock = asyncio.Lock()
        self._stats = StoreStats()
        self._append = client.register_script(APPEND)
        self._log_append = client.register_script(LOG_APPEND)
        self._apply = client.register_script(APPLY)

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureStore:
        """The service's store: one pool, fail-fast timeouts, one reconnect on a stale socket.

        The pool blocks (up to the request deadline) when all its connections are busy, rather
        than failing: a burst of requests is a queue, not an outage.
        """
        if settings.redis_cluster:
            return cls(
                redis.asyncio.RedisCluster.from_url(
                    settings.redis_url,
                    socket_timeout=settings.redis_timeout_s,
                    socket_connect_timeout=settings.redis_timeout_s,
                    max_connections=settings.redis_max_connections,
                    require_full_coverage=False,  # serve the slots that are up
                    retry=Retry(NoBackoff(), 0),
                    **settings.redis_tls(),
                ),
                prefix=settings.feature_key_prefix,
                item_cache_size=settings.item_cache_size,
                history_len=settings.history_len,
                url=settings.redis_url,
                operation_timeout_s=CLUSTER_OPERATION_TIMEOUTS * settings.redis_timeout_s,
                max_connections=settings.redis_max_connections,
            )
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis_url,
            timeout=settings.request_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            max_connections=settings.redis_max_connections,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            **settings.redis_tls(),
        )
        return cls(
            redis.asyncio.Redis(connection_pool=pool),
            prefix=settings.feature_key_prefix,
            item_cache_size=settings.item_cache_size,
            history_len=settings.history_len,
            url=settings.redis_url,
        )

    async def aclose(self) -> None:
        if self._rediscovery is not None:
            self._rediscovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, FeatureStoreError):
                await self._rediscovery
        await self.client.aclose()
        if isinstance(self.client, redis.asyncio.Redis):
            await self.client.connection_pool.disconnect()

    # ----------------------------------------------------------------------------------------
    # Calls to Redis

    @contextlib.asynccontextmanager
    async def _calling(self, operation: str) -> AsyncIterator[None]:
        """Around every call to Redis: its errors as domain errors; in cluster mode also a
        bound on its time and connections, and a topology re-read after a failure."""
        if not self.cluster:
            with translating(self.url, operation):
                yield
            return
        try:
            # The wait for a connection is not the operation's: like the single-node pool, it
            # is bounded by the request's deadline only (a burst is a queue, not an outage).
            async with self._connections:
                with translating(self.url, operation):
                    async with asyncio.timeout(self.operation_timeout_s):
                        yield
        except (StoreUnavailable, StoreTimeout):
            self._rediscover_soon()
            raise

    def _rediscover_soon(self) -> None:
        """Re-read the cluster's slots in the background, at most once per interval."""
        now = time.monotonic()
        running = self._rediscovery is not None and not self._rediscovery.done()
        if running or now - self._rediscovered_at < REDISCOVERY_INTERVAL_S:
            return
        self._rediscovered_at = now
        self._rediscovery = asyncio.get_running_loop().create_task(self._rediscover())

    async def _rediscover(self) -> None:
        assert isinstance(self.client, redis.asyncio.RedisCluster)
        try:
            async with asyncio.timeout(self.operation_timeout_s * 4):
                await self.client.nodes_manager.initialize()
        except Exception as exc:  # the next failure tries again; requests are not waiting
            log.debug("re-reading the Redis Cluster topology failed: %s", exc)

    @property
    def stats(self) -> StoreStats:
        cached = len(self._view.cache) if self._view else 0
        return dataclasses.replace(self._stats, cached_items=cached)

    def clear_item_cache(self) -> None:
        """Drop cached items (benchmarks measure the cold path with it)."""
        view = self._view
        if view is not None:
            self._view = dataclasses.replace(
                view, cache=ItemCache(self.item_cache_size, view.item_vocab)
            )

    # ----------------------------------------------------------------------------------------
    # Reads

    async def live_version(self) -> str | None:
        """The live version, or None before the first load (for readiness checks)."""
        async with self._calling("reading the live version"):
            raw = cast(bytes | None, await self.client.get(self.keys.live))
        return None if raw is None else raw.decode()

    async def fetch(
        self,
        user_id: int,
        candidate_ids: Sequence[int] | np.ndarray,
        history_override: Sequence[int] | np.ndarray | None = None,
    ) -> RequestFeatures:
        """The user's history and the features of its items and of the candidates."""
        _check_user(user_id)
        candidates = _ids_array(candidate_ids, "candidate_ids")
        override = None
        if history_override is not None:
            override = _ids_array(history_override, "history_override")
            override = override[override != 0][-self.history_len :]
        self._stats.requests += 1
        trips = 0
        for _ in range(_MAX_ATTEMPTS):
            view = self._view
            if view is None:
                view, refresh_trips = await self._refresh()
                trips += refresh_trips
            try:
                result = await self._fetch_under(view, user_id, candidates, override)
            except _VersionChanged as changed:
                trips += changed.round_trips
                continue
            return dataclasses.replace(result, round_trips=trips + result.round_trips)
        raise FeatureStoreError(
            f"the live feature version changed {_MAX_ATTEMPTS} times during one read"
        )

    def cached(
        self,
        candidate_ids: Sequence[int] | np.ndarray,
        history_override: Sequence[int] | np.ndarray | None = None,
    ) -> RequestFeatures:
        """Features without Redis (degraded mode while it is unreachable): items from the
        process's item cache, padding for the rest; the explicit history if given, else an
        empty one (``history_source == "unavailable"``). No network, never raises for Redis."""
        candidates = _ids_array(candidate_ids, "candidate_ids")
        source: HistorySource = "unavailable"
        history = np.zeros(0, np.int64)
        if history_override is not None:
            history = _ids_array(history_override, "history_override")
            history = history[history != 0][-self.history_len :]
            source = "override"
        view = self._view
        if view is None:
            return RequestFeatures(
                "none",
                source,
                ItemFeatures.zeros(len(history)),
                ItemFeatures.zeros(len(candidates)),
                0,
            )
        cache, empty = view.cache, _Fetched.empty()

        def known(ids: np.ndarray) -> ItemFeatures:
            slots = _lookup(cache, ids)
            slots[slots == -1] = -2  # not cached: padding, not a read
            return _assemble(cache, ids, slots, empty)

        return RequestFeatures(view.name, source, known(history), known(candidates), 0)

    async def _fetch_under(
        self, view: _Version, user_id: int, candidates: np.ndarray, override: np.ndarray | None
    ) -> RequestFeatures:
        """One attempt under ``view``; raises _VersionChanged if the live key moved."""
        cache = view.cache
        candidate_slots = _lookup(cache, candidates)
        first_missing = np.unique(candidates[candidate_slots == -1])
        history_key = self.keys.history(view.name, user_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.live)
        if override is None:
            pipe.hget(history_key, str(user_id))
        if len(first_missing):
            pipe.hmget(self.keys.items(view.name), first_missing.tolist())
        async with self._calling(f"reading user {user_id}"):
            replies = await pipe.execute()
        self._stats.round_trips += 1
        self._check_live(view, replies[0], 1)
        source: HistorySource = "override"
        history = override
        if history is None:
            stored = unpack_history(replies[1], history_key, user_id)
            source = "unknown_user" if stored is None else "stored"
            self._stats.unknown_users += stored is None
            history = _recent(stored, self.history_len)
        fetched = _Fetched.empty()
        if len(first_missing):
            fetched = _Fetched(first_missing, self._parse_items(view, first_missing, replies[-1]))
        history_slots = _lookup(cache, history)
        second_missing = np.setdiff1d(history[history_slots == -1], first_missing)
        if len(second_missing):
            fetched = fetched.merge(second_missing, await self._read_items(view, second_missing))
        out_history = _assemble(cache, history, history_slots, fetched)
        out_candidates = _assemble(cache, candidates, candidate_slots, fetched)
        self._count(candidate_slots, history_slots, fetched, out_history, out_candidates)
        cache.insert(fetched.keys, fetched.features)
        trips = 2 if len(second_missing) else 1
        return RequestFeatures(view.name, source, out_history, out_candidates, trips)

    async def _read_items(self, view: _Version, ids: np.ndarray) -> ItemFeatures:
        """Second round trip: items known only after the history arrived."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.live)
        pipe.hmget(self.keys.items(view.name), ids.tolist())
        async with self._calling(f"reading {len(ids)} items"):
            live, values = await pipe.execute()
        self._stats.round_trips += 1
        self._check_live(view, live, 2)
        return self._parse_items(view, ids, values)

    def _parse_items(self, view: _Version, ids: np.ndarray, values: list[Any]) -> ItemFeatures:
        return ItemFeatures.from_records(ids, unpack_items(values, ids, self.keys.items(view.name)))

    def _check_live(self, view: _Version, live: bytes | None, trips: int) -> None:
        if live == view.raw:
            return
        if self._view is view:
            self._view = None  # drops the item cache with it
            self._stats.version_changes += 1
        if live is None:
            raise NoLiveVersion(
                "no live feature version: run 'python -m service.features load --data DIR'"
            )
        raise _VersionChanged(trips)

    async def _refresh(self) -> tuple[_Version, int]:
        """Read the live version and its meta (two round trips, once per version).

        Returns the view and the round trips spent (0 when a concurrent request just did it).
        """
        async with self._refresh_lock:
            if self._view is not None:
                return self._view, 0
            for attempt in range(1, _MAX_ATTEMPTS + 1):
                async with self._calling("reading the live version"):
                    live = cast(bytes | None, await self.client.get(self.keys.live))
                    if live is None:
                        raise NoLiveVersion(
                            "no live feature version: run "
                            "'python -m service.features load --data DIR'"
                        )
                    meta = cast(
                        dict[bytes, bytes], await self.client.hgetall(self.keys.meta(live.decode()))
                    )
                    self._stats.round_trips += 2
                    if meta:
                        self._view = self._version(live, meta)
                        return self._view, 2 * attempt
            raise FeatureStoreError("the live feature version has no meta (removed while read)")

    def _version(self, live: bytes, meta: dict[bytes, bytes]) -> _Version:
        name = live.decode()
        where = self.keys.meta(name)
        try:
            layout = int(meta[b"format"])
            buckets = int(meta[b"buckets"])
            vocab = int(meta[b"item_vocab"])
            history_len = int(meta[b"history_len"])
        except (KeyError, ValueError) as exc:
            raise CorruptRecord(f"{where}: missing or malformed field ({exc})") from exc
        if layout != LAYOUT_FORMAT or buckets != USER_BUCKETS:
            raise CorruptRecord(
                f"{where}: layout format {layout} with {buckets} buckets; this code reads "
                f"format {LAYOUT_FORMAT} with {USER_BUCKETS}"
            )
        return _Version(name, live, vocab, history_len, ItemCache(self.item_cache_size, vocab))

    def _count(
        self,
        candidate_slots: np.ndarray,
        history_slots: np.ndarray,
        fetched: _Fetched,
        *outputs: ItemFeatures,
    ) -> None:
        stats = self._stats
        stats.item_cache_hits += int((candidate_slots >= 0).sum() + (history_slots >= 0).sum())
        stats.item_cache_misses += len(fetched.keys)
        stats.unknown_items += sum(int((out.ids == 0).sum()) for out in outputs)

    # ----------------------------------------------------------------------------------------
    # Writes

    async def append(self, user_id: int, item_ids: Sequence[int] | np.ndarray) -> AppendResult:
        """Append behaviours (oldest first) to a user's history, trimmed, atomically.

        The next read sees them. During a bulk load they are also logged for the new version.
        Ids must be 1..2**31-1; an id beyond the item vocabulary is kept and read as padding.
        """
        _check_user(user_id)
        packed = pack_history(_ids_array(item_ids, "item_ids"))
        if not packed:
            raise ValueError("append needs at least one item id")
        keys, user, bucket = self.keys, str(user_id), user_bucket(user_id)
        async with self._calling(f"appending to user {user_id}"):
            if self.cluster:  # two one-slot steps; see the layout module's docstring
                version, limit = await self._log_append(
                    keys=[keys.live, keys.loading], args=[keys.tag, user, bucket, packed]
                )
                history = keys.history(version.decode(), user_id)
                length = await self._apply(keys=[history], args=[user, packed, limit])
            else:
                args: list[EncodableT] = [keys.prefix, keys.tag, user, bucket, packed]
                version, length = await self._append(keys=[keys.live, keys.loading], args=args)
        self._stats.appends += 1
        return AppendResult(version.decode(), int(length))


# --------------------------------------------------------------------------------------------
# Helpers: pure numpy


@dataclass(frozen=True, eq=False)
class _Fetched:
    """Items read from Redis in this request: requested ids ascending, and their features."""

    keys: np.ndarray
    features: ItemFeatures

    @staticmethod
    def empty() -> _Fetched:
        return _Fetched(np.zeros(0, np.int64), ItemFeatures.zeros(0))

    def merge(self, keys: np.ndarray, features: ItemFeatures) -> _Fetched:
        all_keys = np.concatenate([self.keys, keys])
        order = np.argsort(all_keys, kind="stable")
        return _Fetched(all_keys[order], ItemFeatures.concat([self.features, features]).take(order))


def _check_user(user_id: Any) -> None:
    if isinstance(user_id, bool) or not isinstance(user_id, int | np.integer):
        raise ValueError(f"user_id must be an integer, got {user_id!r}")
    if not _INT64.min <= int(user_id) <= _INT64.max:
        raise ValueError(f"user_id must fit in int64, got {user_id}")


def _ids_array(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D list of integers, got {array.dtype} {array.shape}")
    return array.astype(np.int64, copy=False)


def _recent(history: np.ndarray | None, limit: int) -> np.ndarray:
    """The last ``limit`` ids of a stored history; an unknown user has none."""
    return np.zeros(0, np.int64) if history is None else history[-limit:]


def _lookup(cache: ItemCache, ids: np.ndarray) -> np.ndarray:
    """Cache slots of ``ids``: -1 = known id not cached (to fetch), -2 = unknown id (padding)."""
    slots = np.full(len(ids), -2, dtype=np.int64)
    valid = (ids >= 1) & (ids < cache.vocab)
    slots[valid] = cache.lookup(ids[valid])
    return slots


def _assemble(
    cache: ItemCache, ids: np.ndarray, slots: np.ndarray, fetched: _Fetched
) -> ItemFeatures:
    """Gather features from the cache and from this request's reads; unknown ids are padding."""
    hit = slots >= 0
    if hit.all():  # the warm path: five row gathers
        return cache.gather(slots)
    out = ItemFeatures.zeros(len(ids))
    out.put(hit, cache.gather(slots[hit]))
    miss = slots == -1
    if miss.any():
        out.put(miss, fetched.features.take(np.searchsorted(fetched.keys, ids[miss])))
    return out
