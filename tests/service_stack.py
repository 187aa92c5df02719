"""Fixtures for the service tests: a real exported model, a real Redis with features loaded, and the
real app served by a real uvicorn server on a free port (in a thread of the test process, so a test
can also look at the engine it talks to over HTTP).

Registered by ``pytest_plugins`` in conftest.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn

from contract.dataset import load_items
from export.exporter import export_checkpoint
from model.base import CTRModel
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import build_config
from model.data import infer_schema
from model.factory import build_model
from service.api import create_app
from service.features.loader import load_dataset
from service.features.source import FeatureSet, read_feature_set
from service.settings import Settings
from tests.support.redis import RedisServer, free_port
from tests.support.wait import wait_until

HISTORY_LEN = 64


@dataclass(frozen=True)
class ServedModel:
    """A checkpoint, its ONNX serving graph, the PyTorch model and the features of its data."""

    data: Path
    checkpoint: Path
    onnx: Path
    model: CTRModel
    features: FeatureSet
    model_version: str

    def reference(
        self,
        history: np.ndarray,
        item_ids: list[int],
        likes: list[int] | None = None,
        views: list[int] | None = None,
    ) -> np.ndarray:
        """PyTorch eval probabilities (the training forward, one row per candidate), with the
        serving rules: ids the feature store lacks are padding (id 0, zero features)."""
        records = self.features.item_records
        vocab = len(records)

        def known(ids: np.ndarray) -> np.ndarray:
            ids = np.asarray(ids, np.int64)
            return np.where((ids >= 1) & (ids < vocab), ids, 0)

        targets = known(np.asarray(item_ids))
        past = known(np.asarray(history, np.int64)[-HISTORY_LEN:])
        count = len(targets)
        rows = np.repeat(past[None, :], count, axis=0)
        level_likes = records["likes"][targets] if likes is None else np.asarray(likes)
        level_views = records["views"][targets] if views is None else np.asarray(views)
        tensors = [
            torch.as_tensor(np.asarray(level_likes, np.int64)),
            torch.as_tensor(np.asarray(level_views, np.int64)),
            torch.as_tensor(targets),
            torch.as_tensor(records["tags"][targets].astype(np.int64)),
            torch.as_tensor(records["vector"][targets].astype(np.float32)),
            torch.as_tensor(rows),
            torch.as_tensor(records["tags"][rows].astype(np.int64)),
            torch.as_tensor(records["vector"][rows].astype(np.float32)),
        ]
        with torch.no_grad():
            return torch.sigmoid(self.model(*tensors)).numpy()

    def history_of(self, user_id: int) -> np.ndarray:
        index = int(np.searchsorted(self.features.user_ids, user_id))
        if index >= len(self.features.user_ids) or self.features.user_ids[index] != user_id:
            return np.zeros(0, np.int64)
        return self.features.history_of(index).astype(np.int64)


def randomised(model: CTRModel, seed: int) -> CTRModel:
    """Non-trivial BatchNorm statistics, PReLU slopes and embeddings, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_mean.mul_(0.2)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            if isinstance(module, torch.nn.PReLU):
                module.weight.fill_(0.1)
            if isinstance(module, torch.nn.Embedding):
                module.weight[1:].normal_(0, 0.05, generator=generator)
    return model.eval()


@pytest.fixture(scope="session")
def served_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """The small preset on the tiny dataset's vocabularies, exported by the real exporter."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(3)
    config = build_config("small", [])
    schema = infer_schema(load_items(tiny_data / "item_info.parquet"), HISTORY_LEN)
    model = randomised(build_model(config.model, schema), seed=3)
    written = save_checkpoint(
        folder / "checkpoint", model, config, {"data": {"path": str(tiny_data)}}
    )
    onnx = folder / "model.onnx"
    export_checkpoint(folder / "checkpoint", onnx, verify_data=tiny_data, verify_rows=256)
    features = read_feature_set(tiny_data, HISTORY_LEN)
    return ServedModel(tiny_data, folder / "checkpoint", onnx, model, features, written["version"])


@pytest.fixture(scope="session")
def other_model(served_model: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second exported model of the same schema, with other weights (another version)."""
    folder = tmp_path_factory.mktemp("other")
    model, _ = load_checkpoint(served_model.checkpoint)
    model = randomised(model, seed=11)
    config = build_config("small", [])
    save_checkpoint(folder / "checkpoint", model, config, {"data": {"path": "other"}})
    out = folder / "model.onnx"
    export_checkpoint(folder / "checkpoint", out, verify_data=served_model.data, verify_rows=256)
    return out


@pytest.fixture
def feature_redis(redis_server: RedisServer, served_model: ServedModel) -> RedisServer:
    """A real Redis with the tiny dataset's features loaded and live."""
    load_dataset(redis_server.url, served_model.data, prefix="qin", history_len=HISTORY_LEN, keep=2)
    return redis_server


class ServiceThread:
    """The app under a real uvicorn server on 127.0.0.1:<free port>, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def start(self, timeout_s: float = 30.0) -> ServiceThread:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout_s,
            "uvicorn to start serving",
        )
        if not self.server.started:
            raise RuntimeError("the service did not start (its thread ended)")
        return self

    def wait_warm(self, timeout_s: float = 30.0) -> None:
        """Wait until the engine finished loading and warming (whatever Redis does)."""
        wait_until(
            lambda: self.engine.warmed or self.engine.load_error,
            timeout_s,
            "the engine to load and warm the model (or to record why it cannot)",
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> ServiceThread:
        """Started and warmed; stopped on exit."""
        self.start()
        self.wait_warm()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call_in_loop(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the server's event loop (to poke the engine from a test)."""
        batcher = self.engine.batcher
        loop = None if batcher is None else batcher.loop
        assert loop is not None, "the batcher is not running (model not warmed?)"
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


#: The request deadline of the services the tests start: generous, so that on a busy shared
#: machine a test about batching or correctness never sees a 504 from the 1 s production default.
#: A test whose subject is the deadline sets its own (``request_timeout_s=...``).
GENEROUS_DEADLINE_S = 60.0


def service_settings(served: ServedModel, redis_url: str, **overrides: Any) -> Settings:
    """Settings of a test service on ``served``'s model and the Redis at ``redis_url``; the
    request deadline is ``GENEROUS_DEADLINE_S`` unless ``overrides`` sets ``request_timeout_s``."""
    overrides.setdefault("request_timeout_s", GENEROUS_DEADLINE_S)
    return Settings(redis_url=redis_url, model_path=served.onnx, provider="cpu", **overrides)


@pytest.fixture
def service(served_model: ServedModel, feature_redis: RedisServer) -> Iterator[ServiceThread]:
    """The service with default settings (but a generous deadline), model warmed and features
    live."""
    with ServiceThread(service_settings(served_model, feature_redis.url)) as running:
        yield running
