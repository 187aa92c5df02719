"""Dynamic batching: requests that arrive together are scored in one model call.

One owner: a single worker task owns the queue and the model; request handlers only ``submit``
and await their own future. A batch closes when it holds ``max_candidates`` or when its oldest
request has waited ``max_wait``; the model runs one batch at a time in a worker thread (off the
event loop), so under load the next batch fills while the current one runs. The queue is bounded
in candidates: a request that does not fit is refused at once (``QueueFull``, HTTP 429). A
request whose deadline passes while queued is set aside, not scored (``DeadlineExceeded``). A
batch that fails answers every request in it with ``BatchFailed`` and the worker goes on.

The flush rule and the batch selection are pure functions, tested without a loop. This module
never imports FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.metrics import Metrics
from service.packing import ScoringInput

log = logging.getLogger(__name__)

#: Scores a batch: one array of probabilities per input, in order, and the version of the model
#: that computed them (a hot reload may swap models between two batches). Blocking; in a thread.
Infer = Callable[[Sequence[ScoringInput]], tuple[list[np.ndarray], str]]


class BatchingError(Exception):
    """Base of the errors a submitted request can end with."""


class QueueFull(BatchingError):
    """The queue holds too many candidates to admit this request: shed it (429)."""


class DeadlineExceeded(BatchingError):
    """The request's deadline passed before its batch ran (504)."""


class BatchFailed(BatchingError):
    """The model failed on this request's batch (500; the log has the cause)."""


class BatcherClosed(BatchingError):
    """The service is shutting down and accepts no new work (503)."""


@dataclass(eq=False)
class Job:
    """A queued request and the future its handler awaits."""

    item: ScoringInput
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future[Scored]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.item)


@dataclass(frozen=True, eq=False)
class Scored:
    scores: np.ndarray
    queue_s: float  # enqueued -> its batch started
    model_s: float  # its batch's packing and inference
    batch_requests: int
    batch_candidates: int
    model_version: str


def flush_delay(queued: int, oldest_age: float, max_candidates: int, max_wait: float) -> float:
    """Seconds to keep the batch open; 0 = close it now.

    Close when the queue holds a full batch or the oldest request has waited ``max_wait``.
    """
    if queued <= 0:
        raise ValueError("the flush rule needs a non-empty queue")
    if queued >= max_candidates or oldest_age >= max_wait:
        return 0.0
    return max_wait - oldest_age


def take_batch(queue: deque[Job], max_candidates: int, now: float) -> tuple[list[Job], list[Job]]:
    """Pop the next batch from the front of ``queue`` (FIFO, at most ``max_candidates``).

    Returns ``(batch, expired)``: requests past their deadline and requests whose handler gave up
    (future done) are set aside instead of scored. The first live request always fits (a request
    never exceeds ``max_candidates``: the settings enforce it).
    """
    batch: list[Job] = []
    expired: list[Job] = []
    total = 0
    while queue:
        job = queue[0]
        if job.future.done() or job.deadline <= now:
            expired.append(queue.popleft())
            continue
        if batch and total + job.size > max_candidates:
            break
        batch.append(queue.popleft())
        total += job.size
    return batch, expired


class Batcher:
    """The queue's owner. ``start()`` on the running loop, ``submit()`` from handlers."""

    def __init__(
        self,
        infer: Infer,
        *,
        max_candidates: int,
        max_wait_s: float,
        queue_max_candidates: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._infer = infer
        self.max_candidates = max_candidates
        self.max_wait_s = max_wait_s
        self.queue_max_candidates = queue_max_candidates
        self._metrics = metrics
        self._queue: deque[Job] = deque()
        self._queued = 0  # candidates in _queue
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_candidates(self) -> int:
        return self._queued

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the worker runs on (None before ``start``): where a caller in another
        thread schedules coroutines that touch the batcher or its owner."""
        return None if self._task is None else self._task.get_loop()

    def wrap_infer(self, wrap: Callable[[Infer], Infer]) -> None:
        """Score the following batches with ``wrap(current infer)``; a batch already running
        keeps the callable it started with. A seam for tests that hold or fail batches around
        the real model (the service never calls it)."""
        self._infer = wrap(self._infer)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def submit(self, item: ScoringInput, deadline: float) -> Scored:
        """Queue ``item`` and wait for its scores (or its error)."""
        if self._closing:
            raise BatcherClosed("the service is shutting down")
        size = len(item)
        if size > self.max_candidates:
            raise ValueError(f"{size} candidates exceed the batch limit {self.max_candidates}")
        if self._queued + size > self.queue_max_candidates:
            if self._metrics:
                self._metrics.shed.inc()
            raise QueueFull(
                f"{self._queued} candidates are queued; {size} more would exceed "
                f"{self.queue_max_candidates}"
            )
        job = Job(item, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued += size
        self._gauge()
        self._wake.set()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                return await asyncio.shield(job.future)
        except TimeoutError:
            job.future.cancel()  # the worker skips it if it has not started
            raise DeadlineExceeded("the request's deadline passed before it was scored") from None

    async def close(self) -> None:
        """Stop accepting; score what is queued; stop the worker and its thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill()
            batch, expired = take_batch(self._queue, self.max_candidates, time.monotonic())
            for job in (*batch, *expired):
                self._queued -= job.size
            self._gauge()
            for job in expired:
                if not job.future.done():
                    job.future.set_exception(DeadlineExceeded("deadline passed in the queue"))
            if batch:
                await self._score(batch)

    async def _fill(self) -> None:
        """Wait until the flush rule closes the batch (a full batch or the oldest waited)."""
        while not self._closing:
            age = time.monotonic() - self._queue[0].enqueued
            delay = flush_delay(self._queued, age, self.max_candidates, self.max_wait_s)
            if delay <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _score(self, batch: list[Job]) -> None:
        started = time.monotonic()
        candidates = sum(job.size for job in batch)
        loop = asyncio.get_running_loop()
        try:
            results, version = await loop.run_in_executor(
                self._executor, self._infer, [job.item for job in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:
            log.exception("model batch of %d requests failed", len(batch))
            if self._metrics:
                self._metrics.batch_failures.inc()
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(BatchFailed(f"model inference failed: {exc!r}"))
            return
        finished = time.monotonic()
        self.batches += 1
        if self._metrics:
            self._metrics.batch_candidates.observe(candidates)
            self._metrics.batch_requests.observe(len(batch))
            self._metrics.candidates.inc(candidates)
        for job, scores in zip(batch, results, strict=True):
            if not job.future.done():
                queued = started - job.enqueued
                job.future.set_result(
                    Scored(scores, queued, finished - started, len(batch), candidates, version)
                )

    def _gauge(self) -> None:
        if self._metrics:
            self._metrics.queue_requests.set(len(self._queue))
            self._metrics.queue_candidates.set(self._queued)
