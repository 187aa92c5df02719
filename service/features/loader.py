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

from .client import DEFAULT_CHUNK, connect
from .errors import FeatureStoreError, LoadError, redacted, translating
from .layout import ITEM_RECORD_BYTES, LAYOUT_FORMAT, USER_BUCKETS, Keys
from .scripts import BEGIN, DRAIN, REFRESH, RELEASE, SWITCH
from .source import FeatureSet, read_feature_set

#: HSET commands per pipeline flush (about 8 MB of item records at the default chunk).
COMMANDS_PER_FLUSH = 32
#: Appends replayed per DRAIN call before the switch replays the rest.
DRAIN_BATCH = 1000
#: Keys per UNLINK when deleting a version.
UNLINK_BATCH = 512


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
        client: redis.Redis,
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
        self.keys = Keys(prefix)
        self.url = url or _client_url(client)
        self.keep = keep
        self.chunk = chunk
        self.marker_ttl_ms = max(1, int(marker_ttl_s * 1000))
        self.progress = progress
        self._begin = client.register_script(BEGIN)
        self._drain = client.register_script(DRAIN)
        self._switch = client.register_script(SWITCH)
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
                raise self._busy(str(exc)) from exc
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
        keys, tag = self.keys, self.keys.tag
        with translating(self.url, f"switching to version {version}"):
            replayed = 0
            while True:
                count = int(
                    self._drain(
                        keys=[keys.pending(version)],
                        args=[keys.prefix, tag, version, DRAIN_BATCH],
                    )
                )
                replayed += count
                if count < DRAIN_BATCH:
                    break
            try:
                previous, last = self._switch(
                    keys=[keys.live, keys.loading, keys.pending(version), keys.meta(version)],
                    args=[keys.prefix, tag, version, int(time.time())],
                )
            except redis.exceptions.ResponseError as exc:
                if "LOADLOST" in str(exc):
                    raise LoadError(
                        f"version {version} was not switched: its loading marker expired (a "
                        "write stalled longer than the marker time-to-live?), so appends made "
                        "meanwhile may be missing; run the load again"
                    ) from exc
                raise
        removed = self.remove_old_versions(version)
        return (previous.decode() or None), replayed + int(last), removed

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
        """UNLINK every key the version can own and unregister it."""
        names = self.keys.version_keys(version)
        pipe = self.client.pipeline(transaction=False)
        for low in range(0, len(names), UNLINK_BATCH):
            pipe.unlink(*names[low : low + UNLINK_BATCH])
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

    def _busy(self, message: str) -> Exception:
        if not message.startswith("LOADBUSY"):
            return redis.exceptions.ResponseError(message)
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
        keys = loader.keys
        self.pipe.eval(REFRESH, 1, keys.loading, self.version, loader.marker_ttl_ms)
        with translating(loader.url, f"writing version {self.version}"):
            replies = self.pipe.execute()
        if replies[-1] != 1:
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


def _client_url(client: redis.Redis) -> str:
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
) -> LoadReport:
    """Connect and run one load (the command line's ``load``)."""
    client = connect(url, timeout_s, tls)
    try:
        loader = BulkLoader(client, prefix, url=url, keep=keep, chunk=chunk, progress=progress)
        return loader.load(data, history_len)
    finally:
        client.close()
