"""The HTTP layer: routes, the one mapping from domain errors to statuses, the app factory.

Routes stay short: parse (pydantic), call the engine, answer. Every failure the engine can raise
is mapped in ``ERRORS`` to a status and a stable error code; the body carries a short message and
never a trace (the log has it). ``/score`` responses are serialised directly (``json.dumps`` of a
list) rather than through FastAPI's encoder: a few hundred floats per request add up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

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
from service.runtime import ModelRunner
from service.schemas import ErrorResponse, ScoreRequest, ScoreResponse
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
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="QIN CTR scoring service",
        summary="Click probabilities for a user's candidate items, from the Quadratic Interest "
        "Network on onnxruntime, with features from Redis.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.add_middleware(_CountScoreRequests, metrics=metrics)

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses=_documented_errors(),
        summary="Score a user's candidates",
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
        }
        return Response(json.dumps(payload), media_type="application/json")

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


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _CountScoreRequests:
    """Pure ASGI middleware: the latency and the status of every ``/score`` answer, 422s included.

    (Starlette's BaseHTTPMiddleware would add a task and a stream per request.)
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/score":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(status=str(status)).inc()
            self.metrics.request_seconds.observe(time.monotonic() - started)
