"""The naive scoring service: the baseline the real service is load-tested against. Never deploy.

    python -m bench.naive_service --checkpoint CKPT [--host H --port P] [--redis-url URL]

It is what a first, straightforward version of the service would be, and is deliberately naive:
the same HTTP contract (``POST /score``, ``/healthz``, ``/readyz``) and the same feature store
(``FeatureStore``: one Redis round trip, item cache), but then each request is scored on its own,
inside its handler, by the PyTorch model in eager mode, in the training form: one row per
candidate with the user's history repeated (``build_graph(model, "direct")``). No batching across
requests, no ONNX, no history-once rewrite, and the model call blocks the event loop.

bench.service_load measures it beside the real service, so that "how much faster" has a measured
reference rather than an assumed one. Defaults come from the same environment variables as the
service (``REDIS_URL``, ``HOST``, ``PORT``), so both start the same way.

PyTorch runs one intra-op thread by default (``--torch-threads``): the generator and Redis share
the benchmark machine's cores, and PyTorch's OpenMP threads, which spin while they wait, collapse
when a core is taken from them (on 2 shared cores: 14 ms median and 300 ms spikes per request with
two threads, 6.5 ms steady with one). Naive, then, but not crippled: a stronger baseline only
makes the measured gain smaller.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from torch import nn

from export.graphs import build_graph
from model.checkpoint import load_checkpoint
from service.features import FeatureStore, FeatureStoreError, ItemFeatures, RequestFeatures
from service.schemas import ScoreRequest
from service.settings import Settings

#: Candidates of the warm-up call made before the service says it is ready.
WARMUP_CANDIDATES = 100


class ScoreResponse(BaseModel):
    scores: list[float]
    model_version: str


@dataclass
class NaiveScorer:
    """The direct graph of a checkpoint and what the handler needs beside it."""

    graph: nn.Module
    history_len: int
    model_version: str

    @staticmethod
    def load(checkpoint: Path) -> NaiveScorer:
        model, meta = load_checkpoint(checkpoint)
        graph = build_graph(model, "direct")
        return NaiveScorer(graph, model.schema.history_len, str(meta["version"]))

    @torch.inference_mode()
    def score(
        self,
        features: RequestFeatures,
        likes: list[int] | None = None,
        views: list[int] | None = None,
    ) -> list[float]:
        """One model call for one request: a row per candidate, the history in every row."""
        inputs = direct_inputs(features, self.history_len, likes, views)
        return [float(p) for p in self.graph(*inputs).numpy()]


def left_padded(history: ItemFeatures, length: int) -> ItemFeatures:
    """The last ``length`` history items, zero-padded on the left as in training."""
    recent = history.take(np.arange(max(0, len(history) - length), len(history)))
    out = ItemFeatures.zeros(length)
    out.put(np.arange(length - len(recent), length), recent)
    return out


def direct_inputs(
    features: RequestFeatures,
    history_len: int,
    likes: list[int] | None,
    views: list[int] | None,
) -> list[torch.Tensor]:
    """Tensors in the order of ``contract.onnx_io.direct_inputs``; history repeated per row."""
    candidates = features.candidates
    rows = len(candidates)
    history = left_padded(features.history, history_len)

    def repeated(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.unsqueeze(0).expand(rows, *tensor.shape)

    def level(given: list[int] | None, stored: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(stored if given is None else np.asarray(given, np.int64))

    return [
        level(likes, candidates.likes),
        level(views, candidates.views),
        torch.from_numpy(candidates.ids),
        torch.from_numpy(candidates.tags),
        torch.from_numpy(candidates.vectors),
        repeated(history.ids),
        repeated(history.tags),
        repeated(history.vectors),
    ]


def warm_up(scorer: NaiveScorer) -> None:
    """One call at the usual size, so the first request does not pay for allocations."""
    empty = ItemFeatures.zeros(0)
    candidates = ItemFeatures.zeros(WARMUP_CANDIDATES)
    candidates.ids[:] = 1
    scorer.score(RequestFeatures("warm-up", "override", empty, candidates, 0))


@dataclass
class State:
    scorer: NaiveScorer
    store: FeatureStore


def get_state(request: Request) -> State:
    state: State = request.app.state.naive
    return state


StateDep = Annotated[State, Depends(get_state)]


def create_app(checkpoint: Path, settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scorer = NaiveScorer.load(checkpoint)
        warm_up(scorer)
        store = FeatureStore.from_settings(settings)
        app.state.naive = State(scorer, store)
        try:
            yield
        finally:
            await store.aclose()

    app = FastAPI(title="QIN naive scoring service (benchmark baseline)", lifespan=lifespan)

    @app.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest, state: StateDep) -> ScoreResponse:
        try:
            features = await state.store.fetch(body.user_id, body.item_ids, body.history)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        except FeatureStoreError:
            raise HTTPException(503, "feature store unavailable") from None
        scores = state.scorer.score(features, body.likes_level, body.views_level)
        return ScoreResponse(scores=scores, model_version=state.scorer.model_version)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(state: StateDep) -> JSONResponse:
        try:
            version = await state.store.live_version()
        except FeatureStoreError:
            version = None
        body: dict[str, Any] = {"ready": version is not None, "provider": "torch-eager-cpu"}
        body["feature_version"] = version
        return JSONResponse(body, status_code=200 if version is not None else 503)

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.naive_service",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="(HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--redis-url", default=None, help="(REDIS_URL; service default)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads (0: PyTorch's default, one per core)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings() if args.redis_url is None else Settings(redis_url=args.redis_url)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    app = create_app(args.checkpoint, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
