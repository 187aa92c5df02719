"""An open-loop sender of ``POST /score`` requests for tests: a fixed arrival rate, whatever the
answers do, in a thread with its own event loop, every answer recorded.

Request i is sent at ``t0 + i / rate`` whether or not earlier ones were answered, so an outage
shows as the answers it really gets (errors, or requests still waiting), not as a sender that
slowed down with the server. The benchmarks use ``bench.loadgen`` in its own process; a test needs
the per-request outcome next to its own actions (a node killed at a known time), so this runs in
the test process, at rates a busy two-core machine sustains.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Answer:
    """One request's outcome: ``status`` 0 when no HTTP answer came (a transport error)."""

    sent_at: float  # time.monotonic() when it was due (and sent)
    latency_s: float
    status: int
    user_id: int
    error: str | None  # the body's "error" code, or the transport error's type
    retry_after: str | None
    model_version: str | None


@dataclass
class OpenLoop:
    """Sends ``body(i)`` to ``url`` at ``rate`` per second from ``start()`` until ``stop()``."""

    url: str
    body: Callable[[int], dict[str, Any]]
    rate: float = 40.0
    timeout_s: float = 30.0
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="open-loop", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> OpenLoop:
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        """Stop sending, wait for every request already sent to be answered; the answers."""
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 30)
        if self._thread.is_alive():
            raise RuntimeError("the open-loop sender did not finish")
        return self.snapshot()

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return sorted(self.answers, key=lambda a: a.sent_at)

    def _run(self) -> None:
        asyncio.run(self._send_all())

    async def _send_all(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            index = 0
            while not self._stop.is_set():
                due = started + index / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._send(client, index, time.monotonic()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
                self.sent = index
            if tasks:
                await asyncio.gather(*tasks)

    async def _send(self, client: httpx.AsyncClient, index: int, sent_at: float) -> None:
        body = self.body(index)
        try:
            response = await client.post(f"{self.url}/score", json=body)
            payload = response.json()
            error = payload.get("error") if response.status_code != 200 else None
            answer = Answer(
                sent_at,
                time.monotonic() - sent_at,
                response.status_code,
                int(body["user_id"]),
                error,
                response.headers.get("retry-after"),
                payload.get("model_version") if response.status_code == 200 else None,
            )
        except (httpx.HTTPError, ValueError) as exc:
            answer = Answer(
                sent_at, time.monotonic() - sent_at, 0, int(body["user_id"]), type(exc).__name__,
                None, None,
            )  # fmt: skip
        with self._lock:
            self.answers.append(answer)

    def answered(self) -> int:
        with self._lock:
            return len(self.answers)
