"""``POST /score`` as one plain ASGI callable: the request path with nothing on it but the work.

Why not a FastAPI route: on the 2-core reference machine the route stack (seven middleware layers,
routing, dependency solving, a JSON parse into Python objects and then a validation pass) cost
about a fifth of the event loop's time per request, and the event loop is one of the two cores.
Here a request is: admission (429 before anything else), the API key (401), the body with its
size limit (413), one ``ScoreRequest.model_validate_json`` (pydantic-core parses and validates
in one pass; 422s look exactly like FastAPI's: ``{"detail": [{"type", "loc": ["body", ...],
"msg", "input"}]}``), the engine, and the answer's bytes. Every outcome is counted by status and
timed. The route is still described in the OpenAPI schema (``api._documented_score_route``), from
the same request and response models.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from pydantic import SecretStr, ValidationError

from service.engine import Engine
from service.metrics import Metrics
from service.schemas import ScoreRequest

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ErrorMapper = Callable[[Exception], tuple[int, dict[str, Any], dict[str, str]]]

PATH = "/score"
_JSON = (b"content-type", b"application/json")


class AdaptiveLimit:
    """How many /score requests may be in flight: fixed at ``ceiling``, or, with a latency
    ``target`` (seconds), adapted so that the ``quantile`` of answer times stays under it.

    Answers are judged in rounds of ``max(limit, min_round)``:

    * more than ``1 - quantile`` of the round's answers slower than the target: cut by half the
      share of slow answers (a round of only slow answers halves it), never below ``floor``;
    * else, if the limit turned a request away during the round: raise by one;
    * else the limit was not what bounded the load, and it only shrinks towards the load: to
      at most twice the round's peak concurrency, but not below ``spare``. An untested limit
      only lets a surge in: at 3x overload after a calm spell, a limit left at the ceiling
      admitted 128 requests at once (batches of 20 users, +130 MiB of buffers, a second of slow
      answers before the cuts caught up).

    Why rounds: a cut per time window against a raise per fast answer settles where nearly every
    answer is slow (at 900 answers/s, one 10% cut per 100 ms outweighs the raises only once
    ~93% of answers miss the target); one decision per round settles where the quantile sits at
    the target. Pure arithmetic, unit-tested."""

    def __init__(
        self,
        ceiling: int,
        target: float = 0.0,
        *,
        floor: int = 2,
        spare: int = 16,
        quantile: float = 0.9,
        min_round: int = 20,
    ) -> None:
        self.ceiling, self.target = ceiling, target
        self.floor, self.spare = min(floor, ceiling), min(spare, ceiling)
        self.quantile, self.min_round = quantile, min_round
        self._slow_allowed = round(1.0 - quantile, 9)  # 1 - 0.9 is 0.0999...98 in floats
        self.value = float(ceiling)
        self._answers = 0
        self._slow = 0
        self._peak = 0
        self._refused = False

    @property
    def limit(self) -> int:
        return int(self.value)

    def refused(self) -> None:
        """A request was turned away because the limit was reached."""
        self._refused = True

    def observe(self, latency: float, concurrency: int) -> None:
        """An admitted request was answered after ``latency`` seconds, with ``concurrency``
        requests (itself included) in flight."""
        if self.target <= 0:
            return
        self._answers += 1
        self._slow += latency > self.target
        self._peak = max(self._peak, concurrency)
        if self._answers < max(self.limit, self.min_round):
            return
        slow_share = self._slow / self._answers
        if slow_share > self._slow_allowed:
            self.value = max(float(self.floor), self.value * (1.0 - slow_share / 2))
        elif self._refused:
            self.value = min(float(self.ceiling), self.value + 1.0)
        else:
            self.value = min(self.value, max(float(self.spare), 2.0 * self._peak))
        self._answers = self._slow = self._peak = 0
        self._refused = False


class _Refused(Exception):
    """An answer decided before the engine is called (401, 405, 413, 422)."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A 422 body shaped like FastAPI's: every error located under ``body``. Malformed JSON has
    the raw body as its input: it is shown as text (undecodable bytes as U+FFFD), not as the
    ``b'...'`` repr of Python bytes."""
    return {
        "detail": [
            {
                "type": error["type"],
                "loc": ["body", *error["loc"]],
                "msg": error["msg"],
                "input": _as_text(error.get("input")),
                **({"ctx": error["ctx"]} if "ctx" in error else {}),
            }
            for error in errors
        ]
    }


def _as_text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def key_matches(headers: Mapping[bytes, bytes], expected: bytes) -> bool:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (raw ASGI headers, lower-case names)
    equals ``expected``, compared in constant time. Used by /score and the admin endpoints."""
    given = headers.get(b"x-api-key", b"")
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        given = authorization[7:].strip()
    return hmac.compare_digest(given, expected)


