"""The HTTP layer: routes, the one mapping from domain errors to statuses, the app factory.

Routes stay short: parse (pydantic), call the engine, answer. Every failure the engine can raise
is mapped in ``ERRORS`` to a status and a stable error code; the body carries a short message and
never a trace (the log has it). ``/score``, the hot path, is answered by a plain ASGI callable
(:mod:`service.score_endpoint`) ahead of FastAPI's stack; FastAPI serves everything else and
documents ``/score`` in the OpenAPI schema from the same models.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from starlette.routing import BaseRoute

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
from service.score_endpoint import PATH as SCORE_PATH
from service.score_endpoint import (
    AdaptiveLimit,
    Receive,
    Scope,
    ScoreEndpoint,
    Send,
    key_matches,
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


def error_answer(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The one place a domain error becomes an HTTP answer: (status, body, headers)."""
    for kind, status, code, message in ERRORS:
        if isinstance(exc, kind):
            headers = {"retry-after": RETRY_AFTER[status]} if status in RETRY_AFTER else {}
            return status, {"detail": message or str(exc), "error": code}, headers
    log.exception("unexpected error while scoring", exc_info=exc)
    return 500, {"detail": "internal error", "error": "internal"}, {}


def error_response(exc: Exception) -> JSONResponse:
    status, body, headers = error_answer(exc)
    return JSONResponse(body, status, headers=headers)


class ScoringApp(FastAPI):
    """FastAPI with ``/score`` answered first, by ``score_endpoint``, outside the route stack;
    ``documented`` routes are in the OpenAPI schema without being mounted."""

    score_endpoint: ScoreEndpoint
    documented: list[BaseRoute]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SCORE_PATH:
            await self.score_endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            self.openapi_schema = get_openapi(
                title=self.title,
                version=self.version,
                summary=self.summary,
                routes=[*self.documented, *self.routes],
            )
        return self.openapi_schema


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

    app = ScoringApp(
        title="QIN CTR scoring service",
        summary="Click probabilities for a user's candidate items, from the Quadratic Interest "
        "Network on onnxruntime, with features from Redis.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    admin_key = Depends(_key_checker(settings.admin_api_key, "ADMIN_API_KEY", required=True))
    app.state.engine = engine
    app.state.metrics = metrics
    app.score_endpoint = ScoreEndpoint(
        engine,
        metrics,
        AdaptiveLimit(settings.max_in_flight, settings.admission_latency_ms / 1000),
        error_answer,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        max_candidates=settings.max_candidates,
        max_history=settings.max_history,
    )
    app.documented = _documented_score_route()

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
        if not key_matches(dict(request.scope["headers"]), expected):
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


def _documented_score_route() -> list[BaseRoute]:
    """``POST /score`` for the OpenAPI schema: the models, statuses and security that
    :class:`ScoreEndpoint` implements (it answers the requests; this is never mounted)."""
    router = APIRouter()

    @router.post(
        SCORE_PATH,
        response_model=ScoreResponse,
        responses={
            **_documented_errors(),
            401: {"model": ErrorResponse, "description": "API_KEY is set and was not given"},
            413: {"model": ErrorResponse, "description": "body larger than MAX_BODY_BYTES"},
            429: {"model": ErrorResponse, "description": "error: queue_full, overloaded"},
        },
        summary="Score a user's candidates",
    )
    async def score(body: ScoreRequest) -> ScoreResponse:  # pragma: no cover - schema only
        raise NotImplementedError("answered by ScoreEndpoint")

    return list(router.routes)
