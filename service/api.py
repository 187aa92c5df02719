"""The HTTP layer: routes, the one mapping from domain errors to statuses, the app factory.

Routes stay short: parse (pydantic), call the engine, answer. Every failure the engine can raise
is mapped in ``ERRORS`` to a status and a stable error code; the body carries a short message and
never a trace (the log has it). ``/score`` responses are serialised directly (``json.dumps`` of a
list) rather than through FastAPI's encoder: a few hundred floats per request add up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr

from service.batching import BatcherClosed, BatchFailed, DeadlineExceeded, QueueFull
from service.engine import Engine, NotReady
from service.features import (
    CorruptRecord,
    FeatureStoreError,
    NoLiveVersion,
    StoreTimeout,
    StoreUnavailable,
)
from service.metrics import CONTENT_TYPE, Metrics
from service.runtime import ModelError, ModelRunner
from service.schemas import (
    ErrorResponse,
    ReloadRequest,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings

log = logging.getLogger(__name__)

#: Domain error -> (status, code, public message or None to use the exception's own).
#: Order matters: the first matching class wins (subclasses before their bases).
ERRORS: list[tuple[type[Exception], int, str, str | None]] = [
    (QueueFull, 429, "queue_full", "the service is at capacity; retry shortly"),
    (DeadlineExceeded, 504, "deadline_exceeded", "not scored within REQUEST_TIMEOUT_S"),
    (StoreTimeout, 504, "feature_store_timeout", "the feature store did not answer in time"),
    (StoreUnavailable, 503, "feature_store_unavailable", "the feature store is unreachable"),
    (NoLiveVersion, 503, "no_features", "no feature set is loaded in the feature store"),
    (NotReady, 503, "not_ready", "the model is not loaded yet"),
    (BatcherClosed, 503, "shutting_down", "the service is shutting down"),
    (BatchFailed, 500, "inference_failed", "model inference failed"),
    (CorruptRecord, 500, "corrupt_features", "the feature store holds an unreadable record"),
    (FeatureStoreError, 500, "feature_store_error", "the feature store failed"),
]
RETRY_AFTER = {429: "1", 503: "1"}


def _documented_errors() -> dict[int | str, dict[str, Any]]:
    """OpenAPI: each error status with the codes it can carry."""
    codes: dict[int, list[str]] = {}
    for _, status, code, _ in ERRORS:
        codes.setdefault(status, []).append(code)
    return {
        status: {"model": ErrorResponse, "description": "error: " + ", ".join(names)}
        for status, names in sorted(codes.items())
    }


def error_response(exc: Exception) -> JSONResponse:
    """The one place a domain error becomes an HTTP answer."""
    for kind, status, code, message in ERRORS:
        if isinstance(exc, kind):
            headers = {"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else None
            return JSONResponse(
                {"detail": message or str(exc), "error": code}, status, headers=headers
            )
    log.exception("unexpected error while scoring", exc_info=exc)
    return JSONResponse({"detail": "internal error", "error": "internal"}, 500)


def too_long(field: str, count: int, limit: int, setting: str) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "too_long",
                "loc": ("body", field),
                "msg": f"{count} ids given, at most {limit} allowed ({setting})",
                "input": None,
            }
        ]
    )


def create_app(settings: Settings, runner: ModelRunner | None = None) -> FastAPI:
    """The service as an ASGI app. The model is loaded (unless given) and warmed at start-up."""
    metrics = Metrics()
    engine = Engine(settings, metrics, runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        hangup = _reload_on_sighup(engine)
        try:
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await engine.stop()

    app = FastAPI(
        title="QIN CTR scoring service",
        summary="Click probabilities for a user's candidate items, from the Quadratic Interest "
        "Network on onnxruntime, with features from Redis.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    score_key = Depends(_key_checker(settings.api_key, "API_KEY"))
    admin_key = Depends(_key_checker(settings.admin_api_key, "ADMIN_API_KEY", required=True))
    app.state.engine = engine
    app.state.metrics = metrics
    limiter = AdaptiveLimit(settings.max_in_flight, settings.admission_latency_ms / 1000)
    app.add_middleware(_ScoreAdmission, metrics=metrics, limiter=limiter)

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses=_documented_errors(),
        summary="Score a user's candidates",
        dependencies=[score_key],
    )
    async def score(body: ScoreRequest) -> Response:
        arrived = time.monotonic()
        if len(body.item_ids) > settings.max_candidates:
            limit = settings.max_candidates
            raise too_long("item_ids", len(body.item_ids), limit, "MAX_CANDIDATES")
        if body.history is not None and len(body.history) > settings.max_history:
            raise too_long("history", len(body.history), settings.max_history, "MAX_HISTORY")
        try:
            result = await engine.score(
                body.user_id,
                body.item_ids,
                likes_level=body.likes_level,
                views_level=body.views_level,
                history=body.history,
                arrived=arrived,
            )
        except Exception as exc:
            return error_response(exc)
        payload = {
            "scores": result.scores.tolist(),
            "model_version": result.model_version,
            "feature_version": result.feature_version,
            "history_source": result.history_source,
            "history_length": result.history_length,
            "degraded": result.degraded,
        }
        return Response(json.dumps(payload), media_type="application/json")

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses={403: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
        summary="Load a model file, validate it and swap it in (the old one serves until then)",
        dependencies=[admin_key],
    )
    async def reload(body: ReloadRequest | None = None) -> JSONResponse:
        path = Path(body.model_path) if body and body.model_path else None
        try:
            old, new = await engine.reload(path)
        except ModelError as exc:
            return JSONResponse({"detail": str(exc), "error": "model_refused"}, 422)
        except NotReady as exc:
            return error_response(exc)
        return JSONResponse(
            {
                "model_version": new.version,
                "previous_version": old.version,
                "provider": new.provider,
                "model_path": str(new.path),
            }
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and warmed, Redis answers")
    async def readyz() -> JSONResponse:
        ready, report = await engine.readiness()
        return JSONResponse(report, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _key_checker(
    secret: SecretStr | None, setting: str, required: bool = False
) -> Callable[[Request], Awaitable[None]]:
    """A dependency that checks ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (constant
    time). Without a configured key the route is open, or refused when ``required``."""
    expected = secret.get_secret_value().encode() if secret else None

    async def check(request: Request) -> None:  # async: a plain def would run in a thread
        if expected is None:
            if required:
                raise HTTPException(403, f"disabled: set {setting} to enable")
            return
        given = request.headers.get("x-api-key", "")
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(
                401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


def _reload_on_sighup(engine: Engine) -> bool:
    """SIGHUP reloads MODEL_PATH (as POST /admin/reload does). Only the main thread of a
    process can own signals: an app run in a thread (tests) has no handler."""
    loop = asyncio.get_running_loop()

    def hangup() -> None:
        task = loop.create_task(engine.reload())
        task.add_done_callback(_log_reload)

    try:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def _log_reload(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("SIGHUP reload failed: %s", task.exception())


class AdaptiveLimit:
    """How many /score requests may be in flight: fixed at ``ceiling``, or, with a latency
    ``target`` (seconds), adapted by AIMD so answers stay under it: multiplied by 0.9 at most
    once per ``backoff_s`` when an answer was slower, else grown by ``1/limit`` per fast answer
    (about one per round of requests). Pure arithmetic on a float, unit-tested."""

    def __init__(
        self, ceiling: int, target: float = 0.0, floor: int = 2, backoff_s: float = 0.1
    ) -> None:
        self.ceiling, self.target, self.floor, self.backoff_s = ceiling, target, floor, backoff_s
        self.value = float(ceiling)
        self._last_cut = -1e9

    @property
    def limit(self) -> int:
        return int(self.value)

    def observe(self, latency: float, now: float) -> None:
        if self.target <= 0:
            return
        if latency > self.target:
            if now - self._last_cut >= self.backoff_s:
                self.value = max(float(self.floor), self.value * 0.9)
                self._last_cut = now
        else:
            self.value = min(float(self.ceiling), self.value + 1.0 / self.value)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _ScoreAdmission:
    """Pure ASGI middleware around ``/score``: admission (at most ``limiter.limit`` requests in
    flight; one more gets 429 before anything else is done for it), then the latency and the
    status of every answer, 422s included. (Starlette's BaseHTTPMiddleware would add a task and a
    stream per request.)
    """

    OVERLOADED = json.dumps(
        {"detail": "too many requests in flight; retry shortly", "error": "overloaded"}
    ).encode()

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        metrics: Metrics,
        limiter: AdaptiveLimit,
    ):
        self.app = app
        self.metrics = metrics
        self.limiter = limiter
        self.in_flight = 0
        self._by_status: dict[int, Any] = {}  # counter children, looked up once per status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/score":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        if self.in_flight >= self.limiter.limit:
            await self._shed(send)
            self.metrics.shed.inc()
            self._count(429)
            self.metrics.request_seconds.observe(time.monotonic() - started)
            return
        self.in_flight += 1
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.in_flight -= 1
            finished = time.monotonic()
            self.limiter.observe(finished - started, finished)
            self._count(status)
            self.metrics.request_seconds.observe(finished - started)

    def _count(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.requests.labels(status=str(status))
        child.inc()

    async def _shed(self, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.OVERLOADED)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": self.OVERLOADED})
