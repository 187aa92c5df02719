"""Bulk load: write a feature set under a new version, then make it live by one atomic switch.

Steps (``BulkLoader.load`` runs them; tests and the benchmark may run them one by one):

1. ``read_feature_set``: read and validate the dataset. Nothing touches Redis before it succeeds.
2. ``begin``: take the loading marker ``{P}:loading`` (refused while another load holds it), get a
   new version number and register it in ``{P}:versions``. The marker expires after
   ``marker_ttl_s`` unless refreshed, which every pipeline flush does, so a killed loader does not
   block the next one for long, nor keep appends logging forever.
3. ``write_items`` / ``write_users``: pipelined multi-field HSETs, ``chunk`` fields per command,
   with a progress bar. Readers do not look at this version yet.
4. ``finish``: replay the appends made during the load (the pending log), switch ``{P}:live`` in the
   same script that replays the last of them, then delete older versions beyond ``keep``.

An interrupted or failed load never touches ``{P}:live``: readers keep the old version, complete.
A load that fails with Redis reachable removes its partial version at once; a killed one leaves
it to be removed by the next successful load (it is registered and not ``complete``).

Appends during a load: the append script logs every append made while the marker is held to
``{P}:pending:V`` and the loader replays them onto version V after writing it, so they survive
the switch. Appends made before the load began are expected to be in its dataset (the offline
export), so they are not carried over.

Redis Cluster (a ``RedisCluster`` client): every command and script touches one slot. Writes,
marker refreshes and clean-up are single-key commands (grouped per node by the cluster
pipeline); the replay pops the log and rewrites each history with a one-key script, and the
switch (a ``{P}``-slot script) refuses while the log still holds appends, in which case the
loader replays again: a reader sees the old version or the new one, never half.

Needs pyarrow and tqdm (the ``load`` extra); the service never imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import redis
import redis.exceptions
from redis.typing import EncodableT, FieldT
from tqdm import tqdm

from .client import DEFAULT_CHUNK, SyncClient, connect
from .errors import FeatureStoreError, LoadError, redacted, translating
from .layout import ITEM_RECORD_BYTES, LAYOUT_FORMAT, USER_BUCKETS, Keys
from .scripts import APPLY, BEGIN, DRAIN, REFRESH, RELEASE, SWITCH, SWITCH_DRAINED
from .source import FeatureSet, read_feature_set

#: HSET commands per pipeline flush (about 8 MB of item records at the default chunk).
COMMANDS_PER_FLUSH = 32
#: Appends replayed per DRAIN call before the switch replays the rest.
DRAIN_BATCH = 1000
#: Cluster mode: replay-and-switch rounds before giving up (each round replays what appends
#: logged during the previous one; only a sustained append storm needs more than two).
SWITCH_ROUNDS = 100


@dataclass(frozen=True)
class LoadReport:
    """What a load did and how long each step took."""

    version: str
    previous: str | None
    items: int
    users: int
    replayed_appends: int
    removed_versions: list[str]
    read_s: float
    items_s: float
    users_s: float
    switch_s: float


class BulkLoader:
    """Writes feature sets into one Redis under versioned keys (see the module docstring)."""

    def __init__(
        self,
        client: SyncClient,
        prefix: str,
        *,
        url: str = "",
        keep: int = 2,
        chunk: int = DEFAULT_CHUNK,
        marker_ttl_s: float = 120.0,
        progress: bool = False,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the live version), got {keep}")
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.client = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.keys = Keys(prefix)
        self.url = url or _client_url(client)
        self.keep = keep
        self.chunk = chunk
        self.marker_ttl_ms = max(1, int(marker_ttl_s * 1000))
        self.progress = progress
        self._begin = client.register_script(BEGIN)
        self._drain = client.register_script(DRAIN)
        self._switch = client.register_script(SWITCH)
        self._switch_drained = client.register_script(SWITCH_DRAINED)
        self._refresh = client.register_script(REFRESH)
        self._release = client.register_script(RELEASE)

    # ----------------------------------------------------------------------------------------
    # The whole load

    def load(self, data: Path | str, history_len: int) -> LoadReport:
        """Read ``data``, write it under a new version and switch; see the module docstring."""
        started = time.perf_counter()
        features = read_feature_set(data, history_len)
        read_s = time.perf_counter() - started
        version = self.begin(features)
        try:
            items_s = _timed(lambda: self.write_items(version, features))
            users_s = _timed(lambda: self.write_users(version, features))
            switched = time.perf_counter()
            previous, replayed, removed = self.finish(version)
        except BaseException:
            self.abort(version)
            raise
        return LoadReport(
            version=version,
            previous=previous,
            items=features.item_vocab - 1,
            users=features.num_users,
            replayed_appends=replayed,
            removed_versions=removed,
            read_s=read_s,
            items_s=items_s,
            users_s=users_s,
            switch_s=time.perf_counter() - switched,
        )

    # ----------------------------------------------------------------------------------------
    # Steps

    def begin(self, features: FeatureSet) -> str:
        """Take the loading marker, allocate and register a version; returns it."""
        keys = self.keys
        with translating(self.url, "starting a load"):
            try:
                raw = self._begin(
                    keys=[keys.loading, keys.next, keys.versions], args=[self.marker_ttl_ms]
                )
            except redis.exceptions.ResponseError as exc:
                if str(exc).startswith("LOADBUSY"):
                    raise self._busy(str(exc)) from exc
                raise
            version = str(int(raw))
            self.client.hset(keys.meta(version), mapping=self._meta(features))
        return version

    def write_items(self, version: str, features: FeatureSet) -> None:
        """Every item record but the padding row 0 (readers never fetch id 0)."""
        raw = features.item_records.tobytes()
        count = features.item_vocab - 1
        key, size = self.keys.items(version), ITEM_RECORD_BYTES
        with self._bar(count, f"items v{version}") as bar:
            writer = self._writer(version, bar)
            for low in range(1, features.item_vocab, self.chunk):
                fields: list[bytes] = []
                for item in range(low, min(low + self.chunk, features.item_vocab)):
                    fields += [b"%d" % item, raw[item * size : (item + 1) * size]]
                writer.add(key, fields)
            writer.flush()

    def write_users(self, version: str, features: FeatureSet) -> None:
        """Every user's history, grouped by bucket hash so one HSET carries many users."""
        user_ids = features.user_ids
        buckets = np.mod(user_ids, USER_BUCKETS)
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(USER_BUCKETS + 1))
        raw = features.history_items.astype("<i4").tobytes()
        starts = (features.history_offsets * 4).tolist()
        ids = user_ids.tolist()
        with self._bar(len(ids), f"users v{version}") as bar:
            writer = self._writer(version, bar)
            for bucket in range(USER_BUCKETS):
                members = order[bounds[bucket] : bounds[bucket + 1]].tolist()
                key = self.keys.bucket(version, bucket)
                for low in range(0, len(members), self.chunk):
                    fields: list[bytes] = []
                    for index in members[low : low + self.chunk]:
                        fields += [b"%d" % ids[index], raw[starts[index] : starts[index + 1]]]
                    writer.add(key, fields)
            writer.flush()

    def finish(self, version: str) -> tuple[str | None, int, list[str]]:
        """Replay appends, switch atomically, drop old versions.

        Returns (previous live version, appends replayed, versions removed).
        """
        with translating(self.url, f"switching to version {version}"):
            try:
                if self.cluster:
                    previous, replayed = self._replay_then_switch(version)
                else:
                    previous, replayed = self._replay_and_switch(version)
            except redis.exceptions.ResponseError as exc:
                if "LOADLOST" in str(exc):
                    raise LoadError(
                        f"version {version} was not switched: its loading marker expired (a "
                        "write stalled longer than the marker time-to-live?), so appends made "
                        "meanwhile may be missing; run the load again"
                    ) from exc
                raise
        removed = self.remove_old_versions(version)
        return (previous.decode() or None), replayed, removed

    def _replay_and_switch(self, version: str) -> tuple[bytes, int]:
        """One Redis: replay in batches, then one script replays the rest and switches."""
        keys, tag = self.keys, self.keys.tag
        replayed = 0
        while True:
            count = int(
                self._drain(
                    keys=[keys.pending(version)], args=[keys.prefix, tag, version, DRAIN_BATCH]
                )
            )
            replayed += count
            if count < DRAIN_BATCH:
                break
        previous, last = self._switch(
            keys=[keys.live, keys.loading, keys.pending(version), keys.meta(version)],
            args=[keys.prefix, tag, version, int(time.time())],
        )
        return previous, replayed + int(last)

    def _replay_then_switch(self, version: str) -> tuple[bytes, int]:
        """Redis Cluster: replay the log (one-slot steps), switch only if it stayed empty."""
        keys = self.keys
        limit = int(cast(bytes, self.client.hget(keys.meta(version), "history_len")))
        replayed = 0
        for _ in range(SWITCH_ROUNDS):
            replayed += self._replay(version, limit)
            try:
                previous = self._switch_drained(
                    keys=[keys.live, keys.loading, keys.pending(version), keys.meta(version)],
                    args=[version, int(time.time())],
                )
            except redis.exceptions.ResponseError as exc:
                if str(exc).startswith("PENDING"):
                    continue  # appends arrived after the replay: replay them too
                raise
            return cast(bytes, previous), replayed
        raise LoadError(
            f"version {version} was not switched: appends kept arriving faster than "
            f"{SWITCH_ROUNDS} replays could take them; run the load again"
        )

    def _replay(self, version: str, limit: int) -> int:
        """Pop the pending log in batches and apply each entry to its history (Cluster)."""
        keys, replayed = self.keys, 0
        while True:
            entries = cast(list[bytes] | None, self.client.lpop(keys.pending(version), DRAIN_BATCH))
            if entries:
                pipe = self.client.pipeline(transaction=False)
                for entry in entries:
                    user, bucket, items = entry.split(b":", 2)
                    history = keys.bucket(version, int(bucket))
                    pipe.execute_command("EVAL", APPLY, 1, history, user, items, limit)
                pipe.execute()
                replayed += len(entries)
            if not entries or len(entries) < DRAIN_BATCH:
                return replayed

    def remove_old_versions(self, live: str) -> list[str]:
        """Delete versions older than ``live`` beyond the ``keep - 1`` newest complete ones.

        Abandoned loads (never completed) older than ``live`` go too. Newer versions are left
        alone: another load may have begun since our switch.
        """
        with translating(self.url, "removing old versions"):
            members = cast(list[bytes], self.client.zrange(self.keys.versions, 0, -1))
            registered = [int(member) for member in members]
            older = sorted((v for v in registered if v < int(live)), reverse=True)
            pipe = self.client.pipeline(transaction=False)
            for version in older:
                pipe.hget(self.keys.meta(str(version)), "state")
            states = pipe.execute()
            complete = [v for v, s in zip(older, states, strict=True) if s == b"complete"]
            kept = set(complete[: self.keep - 1])
            removed = [str(v) for v in older if v not in kept]
            for name in removed:
                self.delete_version(name)
        return removed

    def delete_version(self, version: str) -> None:
        """UNLINK every key the version can own and unregister it.

        One key per UNLINK, pipelined: on Cluster the keys live in different slots (the cluster
        pipeline sends each node its own); on one Redis it costs a few milliseconds more than
        batches of keys would, for one code path.
        """
        pipe = self.client.pipeline(transaction=False)
        for name in self.keys.version_keys(version):
            pipe.unlink(name)
        pipe.zrem(self.keys.versions, version)
        pipe.execute()

    def abort(self, version: str) -> None:
        """Best effort after a failure: release the marker, delete the partial version.

        When Redis is down this does nothing; the marker expires and the next load removes the
        partial version.
        """
        try:
            with translating(self.url, f"aborting version {version}"):
                self._release(keys=[self.keys.loading], args=[version])
                self.delete_version(version)
        except FeatureStoreError:
            pass

    # ----------------------------------------------------------------------------------------
    # Helpers

    def _meta(self, features: FeatureSet) -> dict[FieldT, EncodableT]:
        return {
            "format": LAYOUT_FORMAT,
            "buckets": USER_BUCKETS,
            "history_len": features.history_len,
            "item_vocab": features.item_vocab,
            "items": features.item_vocab - 1,
            "users": features.num_users,
            "rows": features.rows,
            "source": str(Path(features.source).resolve()),
            "created_at": int(time.time()),
            "state": "loading",
        }

    def _busy(self, message: str) -> LoadError:
        _, version, ttl_ms = message.split()[:3]
        return LoadError(
            f"another load (version {version}) is running on {redacted(self.url)}; its marker "
            f"expires in {max(0, int(ttl_ms)) / 1000:.0f} s if that loader has died"
        )

    def _bar(self, total: int, label: str) -> tqdm:
        return tqdm(total=total, desc=label, unit=" rec", disable=not self.progress, leave=True)

    def _writer(self, version: str, bar: tqdm) -> _PipelinedWriter:
        return _PipelinedWriter(self, version, bar)


