"""Waiting for a condition instead of sleeping for a time.

A test that needs things to happen in an order waits until the state it needs is observable (a
queue depth, a counter, a metric, a server state), never for a fixed time: on a busy machine a
fixed sleep is sometimes too short, and on an idle one always too long. The timeout only bounds a
hang; a condition that is never reached fails with what was awaited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: Polling interval: short against any timeout, long enough not to starve a busy machine.
POLL_S = 0.005


class ConditionTimeout(AssertionError):
    """The awaited condition did not hold within the timeout."""


def _failed(what: str, timeout: float, last: object) -> ConditionTimeout:
    seen = "" if last is None or isinstance(last, bool) else f" (last seen: {last!r})"
    return ConditionTimeout(f"timed out after {timeout:g} s waiting for {what}{seen}")


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    what: str = "the condition",
    poll: float = POLL_S,
) -> object:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Raises ``ConditionTimeout`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failed(what, timeout, value)
        time.sleep(poll)


async def wait_until_async(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 30.0,
    what: str = "the condition",
    poll: float = POLL_S,
) -> object:
    """``wait_until`` for a running event loop: polls without blocking it. ``predicate`` may be
    a plain function or return an awaitable (a coroutine that reads the state over HTTP)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failed(what, timeout, value)
        await asyncio.sleep(poll)
