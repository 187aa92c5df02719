"""Operating the service: hot reload (admin endpoint and SIGHUP), API keys, body limits, and
graceful shutdown on SIGTERM. Real processes where signals are involved."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from pydantic import SecretStr

from tests.service_stack import (
    GENEROUS_DEADLINE_S,
    ServedModel,
    ServiceThread,
    service_settings,
)
from tests.support.redis import RedisServer, free_port
from tests.support.wait import wait_until, wait_until_async
from tests.test_service import metric

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": "Bearer admin-secret"}


def without_parity(source: Path, out: Path) -> Path:
    """A copy of a model whose metadata no longer records a passed parity check."""
    proto = onnx.load(str(source))
    kept = [p for p in proto.metadata_props if p.key != "parity"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(out))
    return out


@pytest.fixture
def admin_service(
    served_model: ServedModel, feature_redis: RedisServer, tmp_path: Path
) -> Iterator[ServiceThread]:
    """The service on a copy of the model file (so a test may replace it), with an admin key."""
    path = tmp_path / "model.onnx"
    shutil.copy(served_model.onnx, path)
    settings = service_settings(served_model, feature_redis.url).model_copy(
        update={"model_path": path, "admin_api_key": SecretStr("admin-secret"), "api_key": None}
    )
    with ServiceThread(settings) as running:
        yield running


def test_reload_swaps_the_model_without_failing_in_flight_requests(
    admin_service: ServiceThread, served_model: ServedModel, other_model: Path
) -> None:
    user = int(served_model.features.user_ids[0])
    payload = {"user_id": user, "item_ids": list(range(1, 60))}
    old_version = served_model.model_version
    shutil.copy(other_model, admin_service.settings.model_path)  # replaced on disk

    async def scenario() -> tuple[list[list[httpx.Response]], httpx.Response]:
        async with httpx.AsyncClient(base_url=admin_service.url, timeout=30) as http:
            stop = asyncio.Event()
            per_worker: list[list[httpx.Response]] = [[] for _ in range(4)]

            async def keep_scoring(answers: list[httpx.Response]) -> None:
                while not stop.is_set():
                    answers.append(await http.post("/score", json=payload))

            def each_answered(counts: list[int]) -> bool:
                return all(len(a) >= n for a, n in zip(per_worker, counts, strict=True))

            workers = [asyncio.create_task(keep_scoring(a)) for a in per_worker]
            # the reload happens while every worker is scoring: each has been answered a few
            # times by the old model first, and is answered a few times after the swap
            await wait_until_async(
                lambda: each_answered([3] * 4), what="3 answers to each worker before the reload"
            )
            reloaded = await http.post("/admin/reload", headers=ADMIN)
            after = [len(a) + 3 for a in per_worker]
            await wait_until_async(
                lambda: each_answered(after), what="3 more answers to each worker after it"
            )
            stop.set()
            await asyncio.gather(*workers)
            return per_worker, reloaded

    per_worker, reloaded = asyncio.run(scenario())
    answers = [a for sequence in per_worker for a in sequence]
    assert reloaded.status_code == 200, reloaded.text
    new_version = reloaded.json()["model_version"]
    assert reloaded.json()["previous_version"] == old_version != new_version
    assert all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
    assert {a.json()["model_version"] for a in answers} == {old_version, new_version}
    for sequence in per_worker:  # each worker's requests are sequential
        versions = [a.json()["model_version"] for a in sequence]
        # once the new version answered, the old one never does again (one atomic swap)
        first_new = versions.index(new_version)
        assert set(versions[first_new:]) == {new_version}
    # the scores really come from the new model
    old_scores = next(a for a in answers if a.json()["model_version"] == old_version)
    new_scores = answers[-1].json()["scores"]
    assert not np.allclose(old_scores.json()["scores"], new_scores, atol=1e-4)
    text = httpx.get(admin_service.url + "/metrics").text
    assert f'version="{new_version}"' in text and f'version="{old_version}"' not in text
    assert 'qin_model_reloads_total{outcome="swapped"} 1.0' in text


@pytest.mark.parametrize("broken", ["garbage", "no-parity", "missing"])
def test_a_bad_model_is_refused_and_the_old_one_keeps_serving(
    admin_service: ServiceThread, served_model: ServedModel, tmp_path: Path, broken: str
) -> None:
    path = tmp_path / f"{broken}.onnx"
    if broken == "garbage":
        path.write_bytes(b"\x08\x01 half a protobuf")
    elif broken == "no-parity":
        without_parity(served_model.onnx, path)
    with httpx.Client(base_url=admin_service.url, timeout=30) as http:
        refused = http.post("/admin/reload", json={"model_path": str(path)}, headers=ADMIN)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "model_refused" and str(path) in refused.json()["detail"]
        still = http.post("/score", json={"user_id": 1, "item_ids": [1, 2]})
        assert still.status_code == 200
        assert still.json()["model_version"] == served_model.model_version
        text = http.get("/metrics").text
    assert 'qin_model_reloads_total{outcome="refused"} 1.0' in text


def test_admin_endpoints_need_the_admin_key(admin_service: ServiceThread) -> None:
    with httpx.Client(base_url=admin_service.url, timeout=30) as http:
        assert http.post("/admin/reload").status_code == 401
        wrong = http.post("/admin/reload", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"


def test_admin_endpoints_are_off_without_a_key_and_score_can_require_one(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    settings = service_settings(served_model, feature_redis.url, api_key="score-secret")
    running = ServiceThread(settings).start()
    try:
        running.wait_warm()
        with httpx.Client(base_url=running.url, timeout=30) as http:
            assert http.post("/admin/reload", headers=ADMIN).status_code == 403
            payload = {"user_id": 1, "item_ids": [1]}
            assert http.post("/score", json=payload).status_code == 401
            keyed = http.post("/score", json=payload, headers={"X-API-Key": "score-secret"})
            assert keyed.status_code == 200
            bearer = {"Authorization": "Bearer score-secret"}
            assert http.post("/score", json=payload, headers=bearer).status_code == 200
            # probes and metrics stay open for orchestrators and Prometheus
            assert http.get("/healthz").status_code == 200
            assert http.get("/metrics").status_code == 200
    finally:
        running.stop()


def test_an_oversized_body_is_refused_with_413(client: httpx.Client) -> None:
    huge = b'{"user_id": 1, "item_ids": [' + b"1, " * 400_000 + b"1]}"
    response = client.post("/score", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_streamed_oversized_body_is_refused_before_it_is_all_read(client: httpx.Client) -> None:
    """Without a content-length (chunked), the limit holds on the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": 1, "item_ids": ['
        for _ in range(2_000):
            yield b"1, " * 1_000
        yield b"1]}"

    response = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]