class _PipelinedWriter:
    """Queues HSETs and flushes every COMMANDS_PER_FLUSH of them in one round trip.

    Each flush also refreshes the loading marker and checks it is still ours, so a loader that
    lost it (expired during a stall) stops at once instead of writing a version nobody can switch.
    """

    def __init__(self, loader: BulkLoader, version: str, bar: tqdm) -> None:
        self.loader = loader
        self.version = version
        self.bar = bar
        self.pipe = loader.client.pipeline(transaction=False)
        self.queued = 0
        self.records = 0

    def add(self, key: str, fields: list[bytes]) -> None:
        self.pipe.execute_command("HSET", key, *fields)
        self.queued += 1
        self.records += len(fields) // 2
        if self.queued == COMMANDS_PER_FLUSH:
            self.flush()

    def flush(self) -> None:
        if not self.queued:
            return
        loader = self.loader
        with translating(loader.url, f"writing version {self.version}"):
            self.pipe.execute()
            # Its own call, not in the pipeline: a cluster pipeline takes no scripts, and the
            # marker lives on another node than most of the writes anyway.
            ours = loader._refresh(
                keys=[loader.keys.loading], args=[self.version, loader.marker_ttl_ms]
            )
        if ours != 1:
            raise LoadError(
                f"version {self.version} lost its loading marker while writing (expired after "
                f"{loader.marker_ttl_ms / 1000:.0f} s without a flush, or removed); load again"
            )
        self.bar.update(self.records)
        self.queued = self.records = 0


def _timed(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def _client_url(client: SyncClient) -> str:
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()
        return f"redis://{node.host}:{node.port}/0"
    kwargs = client.connection_pool.connection_kwargs
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def load_dataset(
    url: str,
    data: Path | str,
    *,
    prefix: str,
    history_len: int,
    keep: int,
    chunk: int = DEFAULT_CHUNK,
    timeout_s: float = 60.0,
    progress: bool = False,
    tls: Mapping[str, str] | None = None,
    cluster: bool = False,
) -> LoadReport:
    """Connect and run one load (the command line's ``load``)."""
    client = connect(url, timeout_s, tls, cluster=cluster)
    try:
        loader = BulkLoader(client, prefix, url=url, keep=keep, chunk=chunk, progress=progress)
        return loader.load(data, history_len)
    finally:
        client.close()