def too_long(field: str, count: int, limit: int, setting: str) -> _Refused:
    error = {
        "type": "too_long",
        "loc": (field,),
        "msg": f"{count} ids given, at most {limit} allowed ({setting})",
        "input": None,
    }
    return _Refused(422, validation_errors([error]))


class ScoreEndpoint:
    """The ASGI callable that answers every request to ``/score``."""

    OVERLOADED = json.dumps(
        {"detail": "too many requests in flight; retry shortly", "error": "overloaded"}
    ).encode()

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        limiter: AdaptiveLimit,
        errors: ErrorMapper,
        *,
        api_key: SecretStr | None,
        max_body_bytes: int,
        max_candidates: int,
        max_history: int,
    ) -> None:
        self.engine, self.metrics, self.limiter, self.errors = engine, metrics, limiter, errors
        self._key = api_key.get_secret_value().encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.max_candidates = max_candidates
        self.max_history = max_history
        self.in_flight = 0
        self._by_status: dict[int, Any] = {}  # counter children, looked up once per status
        metrics.in_flight.set_function(lambda: self.in_flight)  # read when scraped: no cost here
        metrics.in_flight_limit.set_function(lambda: self.limiter.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        if self.in_flight >= self.limiter.limit:
            await _answer(send, 429, self.OVERLOADED, {"retry-after": "1"})
            self.metrics.shed.inc()
            self.limiter.refused()
            self._done(429, started)
            return
        self.in_flight += 1
        status = 500
        try:
            status, body, headers = await self._handle(scope, receive)
        except Exception:  # the last line of defence: a 500 without internals, and a log line
            log.exception("unexpected error while answering /score")
            status, body, headers = 500, {"detail": "internal error", "error": "internal"}, {}
        finally:
            concurrency = self.in_flight
            self.in_flight -= 1
        try:
            await _answer(send, status, _dumps(body), headers)
        finally:
            self._done(status, started, concurrency)

    async def _handle(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            request = await self._parse(scope, receive)
        except _Refused as refused:
            return refused.status, refused.body, refused.headers
        try:
            result = await self.engine.score(
                request.user_id,
                request.item_ids,
                likes_level=request.likes_level,
                views_level=request.views_level,
                history=request.history,
                arrived=time.monotonic(),  # the deadline counts from a whole, valid request
            )
        except Exception as exc:
            return self.errors(exc)
        return (
            200,
            {
                "scores": result.scores.tolist(),
                "model_version": result.model_version,
                "feature_version": result.feature_version,
                "history_source": result.history_source,
                "history_length": result.history_length,
                "degraded": result.degraded,
            },
            {},
        )

    async def _parse(self, scope: Scope, receive: Receive) -> ScoreRequest:
        if scope["method"] != "POST":
            raise _Refused(405, {"detail": "Method Not Allowed"}, {"allow": "POST"})
        headers = dict(scope["headers"])
        self._check_key(headers)
        body = await self._body(headers, receive)
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if not (kind == b"application/json" or kind.endswith(b"+json")):
            error = {
                "type": "content_type",
                "loc": (),
                "msg": f"expected an application/json body, got {kind.decode('latin-1')!r}",
                "input": None,
            }
            raise _Refused(422, validation_errors([error]))
        try:
            request = ScoreRequest.model_validate_json(body)
        except ValidationError as exc:
            raise _Refused(422, validation_errors(exc.errors(include_url=False))) from None
        if len(request.item_ids) > self.max_candidates:
            count, limit = len(request.item_ids), self.max_candidates
            raise too_long("item_ids", count, limit, "MAX_CANDIDATES")
        if request.history is not None and len(request.history) > self.max_history:
            raise too_long("history", len(request.history), self.max_history, "MAX_HISTORY")
        return request

    def _check_key(self, headers: Mapping[bytes, bytes]) -> None:
        if self._key is not None and not key_matches(headers, self._key):
            raise _Refused(
                401, {"detail": "missing or wrong API key"}, {"www-authenticate": "Bearer"}
            )

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        """The whole body, refused with 413 as soon as it is known to pass the limit."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(499, {"detail": "client closed the connection"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    def _too_large(self) -> _Refused:
        limit = self.max_body_bytes
        return _Refused(413, {"detail": f"body larger than {limit} bytes (MAX_BODY_BYTES)"})

    def _done(self, status: int, started: float, concurrency: int = 0) -> None:
        """Count and time an answer; ``concurrency`` > 0 marks an admitted one, which the
        limiter learns from."""
        finished = time.monotonic()
        if concurrency:
            self.limiter.observe(finished - started, concurrency)
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.requests.labels(status=str(status))
        child.inc()
        self.metrics.request_seconds.observe(finished - started)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, default=str).encode()


async def _answer(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [_JSON, (b"content-length", str(len(body)).encode())]
    raw += [(name.encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
