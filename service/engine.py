"""The scoring engine: feature store + batcher + model, without any HTTP.

``Engine.score`` is one request's path: read its features from Redis (one round trip when warm),
queue it for the model, await its own scores. The HTTP layer (api.py) only parses, calls this
and maps the domain errors to statuses. Start-up loads and warms the model in a thread while the
server already answers ``/healthz`` and a 503 ``/readyz``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.schema import ITEM_VECTOR_DIM, TAGS_PER_ITEM
from service.batching import Batcher, DeadlineExceeded, Scored
from service.features import (
    FeatureStore,
    FeatureStoreError,
    HistorySource,
    ItemFeatures,
    StoreTimeout,
    StoreUnavailable,
)
from service.metrics import Metrics
from service.packing import PackedBatch, ScoringInput, buckets_up_to, pack
from service.runtime import CUDA, ModelError, ModelInfo, ModelRunner
from service.settings import Settings

log = logging.getLogger(__name__)

#: A reloaded file with the serving model's version must match it this closely on a sample.
SAME_VERSION_TOLERANCE = 1e-6
#: How long a readiness probe waits for Redis.
READY_PROBE_TIMEOUT_S = 0.5


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock (uvloop's differs)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


class NotReady(Exception):
    """The model is not loaded and warmed yet (503)."""


@dataclass(frozen=True)
class ScoreResult:
    scores: np.ndarray
    model_version: str
    feature_version: str
    history_source: HistorySource
    history_length: int
    degraded: bool = False


class Engine:
    """Owns the model runner, the batcher and the feature store of one service process."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        runner: ModelRunner | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runner = runner
        self.store = store or FeatureStore.from_settings(settings)
        self.batcher: Batcher | None = None
        self.warmed = False
        self.load_error: str | None = None
        #: Set on SIGTERM: /readyz answers 503 so that balancers stop routing here; /score serves.
        self.draining = False
        self._reload_lock = asyncio.Lock()
        metrics.observe_store(lambda: self.store.stats)

    # ----------------------------------------------------------------------------------------
    # Life cycle

    async def start(self) -> None:
        """Load (unless given) and warm the model, then start batching. Errors are kept, not
        raised: the process stays up and ``/readyz`` says what failed."""
        try:
            runner = self.runner
            if runner is None:
                settings = self.settings
                runner = await asyncio.to_thread(
                    ModelRunner,
                    settings.model_path,
                    settings.provider,
                    settings.intra_op_threads,
                    settings.ort_spinning,
                )
            await asyncio.to_thread(self._warm_up, runner)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("the model cannot be served: %s", exc)
            return
        self.runner = runner
        info = runner.info
        self.metrics.set_model(info.version, info.graph, info.provider)
        self.batcher = Batcher(
            self._infer,
            max_candidates=self.settings.batch_max_candidates,
            max_wait_s=self.settings.batch_max_wait_ms / 1000,
            queue_max_candidates=self.settings.queue_max_candidates,
            metrics=self.metrics,
        )
        self.batcher.start()
        # Everything allocated so far (the app, onnxruntime's Python objects, caches) lives as
        # long as the process: move it out of the collector's sight so full collections under
        # load stay short (they otherwise scan it all, a p99 spike each time).
        gc.collect()
        gc.freeze()
        self.warmed = True
        log.info("serving model %s on %s", info.version, info.provider)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        await self.store.aclose()

    async def reload(self, path: Path | None = None) -> tuple[ModelInfo, ModelInfo]:
        """Load ``path`` (default MODEL_PATH, read again), validate it, swap it in.

        Validation before the swap: the file loads, is a parity-checked serving graph this
        service can feed, warms on every bucket with finite scores, and scores a sample batch
        finitely. Any failure raises ModelError and leaves the serving model untouched. The swap
        is one assignment between batches: a batch runs wholly on the old or the new model, and
        each answer names the version that scored it. Returns (old, new).
        """
        async with self._reload_lock:
            old = self.runner
            if old is None or self.batcher is None:
                raise NotReady(self.load_error or "the model is still loading")
            settings = self.settings
            target = Path(path) if path is not None else settings.model_path
            try:
                new = await asyncio.to_thread(
                    ModelRunner,
                    target,
                    settings.provider,
                    settings.intra_op_threads,
                    settings.ort_spinning,
                )
                await asyncio.to_thread(self._validate, new)
            except Exception as exc:
                self.metrics.reloads.labels(outcome="refused").inc()
                log.error("model reload refused, still serving %s: %s", old.info.version, exc)
                if isinstance(exc, ModelError):
                    raise
                raise ModelError(f"{target}: {exc}") from exc
            self.runner = new
            info = new.info
            self.metrics.set_model(info.version, info.graph, info.provider)
            self.metrics.reloads.labels(outcome="swapped").inc()
            log.info("model %s replaced by %s (%s)", old.info.version, info.version, target)
            return old.info, info

    def _validate(self, runner: ModelRunner) -> None:
        parity = runner.metadata.get("parity")
        if not isinstance(parity, dict) or parity.get("passed") is not True:
            raise ModelError(
                f"{runner.info.path}: no passed parity check in its metadata (export it with "
                "python -m export, which verifies it against PyTorch)"
            )
        if runner.schema["history_len"] != self._history_len:
            raise ModelError(
                f"{runner.info.path}: reads {runner.schema['history_len']} history items; the "
                f"serving model reads {self._history_len}"
            )
        self._warm_up(runner)
        sample = _sample_batch(self._history_len)
        scores = runner.run(sample.feeds)
        if not (np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()):
            raise ModelError(f"{runner.info.path}: scores outside [0, 1] on a sample batch")
        current = self.runner
        if current is not None and current.info.version == runner.info.version:
            # the same model again (a re-export, a copy): it must score like the one serving
            difference = float(np.abs(current.run(sample.feeds) - scores).max())
            if difference > SAME_VERSION_TOLERANCE:
                raise ModelError(
                    f"{runner.info.path}: claims version {runner.info.version} but differs from "
                    f"the serving copy by {difference:.2g} on a sample batch"
                )

    @property
    def _history_len(self) -> int:
        assert self.runner is not None
        return int(self.runner.schema["history_len"])

    @property
    def _degrade(self) -> bool:
        return self.settings.degraded_mode == "empty_history"

    @property
    def pad(self) -> bool:
        mode = self.settings.batch_pad
        on_cuda = self.runner is not None and self.runner.info.provider == CUDA
        return mode == "always" or (mode == "auto" and on_cuda)

    def _warm_up(self, runner: ModelRunner) -> None:
        """Run every batch bucket once, so no request pays for a first-shape allocation."""
        check_schema(runner)
        length = runner.schema["history_len"]
        for size in buckets_up_to(self.settings.batch_max_candidates):
            item = ScoringInput(history=_dummy_items(length), candidates=_dummy_items(size))
            packed = pack([item], length)
            scores = runner.run(packed.feeds)
            if scores.shape != (size,) or not np.isfinite(scores).all():
                raise ModelError(f"{runner.info.path}: bad scores at warm-up ({size} candidates)")

    def _infer(self, items: Sequence[ScoringInput]) -> tuple[list[np.ndarray], str]:
        runner = self.runner  # read once: a reload swaps it between batches, never within one
        assert runner is not None
        packed = pack(items, runner.schema["history_len"], pad=self.pad)
        return packed.split(runner.run(packed.feeds)), runner.info.version

    # ----------------------------------------------------------------------------------------
    # Requests

    async def score(
        self,
        user_id: int,
        item_ids: Sequence[int],
        *,
        likes_level: Sequence[int] | None = None,
        views_level: Sequence[int] | None = None,
        history: Sequence[int] | None = None,
        arrived: float | None = None,
    ) -> ScoreResult:
        arrived = time.monotonic() if arrived is None else arrived
        deadline = arrived + self.settings.request_timeout_s
        if self.batcher is None or self.runner is None:
            raise NotReady(self.load_error or "the model is still loading")
        override = None if history is None else np.asarray(history, np.int64)
        degraded = False
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                features = await self.store.fetch(user_id, np.asarray(item_ids, np.int64), override)
        except TimeoutError:
            self.metrics.deadline_exceeded.labels(stage="redis").inc()
            raise StoreTimeout("the feature store did not answer before the deadline") from None
        except FeatureStoreError as exc:
            self.metrics.feature_errors.labels(kind=type(exc).__name__).inc()
            if not (self._degrade and isinstance(exc, StoreUnavailable | StoreTimeout)):
                raise
            self.metrics.degraded.inc()
            features = self.store.cached(item_ids, override)
            degraded = True
        fetched = time.monotonic()
        item = ScoringInput(
            features.history,
            features.candidates,
            None if likes_level is None else np.asarray(likes_level, np.int64),
            None if views_level is None else np.asarray(views_level, np.int64),
        )
        try:
            scored: Scored = await self.batcher.submit(item, deadline)
        except DeadlineExceeded:
            self.metrics.deadline_exceeded.labels(stage="queue").inc()
            raise
        stages = self.metrics.stages
        stages["redis"].observe(fetched - arrived)
        stages["queue"].observe(scored.queue_s)
        stages["model"].observe(scored.model_s)
        stages["total"].observe(time.monotonic() - arrived)
        return ScoreResult(
            scored.scores,
            scored.model_version,
            features.version,
            features.history_source,
            int((features.history.ids > 0).sum()),
            degraded,
        )

    # ----------------------------------------------------------------------------------------
    # Readiness

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = model loaded and warmed, and Redis answers with a live feature version."""
        runner = self.runner
        if self.draining:
            self.metrics.ready.set(0)
            return False, {"ready": False, "draining": True}
        model: dict[str, Any] = {"loaded": runner is not None, "warmed": self.warmed}
        if runner is not None:
            info = runner.info
            model.update(version=info.version, graph=info.graph, provider=info.provider)
        if self.load_error:
            model["error"] = self.load_error
        redis: dict[str, Any] = {"ok": False, "feature_version": None}
        try:
            live = await asyncio.wait_for(self.store.live_version(), READY_PROBE_TIMEOUT_S)
            redis.update(ok=live is not None, feature_version=live)
            if live is None:
                redis["error"] = "no live feature version: run python -m service.features load"
        except TimeoutError:
            redis["error"] = "Redis did not answer in time"
        except FeatureStoreError as exc:
            redis["error"] = str(exc)
        ready = self.warmed and redis["ok"]
        self.metrics.ready.set(1 if ready else 0)
        return ready, {"ready": ready, "model": model, "redis": redis}


def _sample_batch(history_len: int) -> PackedBatch:
    """Four users with histories of 0, 1, half and full length, 1 to 40 candidates each."""
    rng = np.random.default_rng(0)
    inputs = []
    for user, (length, count) in enumerate(
        [(0, 1), (1, 7), (history_len // 2, 40), (history_len, 20)]
    ):
        history, candidates = _dummy_items(length), _dummy_items(count)
        for items in (history, candidates):
            items.vectors[:] = rng.standard_normal(items.vectors.shape) * 0.06
            items.likes[:] = rng.integers(0, 11, len(items))
            items.ids[:] += user * 100
        inputs.append(ScoringInput(history, candidates))
    return pack(inputs, history_len)


def _dummy_items(count: int) -> ItemFeatures:
    items = ItemFeatures.zeros(count)
    items.ids[:] = np.arange(1, count + 1)
    items.tags[:, 0] = 1
    items.vectors[:] = 0.01
    return items


def check_schema(runner: ModelRunner) -> None:
    """The model must read items as the feature store stores them (5 tags, 128-d vectors)."""
    schema = runner.schema
    if schema["tags_per_item"] != TAGS_PER_ITEM or schema["item_vector_dim"] != ITEM_VECTOR_DIM:
        raise ModelError(
            f"{runner.info.path}: the model reads {schema['tags_per_item']} tags and "
            f"{schema['item_vector_dim']}-d vectors per item; the feature store holds "
            f"{TAGS_PER_ITEM} and {ITEM_VECTOR_DIM}"
        )
