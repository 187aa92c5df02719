"""Triton Inference Server (through PyTriton) serving the project's model: a peer the service is
load-tested against. Never deploy.

    .venv-peers/bin/python -m bench.peer_pytriton [--max-batch-size 64] [--queue-delay-us 2000]

What someone would build with Triton, given the project's parts: a Python infer function bound
to Triton's dynamic batcher (``max_batch_size``, ``max_queue_delay_microseconds``), served by the
Triton server binary that ``nvidia-pytriton`` bundles and called over Triton's HTTP protocol
(KServe v2: ``POST /v2/models/qin/infer``; ready = ``GET /v2/health/ready``). The function
reads features with the project's ``FeatureStore`` (every request of a batch at once), packs
with ``pack`` and runs ``ModelRunner`` off the event loop: the same parts as the service, so
what differs is the serving around them. Configured by the service's environment variables
(MODEL_PATH, REDIS_URL, HOST, PORT, INTRA_OP_THREADS, ...); PORT is Triton's HTTP port.

Inputs per request (leading batch dimension 1): ``user_id`` INT64 [1], ``item_ids`` INT64 [C],
optional ``history`` INT64 [H]; output ``scores`` FP32 [C]. nvidia-pytriton pins numpy < 2, so
this runs in its own virtual environment (``bash bench/peers_env.sh``); Triton's Python backend
stub links libpython, found through LD_LIBRARY_PATH (set by bench.peers).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import numpy as np
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton, TritonConfig

from bench.peer_parts import fetch_all, model_runner, score
from service.features import FeatureStore
from service.packing import ScoringInput
from service.settings import Settings

MODEL = "qin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class QinInfer:
    """The infer function: a batch of Triton requests in, one score array per request out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner = model_runner(settings)
        self.store: FeatureStore | None = None  # made on Triton's event loop, at the first call

    async def __call__(self, requests: list[Request]) -> list[dict[str, np.ndarray]]:
        if self.store is None:
            self.store = FeatureStore.from_settings(self.settings)
        asks = [
            (
                int(r["user_id"].reshape(-1)[0]),
                r["item_ids"].reshape(-1).astype(np.int64),
                r["history"].reshape(-1).astype(np.int64) if "history" in r else None,
            )
            for r in requests
        ]
        features = await fetch_all(self.store, asks)
        inputs = [ScoringInput(f.history, f.candidates) for f in features]
        loop = asyncio.get_running_loop()  # the model call (and packing) off Triton's loop
        scores = await loop.run_in_executor(None, score, self.runner, inputs)
        return [{"scores": s[None, :].astype(np.float32)} for s in scores]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-batch-size", type=int, default=64, help="requests per batch")
    parser.add_argument(
        "--queue-delay-us", type=int, default=2000, help="dynamic batcher's longest wait"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    infer = QinInfer(settings)
    config = TritonConfig(
        http_address=settings.host,
        http_port=settings.port,
        grpc_port=free_port(),
        metrics_port=free_port(),
        allow_grpc=True,
        log_verbose=0,
    )
    inputs = [
        Tensor(name="user_id", dtype=np.int64, shape=(1,)),
        Tensor(name="item_ids", dtype=np.int64, shape=(-1,)),
        Tensor(name="history", dtype=np.int64, shape=(-1,), optional=True),
    ]
    model_config: Any = ModelConfig(
        max_batch_size=args.max_batch_size,
        batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=inputs,
            outputs=[Tensor(name="scores", dtype=np.float32, shape=(-1,))],
            config=model_config,
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
