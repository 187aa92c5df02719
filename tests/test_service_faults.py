"""Faults with real processes: Redis absent at start, killed while serving (503 or degraded mode),
frozen with SIGSTOP (timeouts), killed and restarted under load. Each checks the answers, their
statuses, the recovery time, and that every request got an answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.features.loader import load_dataset
from tests.service_stack import ServedModel, ServiceThread, service_settings
from tests.support.redis import RedisServer, make_certificates
from tests.support.wait import wait_until_async
from tests.test_service import metric

TOLERANCE = 1e-5


def test_redis_absent_at_start_then_ready_once_it_answers(
    served_model: ServedModel, redis_server: RedisServer
) -> None:
    redis_server.stop()
    running = ServiceThread(service_settings(served_model, redis_server.url)).start()
    try:
        running.wait_warm()
        down = httpx.get(running.url + "/readyz")
        assert down.status_code == 503 and down.json()["redis"]["ok"] is False
        assert down.json()["model"]["warmed"] is True
        redis_server.start()
        load_dataset(redis_server.url, served_model.data, prefix="qin", history_len=64, keep=2)
        # ready at once: the first probe after Redis answers again says so (no backoff)
        ready = httpx.get(running.url + "/readyz")
        assert ready.status_code == 200, ready.text
        answer = httpx.post(running.url + "/score", json={"user_id": 1, "item_ids": [1]})
        assert answer.status_code == 200
    finally:
        running.stop()


@pytest.fixture
def degraded(served_model: ServedModel, feature_redis: RedisServer) -> Iterator[ServiceThread]:
    settings = service_settings(served_model, feature_redis.url, degraded_mode="empty_history")
    with ServiceThread(settings) as running:
        yield running


def test_degraded_mode_scores_without_redis_and_says_so(
    degraded: ServiceThread, served_model: ServedModel, feature_redis: RedisServer
) -> None:
    user = int(served_model.features.user_ids[0])
    cached = [1, 2, 3, 4]
    vocab = served_model.features.item_vocab
    with httpx.Client(base_url=degraded.url, timeout=30) as http:
        normal = http.post("/score", json={"user_id": user, "item_ids": cached}).json()
        assert normal["degraded"] is False and normal["history_source"] == "stored"
        feature_redis.stop(save=True)
        started = time.monotonic()
        # item 250 was never read by this process: it is scored as an unseen item
        answer = http.post("/score", json={"user_id": user, "item_ids": [*cached, 250]})
        # Scored at once, not after the request's (generous) deadline; the error-kind metric below
        # says it was a refused connection, not a timeout.
        assert time.monotonic() - started < degraded.settings.request_timeout_s / 2
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["degraded"] is True and body["history_source"] == "unavailable"
        assert body["history_length"] == 0
        expected = served_model.reference(np.zeros(0, np.int64), [*cached, vocab + 1])
        np.testing.assert_allclose(body["scores"], expected, atol=TOLERANCE, rtol=0)
        text = http.get("/metrics").text
        assert metric(text, "qin_degraded_requests_total") == 1
        assert metric(text, "qin_feature_store_errors_total", 'kind="StoreUnavailable"') == 1
        feature_redis.start()
        recovered = http.post("/score", json={"user_id": user, "item_ids": cached}).json()
        assert recovered["degraded"] is False and recovered["history_source"] == "stored"
        np.testing.assert_allclose(recovered["scores"], normal["scores"], atol=1e-7, rtol=0)


def test_frozen_redis_times_out_fast_and_recovers(
    service: ServiceThread, served_model: ServedModel, feature_redis: RedisServer
) -> None:
    payload = {"user_id": int(served_model.features.user_ids[0]), "item_ids": [1, 2]}
    timeout = service.settings.redis_timeout_s
    with httpx.Client(base_url=service.url, timeout=30) as http:
        assert http.post("/score", json=payload).status_code == 200
        feature_redis.pause()
        try:
            started = time.monotonic()
            slow = http.post("/score", json=payload)
            waited = time.monotonic() - started
            assert slow.status_code == 504, slow.text
            assert slow.json()["error"] == "feature_store_timeout"
            # Cut by the Redis timeout, not by the request's 60 s deadline (the error code says
            # which); the upper bound leaves a busy machine room.
            assert timeout <= waited < service.settings.request_timeout_s / 2
        finally:
            feature_redis.resume()
        assert http.post("/score", json=payload).status_code == 200
        text = http.get("/metrics").text
    assert metric(text, "qin_feature_store_errors_total", 'kind="StoreTimeout"') == 1
    assert metric(text, "qin_requests_total", 'status="504"') == 1


def test_redis_killed_and_restarted_under_load(
    service: ServiceThread, served_model: ServedModel, feature_redis: RedisServer
) -> None:
    users = served_model.features.user_ids[:20].tolist()

    # (sent, answered, status) of every request, in the order they were answered
    Answer = tuple[float, float, int]

    async def scenario() -> tuple[list[Answer], float, float, float]:
        answers: list[Answer] = []
        stop = asyncio.Event()

        async def client(http: httpx.AsyncClient, worker: int) -> None:
            while not stop.is_set():
                payload = {"user_id": users[worker], "item_ids": list(range(1, 30))}
                sent = time.monotonic()
                response = await http.post("/score", json=payload)
                answers.append((sent, time.monotonic(), response.status_code))
                await asyncio.sleep(0.005)  # think time: the phases below wait on answers

        def count(status: int, since: float) -> int:
            return sum(1 for sent, _, s in answers if s == status and sent > since)

        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            workers = [asyncio.create_task(client(http, w)) for w in range(8)]
            await wait_until_async(lambda: count(200, 0) >= 24, what="24 answers before the kill")
            await asyncio.to_thread(feature_redis.stop, True)
            killed = time.monotonic()
            await wait_until_async(
                lambda: count(503, killed) >= 16, what="16 requests refused while Redis is down"
            )
            # Redis answers before start() returns (it waits for a PING): a request sent in
            # between may rightly be scored, so "down" ends when the restart begins.
            restarting = time.monotonic()
            await asyncio.to_thread(feature_redis.start)
            back = time.monotonic()
            await wait_until_async(
                lambda: count(200, back) >= 40, what="40 answers after Redis returned"
            )
            stop.set()
            await asyncio.gather(*workers)
        return answers, killed, restarting, back

    answers, killed, restarting, back = asyncio.run(scenario())
    statuses = {status for _, _, status in answers}
    assert statuses <= {200, 503}, statuses  # answered, never 500, never hung
    during = [s for sent, done, s in answers if killed < sent and done < restarting]
    assert during and set(during) == {503}, "a request was scored without Redis"
    # recovered at once: every request sent after Redis was back, and every one answered after
    # the first success, is scored (a stale pooled connection is replaced, not reported)
    assert all(s == 200 for sent, _, s in answers if sent > back)
    first_ok = min(done for _, done, s in answers if s == 200 and done > back)
    assert all(s == 200 for _, done, s in answers if done > first_ok)
    text = httpx.get(service.url + "/metrics").text
    # every request the clients sent was answered and counted (none lost)
    counted = sum(metric(text, "qin_requests_total", f'status="{status}"') for status in (200, 503))
    assert counted == len(answers)


def test_a_password_protected_redis_is_used_and_a_wrong_password_is_reported_safely(
    served_model: ServedModel, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis", password="s3cret-pw") as redis:
        load_dataset(redis.url, served_model.data, prefix="qin", history_len=64, keep=2)
        with ServiceThread(service_settings(served_model, redis.url)) as running:
            assert httpx.get(running.url + "/readyz").status_code == 200
            payload = {"user_id": 1, "item_ids": [1, 2]}
            assert httpx.post(running.url + "/score", json=payload).status_code == 200
        wrong = redis.url.replace("s3cret-pw", "wrong-pw")
        with ServiceThread(service_settings(served_model, wrong)) as running:
            ready = httpx.get(running.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["redis"]["ok"] is False
            refused = httpx.post(running.url + "/score", json={"user_id": 1, "item_ids": [1]})
            assert refused.status_code == 503
            for text in (ready.text, refused.text):
                assert "wrong-pw" not in text and "s3cret" not in text


def test_a_tls_redis_is_used_with_a_client_certificate_and_a_wrong_ca_is_refused(
    served_model: ServedModel, tmp_path: Path
) -> None:
    """rediss:// with REDIS_TLS_*: a Redis that speaks only TLS and requires client
    certificates serves features; trusting another CA fails readiness, without a trace."""
    certs = make_certificates(tmp_path / "certs")
    other = make_certificates(tmp_path / "other")
    with RedisServer(tmp_path / "redis", tls=certs, require_client_cert=True) as redis:
        tls = {
            "redis_tls_ca_file": certs.ca,
            "redis_tls_cert_file": certs.client_cert,
            "redis_tls_key_file": certs.client_key,
        }
        settings = service_settings(served_model, redis.url, **tls)
        load_dataset(
            redis.url, served_model.data, prefix="qin", history_len=64, keep=2,
            tls=settings.redis_tls(),
        )  # fmt: skip
        with ServiceThread(settings) as running:
            assert httpx.get(running.url + "/readyz").status_code == 200
            user = int(served_model.features.user_ids[0])
            answer = httpx.post(running.url + "/score", json={"user_id": user, "item_ids": [1, 2]})
            assert answer.status_code == 200 and answer.json()["history_source"] == "stored"
            expected = served_model.reference(served_model.history_of(user), [1, 2])
            np.testing.assert_allclose(answer.json()["scores"], expected, atol=TOLERANCE, rtol=0)
        distrusting = service_settings(
            served_model, redis.url, **{**tls, "redis_tls_ca_file": other.ca}
        )
        with ServiceThread(distrusting) as running:
            ready = httpx.get(running.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["redis"]["ok"] is False
            refused = httpx.post(running.url + "/score", json={"user_id": 1, "item_ids": [1]})
            assert refused.status_code == 503
            assert "Traceback" not in ready.text + refused.text


def test_tls_settings_are_checked_before_anything_connects(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    pem = tmp_path / "ca.pem"
    pem.write_text("not checked here, only that it exists")
    cases = {
        "need a rediss:// REDIS_URL, not redis://": {
            "redis_url": "redis://:pw@127.0.0.1:6379/0", "redis_tls_ca_file": pem,
        },
        "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together": {
            "redis_url": "rediss://127.0.0.1:6379/0", "redis_tls_cert_file": pem,
        },
        "REDIS_TLS_CA_FILE: no such file": {
            "redis_url": "rediss://127.0.0.1:6379/0", "redis_tls_ca_file": tmp_path / "absent.pem",
        },
    }  # fmt: skip
    for message, values in cases.items():
        with pytest.raises(ValidationError, match=message) as caught:
            Settings(**values)
        assert ":pw@" not in str(caught.value)
    assert Settings(redis_url="redis://127.0.0.1:6379/0").redis_tls() == {}
    secure = Settings(redis_url="rediss://127.0.0.1:6379/0", redis_tls_ca_file=pem)
    assert secure.redis_tls() == {"ssl_ca_certs": str(pem)}
