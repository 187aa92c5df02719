"""Bad input, generated: schemathesis against the service's own OpenAPI schema over real HTTP,
and hypothesis against the request parsing and the batch packing. A bounded number of cases
each, so CI stays fast; the property is the same everywhere: no 500, no crash, a clear answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError

from service.features import ItemFeatures
from service.features.loader import load_dataset
from service.packing import ScoringInput, bucket, pack
from service.schemas import ScoreRequest
from tests.redis_server import require_redis_server
from tests.service_stack import ServedModel, ServiceThread, service_settings
from tests.support.redis import RedisServer

CASES = 150


@pytest.fixture(scope="module")
def fuzzed_service(
    served_model: ServedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    executable = require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("fuzz-redis"), executable=executable) as redis:
        load_dataset(redis.url, served_model.data, prefix="qin", history_len=64, keep=2)
        settings = service_settings(served_model, redis.url, max_candidates=300)
        with ServiceThread(settings) as running:
            yield running


@pytest.mark.slow  # about 9 s on 2 cores: 150 generated requests per operation
def test_no_generated_request_gets_a_server_error(fuzzed_service: ServiceThread) -> None:
    """Every operation of the live OpenAPI schema, CASES generated requests each (valid and,
    by schemathesis' negative mode, invalid ones). Drawn through schemathesis' hypothesis
    strategies directly: its pytest plugin does not run under this pytest."""
    schema = schemathesis.openapi.from_url(fuzzed_service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/score", "/admin/reload", "/readyz"}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=fuzzed_service.url, timeout=30)
                seen.setdefault(case.path, set()).add(response.status_code)
                assert response.status_code < 500, (
                    case.method,
                    case.path,
                    case.body,
                    response.text,
                )
                if response.status_code >= 400:
                    body = response.json()
                    assert isinstance(body, dict) and "detail" in body, response.text
                    assert "Traceback" not in response.text

            try:
                check()
            except Unsatisfiable:
                # no invalid request exists for an operation without inputs (GET /healthz)
                assert mode == schemathesis.GenerationMode.NEGATIVE and operation.method == "get"
    # both accepted and refused requests were really generated for /score
    assert {200, 422} <= seen["/score"], seen


# ------------------------------------------------------------------------------------------------
# Request parsing: any JSON value either parses into a request that obeys the contract, or is a
# ValidationError (422); nothing else escapes.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
near_valid = st.fixed_dictionaries(
    {
        "user_id": st.integers(-5, 2**64),
        "item_ids": st.lists(st.integers(-5, 2**64), max_size=8),
    },
    optional={
        "likes_level": st.lists(st.integers(-2, 12), max_size=8),
        "views_level": st.lists(st.integers(-2, 12), max_size=8),
        "history": st.lists(st.integers(-3, 2**63), max_size=8),
    },
)


@given(st.one_of(json_values, near_valid))
@settings(max_examples=400, deadline=None)
def test_request_parsing_accepts_only_the_contract(value: object) -> None:
    try:
        request = ScoreRequest.model_validate_json(json.dumps(value))
    except ValidationError:
        return
    assert 0 <= request.user_id < 2**63
    assert request.item_ids and all(1 <= i < 2**63 for i in request.item_ids)
    for levels in (request.likes_level, request.views_level):
        assert levels is None or (
            len(levels) == len(request.item_ids) and all(0 <= x <= 10 for x in levels)
        )
    assert request.history is None or all(0 <= i < 2**63 for i in request.history)


# ------------------------------------------------------------------------------------------------
# Packing: any batch keeps each request's candidates, in order, with its own user and history.


def _items(ids: list[int]) -> ItemFeatures:
    items = ItemFeatures.zeros(len(ids))
    items.ids[:] = ids
    items.tags[:, 0] = np.asarray(ids) % 5
    items.vectors[:, 0] = ids
    return items


requests_strategy = st.lists(
    st.tuples(
        st.lists(st.integers(1, 10**6), max_size=80),  # history
        st.lists(st.integers(0, 10**6), min_size=1, max_size=30),  # candidates
    ),
    min_size=1,
    max_size=6,
)


@given(requests_strategy, st.booleans(), st.integers(1, 70))
@settings(max_examples=200, deadline=None)
def test_packing_keeps_every_request_whole(
    requests: list[tuple[list[int], list[int]]], pad: bool, history_len: int
) -> None:
    inputs = [ScoringInput(_items(h), _items(c)) for h, c in requests]
    packed = pack(inputs, history_len, pad=pad)
    feeds = packed.feeds
    total = sum(len(c) for _, c in requests)
    assert packed.candidates == total
    assert len(feeds["candidate_ids"]) == (bucket(total) if pad else total)
    assert feeds["history_ids"].shape == (len(requests), history_len)
    parts = packed.split(feeds["candidate_ids"].astype(np.float32))
    for row, ((history, candidates), part) in enumerate(zip(requests, parts, strict=True)):
        assert part.tolist() == candidates  # own candidates, in order
        own = feeds["candidate_user"][packed.bounds[row] : packed.bounds[row + 1]]
        assert (own == row).all()
        kept = history[-history_len:]
        stored = feeds["history_ids"][row]
        assert stored[history_len - len(kept) :].tolist() == kept  # most recent, right-aligned
        assert not stored[: history_len - len(kept)].any()  # padding first
        np.testing.assert_array_equal(
            feeds["history_vectors"][row, history_len - len(kept) :, 0], np.asarray(kept, float)
        )


def test_the_fuzz_suite_has_a_real_server(fuzzed_service: ServiceThread) -> None:
    """Guards the schemathesis test against vacuously passing on an empty schema."""
    import httpx

    paths = httpx.get(fuzzed_service.url + "/openapi.json").json()["paths"]
    assert {"/score", "/readyz", "/healthz", "/metrics", "/admin/reload"} <= set(paths)
    assert Path(fuzzed_service.settings.model_path).is_file()
