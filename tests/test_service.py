"""The service end to end over HTTP: a real uvicorn server, a real Redis with loaded features, a
real exported model in onnxruntime; scores compared with the PyTorch model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pytest

from bench.scrape import sample_value
from service.batching import Infer
from service.features.loader import load_dataset
from service.packing import ScoringInput
from tests.service_stack import ServedModel, ServiceThread, service_settings
from tests.support.redis import RedisServer
from tests.support.wait import wait_until_async

TOLERANCE = 1e-5


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text, its labels exactly ``labels`` (a selector such
    as ``'status="200"'``); 0 when absent."""
    value = sample_value(text, name, labels)
    return 0.0 if value is None else value


def score(client: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
    return client.post("/score", json=payload)


@pytest.fixture
def client(service: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


# ------------------------------------------------------------------------------------------------
# Scores


def test_scores_equal_the_pytorch_model(client: httpx.Client, served_model: ServedModel) -> None:
    users = served_model.features.user_ids[:5].tolist()
    vocab = served_model.features.item_vocab
    rng = np.random.default_rng(0)
    for user in users:
        items = rng.integers(1, vocab, size=37).tolist()
        response = score(client, {"user_id": user, "item_ids": items})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = served_model.reference(served_model.history_of(user), items)
        np.testing.assert_allclose(body["scores"], expected, atol=TOLERANCE, rtol=0)
        assert body["history_source"] == "stored"
        assert body["history_length"] == len(served_model.history_of(user)) > 0
        assert body["model_version"] == served_model.model_version
        assert body["feature_version"] == "1"


def test_level_overrides_explicit_history_and_unknown_items(
    client: httpx.Client, served_model: ServedModel
) -> None:
    vocab = served_model.features.item_vocab
    items = [3, vocab + 5, 7, 2**40]  # two ids nobody has seen: scored as unseen items
    history = [0, 11, 12, vocab + 1, 13]  # padding and an unknown id inside the history
    payload = {
        "user_id": int(served_model.features.user_ids[0]),
        "item_ids": items,
        "likes_level": [10, 0, 4, 2],
        "views_level": [1, 2, 3, 0],
        "history": history,
    }
    response = score(client, payload)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = served_model.reference(
        np.array([11, 12, 0, 13]), items, payload["likes_level"], payload["views_level"]
    )
    np.testing.assert_allclose(body["scores"], expected, atol=TOLERANCE, rtol=0)
    assert body["history_source"] == "override" and body["history_length"] == 3
    # the override changed the answer: it is really used
    stored = score(client, {"user_id": payload["user_id"], "item_ids": items}).json()
    assert not np.allclose(stored["scores"], body["scores"], atol=1e-4)


def test_an_unknown_user_is_scored_with_an_empty_history(
    client: httpx.Client, served_model: ServedModel
) -> None:
    items = [1, 2, 3]
    body = score(client, {"user_id": 10**12, "item_ids": items}).json()
    assert body["history_source"] == "unknown_user" and body["history_length"] == 0
    expected = served_model.reference(np.zeros(0, np.int64), items)
    np.testing.assert_allclose(body["scores"], expected, atol=TOLERANCE, rtol=0)


def test_concurrent_requests_are_batched_and_each_gets_its_own_scores(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    settings = service_settings(
        served_model, feature_redis.url, batch_max_wait_ms=20, max_in_flight=256
    )
    running = ServiceThread(settings).start()
    running.wait_warm()
    try:
        users = served_model.features.user_ids
        rng = np.random.default_rng(1)
        vocab = served_model.features.item_vocab
        payloads = [
            {
                "user_id": int(users[i % len(users)]),
                "item_ids": rng.integers(1, vocab, size=int(rng.integers(1, 120))).tolist(),
            }
            for i in range(200)
        ]

        async def send_all() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=running.url, timeout=60, limits=limits) as http:
                return await asyncio.gather(*(http.post("/score", json=p) for p in payloads))

        responses = asyncio.run(send_all())
        for payload, response in zip(payloads, responses, strict=True):
            assert response.status_code == 200, response.text
            expected = served_model.reference(
                served_model.history_of(payload["user_id"]), payload["item_ids"]
            )
            np.testing.assert_allclose(response.json()["scores"], expected, atol=TOLERANCE, rtol=0)
        text = httpx.get(running.url + "/metrics").text
        batches = metric(text, "qin_batch_requests_count")
        assert metric(text, "qin_batch_requests_sum") == 200
        assert 1 <= batches < 100, f"{batches} batches for 200 concurrent requests"
        total = sum(len(p["item_ids"]) for p in payloads)
        assert metric(text, "qin_batch_candidates_sum") == total
        assert metric(text, "qin_candidates_scored_total") == total
    finally:
        running.stop()


# ------------------------------------------------------------------------------------------------
# Metrics and probes


def test_metrics_count_what_happened(client: httpx.Client, served_model: ServedModel) -> None:
    user = int(served_model.features.user_ids[0])
    for size in (5, 10, 20):
        assert score(client, {"user_id": user, "item_ids": list(range(1, size + 1))}).is_success
    assert score(client, {"user_id": user, "item_ids": []}).status_code == 422
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "qin_requests_total", 'status="200"') == 3
    assert metric(text, "qin_requests_total", 'status="422"') == 1
    assert metric(text, "qin_request_duration_seconds_count") == 4
    for stage in ("redis", "queue", "model", "total"):
        assert metric(text, "qin_stage_duration_seconds_count", f'stage="{stage}"') == 3
    assert metric(text, "qin_candidates_scored_total") == 35
    # warm requests take one Redis round trip each; the item cache answers the repeats
    assert metric(text, "qin_redis_round_trips_total") >= 3
    assert metric(text, "qin_item_cache_hits_total") > 0
    assert metric(text, "qin_item_cache_misses_total") > 0
    version = served_model.model_version
    info = f'graph="serving",provider="CPUExecutionProvider",version="{version}"'
    assert metric(text, "qin_model_info", info) == 1
    # sub-millisecond buckets exist
    assert 'qin_request_duration_seconds_bucket{le="0.00025"}' in text
    # no *_created series (prometheus_client's creation timestamps)
    assert [line for line in text.splitlines() if "_created" in line] == []


def test_readiness_follows_the_model_and_redis(
    served_model: ServedModel, redis_server: RedisServer
) -> None:
    running = ServiceThread(service_settings(served_model, redis_server.url)).start()
    try:
        assert httpx.get(running.url + "/healthz").status_code == 200
        running.wait_warm()
        # Redis answers but holds no features yet: not ready, and it says why
        not_loaded = httpx.get(running.url + "/readyz")
        assert not_loaded.status_code == 503
        assert "no live feature version" in not_loaded.json()["redis"]["error"]
        load_dataset(redis_server.url, served_model.data, prefix="qin", history_len=64, keep=2)
        ready = httpx.get(running.url + "/readyz")
        assert ready.status_code == 200, ready.text
        report = ready.json()
        assert report["model"]["provider"] == "CPUExecutionProvider"
        assert report["model"]["warmed"] and report["redis"]["feature_version"] == "1"
        assert metric(httpx.get(running.url + "/metrics").text, "qin_ready") == 1
        redis_server.stop(save=True)
        lost = httpx.get(running.url + "/readyz", timeout=10)
        assert lost.status_code == 503 and lost.json()["redis"]["ok"] is False
        redis_server.start()
        assert httpx.get(running.url + "/readyz").status_code == 200
    finally:
        running.stop()


def test_a_model_that_cannot_load_keeps_the_service_unready(
    served_model: ServedModel, feature_redis: RedisServer, tmp_path: Any
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    settings = service_settings(served_model, feature_redis.url).model_copy(
        update={"model_path": broken}
    )
    running = ServiceThread(settings).start()
    try:
        running.wait_warm()
        assert httpx.get(running.url + "/healthz").status_code == 200
        ready = httpx.get(running.url + "/readyz")
        assert ready.status_code == 503 and "broken.onnx" in ready.json()["model"]["error"]
        refused = httpx.post(running.url + "/score", json={"user_id": 1, "item_ids": [1]})
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
        assert "Traceback" not in refused.text
    finally:
        running.stop()


def test_openapi_documents_the_score_contract(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/score"]["post"]
    assert {"200", "422", "429", "503", "504", "500"} <= set(operation["responses"])
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------------------
# Error paths


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        ({"user_id": 1}, "item_ids"),
        ({"user_id": 1, "item_ids": ["7"]}, "item_ids"),
        ({"user_id": 1, "item_ids": [1, 2], "likes_level": [3]}, None),
        ({"user_id": 1, "item_ids": [1], "views_level": [11]}, "views_level"),
        ({"user_id": 1, "item_ids": list(range(1, 1002))}, "item_ids"),
        ({"user_id": 1, "item_ids": [1], "history": list(range(1, 1002))}, "history"),
        ({"user_id": 1, "item_ids": [1], "items": [1]}, "items"),
    ],
    ids=[
        "malformed",
        "missing",
        "string-id",
        "misaligned",
        "level-range",
        "too-many",
        "history-too-long",
        "unknown-field",
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: httpx.Client, body: Any, field: str | None
) -> None:
    if isinstance(body, bytes):
        response = client.post("/score", content=body, headers={"content-type": "application/json"})
    else:
        response = score(client, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all("msg" in error for error in detail)
    if field is not None:
        assert any(field in error["loc"] for error in detail), detail


def test_malformed_json_is_a_422_showing_the_body_as_text(client: httpx.Client) -> None:
    for body, shown in [(b'{"user_id": 1,', '{"user_id": 1,'), (b'{"a": "\xff', '{"a": "\ufffd')]:
        response = client.post("/score", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["type"] == "json_invalid" and error["loc"] == ["body"], error
        assert error["input"] == shown, error
        assert "b'" not in response.text


class Gate:
    """Wraps the engine's real inference (through the batcher's ``wrap_infer`` seam) so a test
    can hold batches in the model (a slow model) or make them fail; it is the real model that
    scores whatever gets through."""

    def __init__(self, running: ServiceThread) -> None:
        batcher = running.engine.batcher
        assert batcher is not None, "the service is not warmed"
        self.real: Infer | None = None
        self.open = threading.Event()
        self.entered = threading.Event()
        self.fail = False
        self.finished = 0  # batches that went through the gate (scored or failed)
        batcher.wrap_infer(self._around)

    def _around(self, real: Infer) -> Infer:
        self.real = real
        return self

    def __call__(self, items: Sequence[ScoringInput]) -> tuple[list[np.ndarray], str]:
        assert self.real is not None
        self.entered.set()
        self.open.wait(30)
        try:
            if self.fail:
                raise RuntimeError("injected model failure: secret internals")
            return self.real(items)
        finally:
            self.finished += 1


SMALL_QUEUE = {
    "max_candidates": 10,
    "batch_max_candidates": 10,
    "queue_max_candidates": 20,
    "batch_max_wait_ms": 0,
}


@pytest.fixture
def small_queue(served_model: ServedModel, feature_redis: RedisServer) -> Iterator[ServiceThread]:
    """Batches of one 10-candidate request, room for two more in the queue; the deadline is the
    tests' generous one (a held batch never makes the queued requests late)."""
    settings = service_settings(served_model, feature_redis.url, **SMALL_QUEUE)
    with ServiceThread(settings) as running:
        yield running


async def _post(http: httpx.AsyncClient, user: int, size: int = 10) -> httpx.Response:
    return await http.post("/score", json={"user_id": user, "item_ids": list(range(1, size + 1))})


def test_a_full_queue_sheds_with_429_and_admitted_requests_complete(
    small_queue: ServiceThread, served_model: ServedModel
) -> None:
    gate = Gate(small_queue)
    batcher = small_queue.engine.batcher
    user = int(served_model.features.user_ids[0])

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue.url, timeout=30) as http:
            running = asyncio.create_task(_post(http, user))  # taken into a batch, held
            await wait_until_async(gate.entered.is_set, what="the first batch to enter the model")
            queued = [asyncio.create_task(_post(http, user)) for _ in range(2)]  # fill: 20
            await wait_until_async(
                lambda: batcher.queued_candidates == 20, what="20 candidates in the queue"
            )
            shed = await _post(http, user)
            # shedding is immediate: answered while the model still holds the first batch and
            # the queue still holds the other two (a request waiting for room would wait for
            # the gate, which opens only after this answer)
            assert gate.finished == 0 and batcher.queued_candidates == 20
            assert not any(task.done() for task in (running, *queued))
            gate.open.set()
            return list(await asyncio.gather(running, *queued)), shed

    admitted, shed = asyncio.run(scenario())
    assert shed.status_code == 429 and shed.json()["error"] == "queue_full"
    assert shed.headers["retry-after"] == "1"
    expected = served_model.reference(served_model.history_of(user), list(range(1, 11)))
    for response in admitted:
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["scores"], expected, atol=TOLERANCE, rtol=0)
    text = httpx.get(small_queue.url + "/metrics").text
    assert metric(text, "qin_shed_requests_total") == 1
    assert metric(text, "qin_requests_total", 'status="429"') == 1


def test_a_request_past_its_deadline_gets_504_and_is_not_scored(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    # the deadline is this test's subject: short, and it passes while the model is held (the
    # gate holds a batch for up to 30 s), however slow the machine
    settings = service_settings(
        served_model, feature_redis.url, request_timeout_s=2.0, **SMALL_QUEUE
    )
    with ServiceThread(settings) as running:
        gate = Gate(running)
        user = int(served_model.features.user_ids[0])

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                held = asyncio.create_task(_post(http, user))
                await wait_until_async(gate.entered.is_set, what="the held batch in the model")
                waiting = asyncio.create_task(_post(http, user))
                late = await waiting  # its 2 s deadline passes while the model is held
                assert gate.finished == 0, "the model was released before the deadline passed"
                gate.open.set()
                return [await held, late]

        held, late = asyncio.run(scenario())
        assert late.status_code == 504 and late.json()["error"] == "deadline_exceeded"
        # the held request itself was already in the model: it completes (late, but correct)
        assert held.status_code in (200, 504)
        text = httpx.get(running.url + "/metrics").text
    assert metric(text, "qin_deadline_exceeded_total", 'stage="queue"') >= 1
    # the expired request was set aside, never scored: only the held batch reached the model
    assert metric(text, "qin_batch_requests_sum") == 1
    assert gate.finished == 1


def test_a_failed_batch_answers_each_of_its_requests_and_the_worker_lives(
    small_queue: ServiceThread, served_model: ServedModel
) -> None:
    gate = Gate(small_queue)
    gate.fail = True
    gate.open.set()
    user = int(served_model.features.user_ids[0])
    with httpx.Client(base_url=small_queue.url, timeout=30) as http:
        failed = score(http, {"user_id": user, "item_ids": [1, 2, 3]})
        assert failed.status_code == 500
        assert failed.json() == {"detail": "model inference failed", "error": "inference_failed"}
        assert "secret" not in failed.text
        gate.fail = False
        recovered = score(http, {"user_id": user, "item_ids": [1, 2, 3]})
        assert recovered.status_code == 200
        text = http.get("/metrics").text
    assert metric(text, "qin_batch_failures_total") == 1
    assert metric(text, "qin_requests_total", 'status="500"') == 1


def test_redis_down_answers_503_fast_and_recovers(
    service: ServiceThread, served_model: ServedModel, feature_redis: RedisServer
) -> None:
    user = int(served_model.features.user_ids[0])
    payload = {"user_id": user, "item_ids": [1, 2]}
    with httpx.Client(base_url=service.url, timeout=30) as http:
        assert score(http, payload).status_code == 200
        feature_redis.stop(save=True)
        started = time.monotonic()
        down = score(http, payload)
        # "Fast" is "without waiting for the request's deadline": a refused connection is a 503 at
        # once, not a 504 after the (generous, 60 s) deadline. Half of it: room for a busy machine.
        assert time.monotonic() - started < service.settings.request_timeout_s / 2
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "feature_store_unavailable"
        assert down.headers["retry-after"] == "1"
        feature_redis.start()
        assert score(http, payload).status_code == 200


def test_no_feature_set_loaded_is_a_503(
    served_model: ServedModel, redis_server: RedisServer
) -> None:
    running = ServiceThread(service_settings(served_model, redis_server.url)).start()
    try:
        running.wait_warm()
        response = httpx.post(running.url + "/score", json={"user_id": 1, "item_ids": [1]})
        assert response.status_code == 503 and response.json()["error"] == "no_features"
    finally:
        running.stop()


def test_a_latency_target_shrinks_the_in_flight_limit_and_sheds_the_excess(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    """ADMISSION_LATENCY_MS far below any real answer time: every answer is slow, so round by
    round the limit halves down to its floor of 2, and a burst is then mostly shed with 429
    while every admitted request is still answered in full."""
    settings = service_settings(
        served_model, feature_redis.url, max_in_flight=64, admission_latency_ms=0.001
    )
    running = ServiceThread(settings).start()
    running.wait_warm()
    limiter = running.app.score_endpoint.limiter
    user = int(served_model.features.user_ids[0])
    try:

        async def burst(size: int) -> list[int]:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                answers = await asyncio.gather(*(_post(http, user) for _ in range(size)))
            assert all(r.status_code in (200, 429) for r in answers), [r.text for r in answers]
            assert all(len(r.json()["scores"]) == 10 for r in answers if r.status_code == 200)
            return [r.status_code for r in answers]

        first = asyncio.run(burst(40))
        assert first == [200] * 40  # the limit starts at MAX_IN_FLIGHT
        limits = [limiter.limit]
        for _ in range(20):  # rounds of max(limit, 20) answers: 64 -> 32 -> 16 -> 8 -> 4 -> 2
            asyncio.run(burst(40))
            limits.append(limiter.limit)
            if limiter.limit == 2:
                break
        assert limits[-1] == 2 and limits == sorted(limits, reverse=True), limits
        last = asyncio.run(burst(40))
        assert last.count(429) > 0 and last.count(200) > 0
        text = httpx.get(running.url + "/metrics").text
        assert metric(text, "qin_shed_requests_total") >= last.count(429)
        assert metric(text, "qin_in_flight_limit") == limiter.limit
        assert metric(text, "qin_in_flight") == 0
    finally:
        running.stop()


def test_too_many_requests_in_flight_are_shed_before_any_work(
    served_model: ServedModel, feature_redis: RedisServer
) -> None:
    settings = service_settings(served_model, feature_redis.url, max_in_flight=2)
    running = ServiceThread(settings).start()
    running.wait_warm()
    gate = Gate(running)
    endpoint = running.app.score_endpoint
    user = int(served_model.features.user_ids[0])
    try:

        async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                held = [asyncio.create_task(_post(http, user)) for _ in range(2)]
                await wait_until_async(gate.entered.is_set, what="a batch held in the model")
                await wait_until_async(
                    lambda: endpoint.in_flight == 2,
                    what="both requests admitted (held in the model or queued behind it)",
                )
                shed = await _post(http, user)
                # shed before any work: answered while both admitted requests are still held
                assert gate.finished == 0 and endpoint.in_flight == 2
                assert not any(task.done() for task in held)
                gate.open.set()
                return list(await asyncio.gather(*held)), shed

        admitted, shed = asyncio.run(scenario())
        assert shed.status_code == 429 and shed.json()["error"] == "overloaded"
        assert shed.headers["retry-after"] == "1"
        assert [r.status_code for r in admitted] == [200, 200]
        text = httpx.get(running.url + "/metrics").text
        assert metric(text, "qin_shed_requests_total") == 1
        assert metric(text, "qin_requests_total", 'status="429"') == 1
        assert metric(text, "qin_requests_total", 'status="200"') == 2
    finally:
        running.stop()
