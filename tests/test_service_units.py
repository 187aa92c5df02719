"""The service's pure parts: the flush rule, batch selection, packing, provider choice, the request
schema and the settings. No server, no Redis."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest
from pydantic import ValidationError

from service.batching import Job, flush_delay, take_batch
from service.features import ItemFeatures
from service.packing import ScoringInput, bucket, buckets_up_to, pack
from service.runtime import CPU, CUDA, ModelError, check_provider, choose_providers
from service.schemas import ScoreRequest
from service.score_endpoint import AdaptiveLimit
from service.settings import Settings

# ------------------------------------------------------------------------------------------------
# Flush rule


def test_flush_waits_for_the_rest_of_max_wait() -> None:
    assert flush_delay(queued=10, oldest_age=0.0003, max_candidates=100, max_wait=0.001) == (
        pytest.approx(0.0007)
    )


@pytest.mark.parametrize(
    ("queued", "age"),
    [(100, 0.0), (150, 0.0), (10, 0.001), (10, 0.5)],
    ids=["full", "over-full", "waited-exactly", "waited-longer"],
)
def test_flush_closes_a_full_or_old_batch(queued: int, age: float) -> None:
    assert flush_delay(queued, age, max_candidates=100, max_wait=0.001) == 0.0


def test_flush_with_zero_wait_never_waits() -> None:
    assert flush_delay(1, 0.0, max_candidates=100, max_wait=0.0) == 0.0


def test_flush_rule_refuses_an_empty_queue() -> None:
    with pytest.raises(ValueError):
        flush_delay(0, 0.0, 100, 0.001)


# ------------------------------------------------------------------------------------------------
# Batch selection


def _items(count: int, first_id: int = 1) -> ItemFeatures:
    items = ItemFeatures.zeros(count)
    items.ids[:] = np.arange(first_id, first_id + count)
    items.tags[:, 0] = items.ids % 7
    items.vectors[:] = items.ids[:, None] / 100
    items.likes[:] = items.ids % 11
    items.views[:] = (items.ids + 3) % 11
    return items


def _job(loop: asyncio.AbstractEventLoop, size: int, deadline: float = 1e9) -> Job:
    return Job(ScoringInput(_items(0), _items(size)), deadline, loop.create_future(), enqueued=0.0)


def test_take_batch_is_fifo_and_stops_before_the_limit() -> None:
    loop = asyncio.new_event_loop()
    try:
        jobs = [_job(loop, size) for size in (40, 50, 20, 5)]
        queue = deque(jobs)
        batch, expired = take_batch(queue, max_candidates=100, now=0.0)
        # 40 + 50 fit, 20 would make 110: the batch stops there (no reordering, no starvation)
        assert batch == jobs[:2] and expired == []
        assert list(queue) == jobs[2:]
    finally:
        loop.close()


def test_take_batch_sets_aside_expired_and_abandoned_requests() -> None:
    loop = asyncio.new_event_loop()
    try:
        late, live, abandoned, fresh = (
            _job(loop, 10, deadline=5.0),
            _job(loop, 10),
            _job(loop, 10),
            _job(loop, 10),
        )
        abandoned.future.cancel()
        queue = deque([late, live, abandoned, fresh])
        batch, expired = take_batch(queue, max_candidates=100, now=6.0)
        assert batch == [live, fresh] and expired == [late, abandoned] and not queue
    finally:
        loop.close()


def test_take_batch_always_takes_one_request() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = deque([_job(loop, 100), _job(loop, 1)])
        batch, _ = take_batch(queue, max_candidates=100, now=0.0)
        assert [job.size for job in batch] == [100]
    finally:
        loop.close()


# ------------------------------------------------------------------------------------------------
# Packing


def test_buckets_are_powers_of_two_covering_the_limit() -> None:
    assert [bucket(n) for n in (1, 2, 3, 64, 65, 1000)] == [1, 2, 4, 64, 128, 1024]
    assert buckets_up_to(100) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert buckets_up_to(64) == [1, 2, 4, 8, 16, 32, 64]


def test_pack_groups_by_user_and_right_aligns_histories() -> None:
    long_history = _items(70, first_id=100)  # longer than the model reads
    inputs = [
        ScoringInput(_items(3, first_id=10), _items(2, first_id=1)),
        ScoringInput(_items(0), _items(3, first_id=5), likes_level=np.array([9, 8, 7])),
        ScoringInput(long_history, _items(1, first_id=50)),
    ]
    packed = pack(inputs, history_len=64)
    feeds = packed.feeds
    assert feeds["history_ids"].shape == (3, 64)
    # the most recent item is last; padding zeros come first; an empty history is all padding
    assert feeds["history_ids"][0, -3:].tolist() == [10, 11, 12]
    assert not feeds["history_ids"][0, :-3].any() and not feeds["history_ids"][1].any()
    # a long history keeps its last 64 items
    assert feeds["history_ids"][2].tolist() == list(range(106, 170))
    np.testing.assert_array_equal(feeds["history_vectors"][0, -3:], _items(3, 10).vectors)
    np.testing.assert_array_equal(feeds["history_tags"][2], long_history.tags[-64:])
    assert feeds["candidate_user"].tolist() == [0, 0, 1, 1, 1, 2]
    assert feeds["candidate_ids"].tolist() == [1, 2, 5, 6, 7, 50]
    # stored levels unless overridden
    assert feeds["likes_level"].tolist() == [1, 2, 9, 8, 7, 50 % 11]
    assert feeds["views_level"].tolist() == [4, 5, 8, 9, 10, 53 % 11]
    assert packed.candidates == 6
    parts = packed.split(np.arange(6, dtype=np.float32))
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3, 4], [5]]
    assert {k: v.dtype.name for k, v in feeds.items()} == {
        "history_ids": "int64",
        "history_tags": "int64",
        "history_vectors": "float32",
        "candidate_user": "int64",
        "candidate_ids": "int64",
        "candidate_tags": "int64",
        "candidate_vectors": "float32",
        "likes_level": "int64",
        "views_level": "int64",
    }


def test_pack_pads_candidates_to_a_bucket_and_split_drops_the_padding() -> None:
    inputs = [ScoringInput(_items(2), _items(3)), ScoringInput(_items(1), _items(2))]
    packed = pack(inputs, history_len=8, pad=True)
    assert len(packed.feeds["candidate_ids"]) == 8 and packed.candidates == 5
    assert packed.feeds["candidate_ids"][5:].tolist() == [0, 0, 0]
    assert not packed.feeds["candidate_vectors"][5:].any()
    parts = packed.split(np.arange(8, dtype=np.float32))
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4]]


def test_pack_refuses_an_empty_batch() -> None:
    with pytest.raises(ValueError):
        pack([], history_len=64)


# ------------------------------------------------------------------------------------------------
# Provider choice (no GPU here: the available-provider lists are given, as onnxruntime reports them)


def test_auto_asks_for_cuda_only_when_onnxruntime_offers_it() -> None:
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]


def test_cuda_required_but_missing_is_refused() -> None:
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])
    # the GPU build silently falling back to CPU is caught from the session's real providers
    with pytest.raises(ModelError, match="CUDA failed"):
        check_provider("cuda", [CUDA, CPU], [CPU])
    assert check_provider("auto", [CUDA, CPU], [CPU]) == CPU
    assert check_provider("auto", [CUDA, CPU], [CUDA, CPU]) == CUDA


# ------------------------------------------------------------------------------------------------
# Request schema and settings


def _errors(payload: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as caught:
        ScoreRequest.model_validate(payload)
    return [(e["loc"], e["type"]) for e in caught.value.errors()]


def test_request_accepts_the_documented_forms() -> None:
    request = ScoreRequest.model_validate(
        {"user_id": 42, "item_ids": [7, 19], "likes_level": [0, 10], "history": [0, 3]}
    )
    assert request.item_ids == [7, 19] and request.views_level is None


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"item_ids": [1]}, ("user_id",)),
        ({"user_id": 1}, ("item_ids",)),
        ({"user_id": 1, "item_ids": []}, ("item_ids",)),
        ({"user_id": "1", "item_ids": [1]}, ("user_id",)),
        ({"user_id": 1, "item_ids": ["7"]}, ("item_ids", 0)),
        ({"user_id": 1, "item_ids": [7.5]}, ("item_ids", 0)),
        ({"user_id": 1, "item_ids": [0]}, ("item_ids", 0)),
        ({"user_id": 1, "item_ids": [2**63]}, ("item_ids", 0)),
        ({"user_id": -1, "item_ids": [1]}, ("user_id",)),
        ({"user_id": 1, "item_ids": [1], "likes_level": [11]}, ("likes_level", 0)),
        ({"user_id": 1, "item_ids": [1], "history": [-3]}, ("history", 0)),
        ({"user_id": 1, "item_ids": [1], "item_id": 3}, ("item_id",)),
        ({"user_id": 1, "item_ids": [1, 2], "views_level": [1]}, ()),
        ({"user_id": True, "item_ids": [1]}, ("user_id",)),
    ],
)
def test_request_rejects_bad_input_naming_the_field(payload: dict, where: tuple) -> None:
    assert any(loc == where for loc, _ in _errors(payload))


def test_settings_refuse_a_batch_smaller_than_a_request() -> None:
    with pytest.raises(ValidationError, match="BATCH_MAX_CANDIDATES"):
        Settings(max_candidates=500, batch_max_candidates=100)
    with pytest.raises(ValidationError, match="QUEUE_MAX_CANDIDATES"):
        Settings(max_candidates=500, queue_max_candidates=100)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("PROVIDER", "cpu")
    monkeypatch.setenv("PORT", "9001")
    settings = Settings()
    assert (settings.batch_max_wait_ms, settings.provider, settings.port) == (2.5, "cpu", 9001)
    monkeypatch.setenv("PROVIDER", "tpu")
    with pytest.raises(ValidationError, match="provider"):
        Settings()


def test_the_docs_document_every_setting_with_its_default() -> None:
    """docs/configuration.md's table is the generated one (python -m bench.readme), and the README
    links to it."""
    from pathlib import Path

    from service.settings import settings_markdown

    root = Path(__file__).resolve().parent.parent
    assert settings_markdown() in (root / "docs" / "configuration.md").read_text()
    assert "docs/configuration.md" in (root / "README.md").read_text()


def test_a_fixed_limit_ignores_latency() -> None:
    fixed = AdaptiveLimit(ceiling=64)
    for _ in range(500):
        fixed.observe(10.0, concurrency=64)
    assert fixed.limit == 64


def _round(limit: AdaptiveLimit, answers: int, slow: int, concurrency: int, refused: bool) -> None:
    """Feed one round of answers: ``slow`` of them over a 10 ms target, the rest at 1 ms."""
    if refused:
        limit.refused()
    for index in range(answers):
        limit.observe(0.050 if index < slow else 0.001, concurrency)


def test_the_adaptive_limit_cuts_by_half_the_slow_share_once_per_round() -> None:
    limit = AdaptiveLimit(ceiling=64, target=0.010, floor=2, spare=16, quantile=0.9, min_round=20)
    _round(limit, answers=63, slow=63, concurrency=64, refused=True)
    assert limit.limit == 64  # a round is max(limit, 20) answers: no verdict yet
    limit.observe(0.050, 64)
    assert limit.limit == 32  # every answer slow: halved, once
    _round(limit, answers=32, slow=8, concurrency=32, refused=True)
    assert limit.limit == int(32 * (1 - 0.25 / 2))  # a quarter slow: cut by an eighth
    for _ in range(40):
        _round(limit, answers=32, slow=32, concurrency=32, refused=True)
    assert limit.limit == 2  # never below the floor


def test_the_adaptive_limit_tolerates_the_quantile_and_grows_only_when_it_refused() -> None:
    limit = AdaptiveLimit(ceiling=64, target=0.010, floor=2, spare=16, quantile=0.9, min_round=20)
    limit.value = 20.0
    _round(limit, answers=20, slow=2, concurrency=20, refused=True)
    assert limit.limit == 21  # 10% slow is within the 0.9 quantile; it refused someone: +1
    _round(limit, answers=21, slow=3, concurrency=21, refused=True)
    assert limit.limit == 19  # 3 of 21 slow (14%) is over: cut by 7%
    _round(limit, answers=20, slow=0, concurrency=19, refused=False)
    assert limit.limit == 19  # fast, but nobody was refused: no raise
    for _ in range(200):
        _round(limit, answers=64, slow=0, concurrency=64, refused=True)
    assert limit.limit == 64  # never past the ceiling


def test_an_unused_adaptive_limit_shrinks_towards_the_load_but_keeps_spare_room() -> None:
    limit = AdaptiveLimit(ceiling=128, target=0.010, floor=2, spare=16, quantile=0.9, min_round=20)
    _round(limit, answers=128, slow=0, concurrency=40, refused=False)
    assert limit.limit == 80  # twice the peak concurrency of the round
    _round(limit, answers=80, slow=0, concurrency=3, refused=False)
    assert limit.limit == 16  # light load: the spare room is left
    limit.value = 10.0  # after cuts below the spare room ...
    _round(limit, answers=20, slow=0, concurrency=10, refused=False)
    assert limit.limit == 10  # ... a calm round does not reopen it: only refusals raise it