def test_score_answers_wrong_methods_and_content_types_clearly(client: httpx.Client) -> None:
    wrong_method = client.get("/score")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    body = b'{"user_id": 1, "item_ids": [1]}'
    as_text = client.post("/score", content=body, headers={"content-type": "text/plain"})
    assert as_text.status_code == 422
    assert "application/json" in as_text.json()["detail"][0]["msg"]
    # a +json media type and a charset parameter are JSON all the same
    for kind in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert client.post("/score", content=body, headers={"content-type": kind}).is_success


def test_validation_errors_have_fastapis_shape(client: httpx.Client) -> None:
    """Clients written against FastAPI's 422s keep working: detail[] with type, loc under
    "body", msg, input."""
    response = client.post("/score", json={"user_id": "seven", "item_ids": [1]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "user_id"]
    assert error["type"] == "int_type"  # strict: a string is not an id
    assert error["input"] == "seven"
    assert error["msg"]


@pytest.fixture
def client(service: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


# ------------------------------------------------------------------------------------------------
# Signals: the service as its own process


class ServiceProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        full = {**os.environ, **env, "PORT": str(self.port), "LOG_LEVEL": "warning"}
        self.process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=full)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, "the service exited"
            try:
                return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout_s, "the service process to answer /readyz with 200")

    def metric(self, name: str, labels: str = "") -> float:
        return metric(httpx.get(self.url + "/metrics", timeout=30).text, name, labels)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _env(served: ServedModel, redis: RedisServer, model: Path, **extra: Any) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "MODEL_PATH": str(model),
        "PROVIDER": "cpu",
        "REQUEST_TIMEOUT_S": str(GENEROUS_DEADLINE_S),
        **{k: str(v) for k, v in extra.items()},
    }


