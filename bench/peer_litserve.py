"""LitServe serving the project's model: a peer the service is load-tested against. Never deploy.

    python -m bench.peer_litserve [--max-batch-size 64] [--batch-timeout-ms 2]

What someone would build with LitServe instead of this service, given the project's parts: the
same feature reads (``FeatureStore``, one Redis round trip per request, the item cache), the same
packing (``pack``) and the same ONNX serving graph (``ModelRunner``), so that what differs is
the serving framework: LitServe's HTTP server, its worker process and its batching
(``max_batch_size``, ``batch_timeout``). Configured by the service's own environment variables
(MODEL_PATH, REDIS_URL, HOST, PORT, INTRA_OP_THREADS, ...), so both start the same way.

LitServe refuses async code when batching is on ("Async batching is not supported"), and the
feature store is asyncio: its reads run on an event loop in a thread of the worker, every
request of a batch at once (``asyncio.gather``), which is as well as a batch can do there. The
same HTTP contract for what the load generator sends: ``POST /score`` with user_id, item_ids
and an optional history, answered with scores, model_version and feature_version;
``/readyz`` is LitServe's health check (200 once the worker has loaded and warmed the model).
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run
# time to build its endpoint, and a string there makes the body a query parameter.
import argparse
import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import litserve as ls
import numpy as np

from bench.peer_parts import fetch_all, model_runner, score
from service.features import FeatureStore
from service.packing import ScoringInput
from service.schemas import ScoreRequest
from service.settings import Settings

T = TypeVar("T")

#: Candidates of the warm-up batch run before the worker reports healthy.
WARMUP_CANDIDATES = 100


class QinLitAPI(ls.LitAPI):
    """decode -> batch -> predict (features, pack, model) -> unbatch -> encode, in the worker."""

    def setup(self, device: str) -> None:
        self.settings = Settings()
        settings = self.settings
        self.runner = model_runner(settings)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="redis-loop", daemon=True).start()
        self.store = self._on_loop(self._open_store())
        self.predict([ScoreRequest(user_id=0, item_ids=list(range(1, WARMUP_CANDIDATES + 1)))])

    async def _open_store(self) -> FeatureStore:
        return FeatureStore.from_settings(self.settings)  # its client binds to this loop

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def decode_request(self, request: ScoreRequest) -> ScoreRequest:
        # LitServe reads the annotation: the body is parsed and validated as a ScoreRequest by
        # its FastAPI app (422 on a bad one), as the service does
        return request

    def batch(self, inputs: list[ScoreRequest]) -> list[ScoreRequest]:
        return inputs

    def predict(self, requests: list[ScoreRequest] | ScoreRequest) -> list[dict[str, Any]]:
        batch = requests if isinstance(requests, list) else [requests]
        asks = [
            (
                r.user_id,
                np.asarray(r.item_ids, np.int64),
                None if r.history is None else np.asarray(r.history, np.int64),
            )
            for r in batch
        ]
        features = self._on_loop(fetch_all(self.store, asks))
        inputs = [
            ScoringInput(
                f.history,
                f.candidates,
                None if r.likes_level is None else np.asarray(r.likes_level, np.int64),
                None if r.views_level is None else np.asarray(r.views_level, np.int64),
            )
            for r, f in zip(batch, features, strict=True)
        ]
        version = self.runner.info.version
        return [
            {
                "scores": s.tolist(),
                "model_version": version,
                "feature_version": f.version,
                "history_source": f.history_source,
                "history_length": int((f.history.ids > 0).sum()),
                "degraded": False,
            }
            for s, f in zip(score(self.runner, inputs), features, strict=True)
        ]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-batch-size", type=int, default=64, help="requests per batch")
    parser.add_argument(
        "--batch-timeout-ms", type=float, default=2.0, help="longest wait to fill a batch"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    api = QinLitAPI(
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000.0,
        api_path="/score",
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, healthcheck_path="/readyz")
    server.run(
        host=settings.host,
        port=settings.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
