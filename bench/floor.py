"""The model-only floor: onnxruntime alone on 1 user x N candidates, history 64, the latency no
service beats; and the idle penalty, the model call and a Redis GET back to back and spaced at a
rate (what a request at low load pays that the floor does not show).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.workload import CANDIDATES


def model_call(
    model: Path, candidates: int = CANDIDATES, provider: str = "cpu"
) -> tuple[dict[str, Any], Callable[[], Any]]:
    """The model's metadata and one onnxruntime call on 1 user x ``candidates``, history 64.

    On CUDA the call goes through the service's ModelRunner (inputs and output bound on the
    device, the result copied back), which refuses a session that fell back to the CPU."""
    from bench.model_latency import requests
    from contract.schema import FeatureSchema
    from export.onnx_io import make_session, read_metadata

    meta = read_metadata(model)
    schema = FeatureSchema.from_dict(meta["feature_schema"])
    feeds = requests(schema, 1, candidates).feeds(meta["graph"])
    if provider == "cuda":
        from service.runtime import ModelRunner

        runner = ModelRunner(model, "cuda")
        session, run = runner.session, runner.run
    else:
        session = make_session(model)
        run = partial(session.run, None)
    arrays = {i.name: feeds[i.name] for i in session.get_inputs()}

    def call() -> Any:
        return run(arrays)

    for _ in range(20):
        call()
    return meta, call


def paced_median_ms(call: Callable[[], Any], spacing_s: float, calls: int = 300) -> float:
    """Median time of ``call`` made once every ``spacing_s`` (sleeping between), in ms."""
    samples = []
    for _ in range(calls):
        time.sleep(spacing_s)
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(samples)


def idle_penalty(
    model: Path, redis_url: str, rate: float, candidates: int = CANDIDATES, provider: str = "cpu"
) -> dict[str, Any]:
    """The same work back to back and spaced at ``rate`` (nothing else running): on a machine
    whose idle cores sleep, each hand-off between processes or threads and each cold start of
    the model costs more at a low rate than in a tight loop. It explains part of the service's
    overhead at low load, which the back-to-back floor does not show."""
    import redis

    from service.features.layout import Keys

    live = Keys("qin").live
    _, run_model = model_call(model, candidates, provider)
    client = redis.Redis.from_url(redis_url)
    try:

        def redis_get() -> Any:
            return client.get(live)

        return {
            "rate": rate,
            "model_back_to_back_ms": paced_median_ms(run_model, 0.0),
            "model_paced_ms": paced_median_ms(run_model, 1.0 / rate),
            "redis_get_back_to_back_ms": paced_median_ms(redis_get, 0.0),
            "redis_get_paced_ms": paced_median_ms(redis_get, 1.0 / rate),
        }
    finally:
        client.close()


def model_floor(
    model: Path, budget_s: float = 5.0, candidates: int = CANDIDATES, provider: str = "cpu"
) -> dict[str, Any]:
    """onnxruntime alone on 1 user x ``candidates``, history 64: the latency no service beats."""
    meta, run_model = model_call(model, candidates, provider)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < 200 or (time.perf_counter() - started < budget_s and len(samples) < 5000):
        t0 = time.perf_counter()
        run_model()
        samples.append(time.perf_counter() - t0)
    ordered = np.sort(np.asarray(samples)) * 1e3
    return {
        "graph": meta["graph"],
        "provider": provider,
        "model_version": meta["model_version"],
        "median_ms": float(statistics.median(ordered)),
        "p99_ms": float(np.percentile(ordered, 99, method="inverted_cdf")),
        "calls": len(samples),
    }