def test_sighup_reloads_the_model_file(
    served_model: ServedModel, feature_redis: RedisServer, other_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    shutil.copy(served_model.onnx, path)
    service = ServiceProcess(_env(served_model, feature_redis, path))
    try:
        service.wait_ready()
        payload = {"user_id": 1, "item_ids": [1, 2, 3]}
        before = httpx.post(service.url + "/score", json=payload).json()["model_version"]
        assert before == served_model.model_version
        shutil.copy(other_model, path)
        service.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: service.metric("qin_model_reloads_total", 'outcome="swapped"') == 1,
            what="SIGHUP to reload the model (qin_model_reloads_total swapped = 1)",
        )
        after = httpx.post(service.url + "/score", json=payload).json()["model_version"]
        assert after != before
        assert service.process.poll() is None
    finally:
        service.stop()


def test_sigterm_drains_accepted_requests_then_exits(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    # A long batch wait keeps the requests queued when the signal arrives: the batch closes 10 s
    # after the first of them is queued (time enough to queue 30 on a busy machine; the request
    # deadline is 60 s), so the drain is what answers them.
    # SHUTDOWN_DRAIN_S=1: the drain ends while the requests still wait for their batch, so
    # uvicorn's graceful shutdown (not the drain) is what has to answer them.
    env = _env(
        served_model,
        feature_redis,
        served_model.onnx,
        BATCH_MAX_WAIT_MS=10000,
        SHUTDOWN_DRAIN_S=1,
    )
    service = ServiceProcess(env)
    try:
        service.wait_ready()

        async def scenario() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=40)
            async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as http:

                async def all_queued() -> bool:
                    text = (await http.get("/metrics")).text
                    assert metric(text, "qin_batch_requests_count") == 0, "a batch ran early"
                    return metric(text, "qin_queue_depth") == 30

                payloads = [{"user_id": 1, "item_ids": list(range(1, n + 2))} for n in range(30)]
                sent = [asyncio.create_task(http.post("/score", json=p)) for p in payloads]
                await wait_until_async(all_queued, what="all 30 requests queued, none scored")
                service.process.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*sent))

        answers = asyncio.run(scenario())
        assert [a.status_code for a in answers] == [200] * 30
        assert [len(a.json()["scores"]) for a in answers] == list(range(1, 31))
        # a drained process stopped as asked: exit 0, not death by the signal
        assert service.process.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(service.url + "/healthz", timeout=2)
    finally:
        service.stop()


def test_sigterm_drain_turns_readiness_off_but_keeps_scoring(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    # A drain far longer than the test: what ends the process is the second SIGTERM.
    env = _env(served_model, feature_redis, served_model.onnx, SHUTDOWN_DRAIN_S=300)
    service = ServiceProcess(env)
    try:
        service.wait_ready()
        service.process.send_signal(signal.SIGTERM)

        def not_ready() -> bool:
            return httpx.get(service.url + "/readyz", timeout=30).status_code == 503

        wait_until(not_ready, what="/readyz to answer 503 once SIGTERM starts the drain")
        assert httpx.get(service.url + "/readyz", timeout=30).json() == {
            "ready": False,
            "draining": True,
        }
        assert service.metric("qin_ready") == 0
        assert httpx.get(service.url + "/healthz", timeout=30).status_code == 200
        scored = httpx.post(
            service.url + "/score", json={"user_id": 1, "item_ids": [1, 2, 3]}, timeout=30
        )
        assert scored.status_code == 200, scored.text
        assert len(scored.json()["scores"]) == 3
        assert service.process.poll() is None
        service.process.send_signal(signal.SIGTERM)  # the second one does not wait
        # uvicorn's own handling of that signal: shut down now, then re-raise it
        assert service.process.wait(timeout=GENEROUS_DEADLINE_S) in (0, -signal.SIGTERM)
    finally:
        service.stop()
