"""The load benchmark's pure parts: open-loop schedule, summary, HTTP framing, ladder, verdicts.

No timing is asserted: the machine is shared. One test runs the generator for real against a
tiny in-process HTTP server, to check that every scheduled request is sent and recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from bench.ladder import (
    MIN_MEASURED_REQUESTS,
    REFINEMENTS,
    climb,
    comparison,
    ladder,
    service_rates,
    step_seconds,
    sustained,
)
from bench.load_report import table
from bench.loadgen import (
    STATUS_ERROR,
    STATUS_TIMEOUT,
    ConnectionPool,
    HttpError,
    OpenLoopRun,
    Outcome,
    http_request,
    parse_head,
    percentiles_ms,
    read_users,
    schedule,
    score_bodies,
    summarize,
)
from bench.report import commit
from bench.scrape import mean_batch, parse_metrics, sample_value, selector_labels, stage_means_ms
from bench.service_load import build_parser
from bench.supervisor import python_command, running_service, supervised
from service.metrics import Metrics

# --------------------------------------------------------------------------------------------
# Schedule and summary


def test_schedule_is_index_over_rate_without_drift() -> None:
    due = schedule(1000.0, 30.0)
    assert len(due) == 30_000
    assert due[0] == 0.0
    assert due[-1] == 29_999 / 1000.0  # computed from the index, not accumulated
    assert np.all(np.diff(due) > 0)


def test_schedule_counts_fractional_rates_and_rejects_nonsense() -> None:
    assert len(schedule(7.5, 2.0)) == 15
    assert len(schedule(3.0, 0.5)) == 1
    with pytest.raises(ValueError):
        schedule(0.0, 10.0)


def test_percentiles_are_nearest_rank_in_ms() -> None:
    seconds = np.arange(1, 101) / 1000.0  # 1..100 ms
    figures = percentiles_ms(seconds)
    assert figures == {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert percentiles_ms(np.zeros(0))["p99_ms"] is None


def outcome(latency: float, statuses: list[int], rate: float = 10.0) -> Outcome:
    due = schedule(rate, len(statuses) / rate)
    result = Outcome.empty(due)
    result.started[:] = due
    result.sent[:] = due + 0.001
    result.done[:] = due + latency
    result.status[:] = statuses
    return result


def test_summary_leaves_warmup_out_and_counts_statuses() -> None:
    statuses = [500] * 10 + [200] * 85 + [429] * 3 + [STATUS_TIMEOUT, STATUS_ERROR]
    summary = summarize(outcome(0.02, statuses), rate=10.0, duration=10.0, warmup=1.0, candidates=5)
    assert summary["requests"] == 90  # the first second (the ten 500s) is warm-up
    assert summary["status_counts"] == {"200": 85, "429": 3, "timeout": 1, "error": 1}
    assert summary["ok"] == 85
    assert summary["non_ok"] == 5
    assert summary["timeouts"] == 1 and summary["errors"] == 1
    assert summary["latency"]["p50_ms"] == pytest.approx(20.0)
    assert summary["latency_from_send"]["p50_ms"] == pytest.approx(19.0)
    assert summary["send_lag"]["max_ms"] == pytest.approx(1.0)
    assert summary["achieved_rate"] == pytest.approx(85 / 9.0)
    assert summary["requests_per_s"] == pytest.approx(88 / 9.0)
    assert summary["candidates_per_s"] == pytest.approx(85 * 5 / 9.0)
    assert summary["generator_late"] is False


def test_summary_stretches_the_span_when_the_server_falls_behind() -> None:
    late = outcome(0.01, [200] * 100)
    late.done[:] = late.scheduled + np.linspace(0.0, 10.0, 100)  # a growing backlog
    summary = summarize(late, rate=10.0, duration=10.0, warmup=0.0, candidates=1)
    assert summary["span_s"] == pytest.approx(late.done.max())
    assert summary["achieved_rate"] < 0.6 * summary["offered_rate"]


def test_summary_of_a_run_with_no_answers() -> None:
    summary = summarize(
        outcome(0.0, [STATUS_ERROR] * 20), rate=10.0, duration=2.0, warmup=0.0, candidates=3
    )
    assert summary["achieved_rate"] == 0.0
    assert summary["latency"]["p99_ms"] is None


# --------------------------------------------------------------------------------------------
# Requests and HTTP framing


def test_score_bodies_draw_users_and_candidates_in_range() -> None:
    import json

    bodies = score_bodies(np.array([4, 8]), item_vocab=50, candidates=100, count=20, history=64)
    decoded = [json.loads(body) for body in bodies]
    assert {d["user_id"] for d in decoded} <= {4, 8}
    assert all(len(d["item_ids"]) == 100 and len(d["history"]) == 64 for d in decoded)
    assert all(1 <= i < 50 for d in decoded for i in d["item_ids"] + d["history"])
    stored = json.loads(score_bodies(np.array([4]), 50, 3, 1)[0])
    assert "history" not in stored


def test_read_users_from_file_and_list(tmp_path: Any) -> None:
    path = tmp_path / "users.txt"
    path.write_text("# users with 64 items\n3\n\n5  # trailing comment\n")
    assert read_users(path, "7,9").tolist() == [3, 5, 7, 9]
    with pytest.raises(ValueError):
        read_users(None, "")


def test_http_request_frames_the_body() -> None:
    wire = http_request("POST", "h:1", "/score", b'{"a":1}')
    head, body = wire.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /score HTTP/1.1\r\n")
    assert b"Content-Length: 7" in head and body == b'{"a":1}'
    assert b"Content-Length" not in http_request("GET", "h:1", "/healthz")


def test_parse_head_reads_framing_and_keep_alive() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: x\r\n\r\n")
    assert (head.status, head.content_length, head.chunked, head.keep_alive) == (
        200, 12, False, True,
    )  # fmt: skip
    closing = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n")
    assert closing.status == 503 and not closing.keep_alive and closing.content_length is None
    chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.chunked
    assert not parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive
    with pytest.raises(HttpError):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


async def _tiny_server(statuses: list[int]) -> asyncio.Server:
    """Answers each request with the next status of ``statuses`` (keep-alive, chunked on 202)."""
    answers = iter(statuses)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                status = next(answers, 200)
                if status == 202:
                    writer.write(b"HTTP/1.1 202 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    writer.write(b"3\r\nabc\r\n0\r\n\r\n")
                else:
                    writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_open_loop_run_sends_every_request_and_records_it() -> None:
    statuses = [200] * 20 + [429, 202] + [200] * 18

    async def scenario() -> Outcome:
        server = await _tiny_server(statuses)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port, limit=4)
        request = http_request("POST", f"127.0.0.1:{port}", "/score", b"{}")
        try:
            return await OpenLoopRun(pool, [request], schedule(200.0, 0.2), 5.0).run()
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    result = asyncio.run(scenario())
    assert len(result.status) == 40
    assert sorted(result.status.tolist()) == sorted(statuses)
    assert not np.isnan(result.sent).any() and np.all(result.done >= result.sent)
    assert np.all(result.started >= result.scheduled)


def test_unreachable_target_is_recorded_as_errors() -> None:
    async def scenario() -> Outcome:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nobody listens on ``port`` now
        pool = ConnectionPool("127.0.0.1", port, limit=2)
        return await OpenLoopRun(pool, [b"GET / HTTP/1.1\r\n\r\n"], schedule(100, 0.05), 2).run()

    assert set(asyncio.run(scenario()).status.tolist()) == {STATUS_ERROR}


# --------------------------------------------------------------------------------------------
# Orchestration: ladder, verdicts, metrics


def test_ladder_is_geometric_and_bounded() -> None:
    assert ladder(10, 2, 100) == [10, 20, 40, 80]
    assert ladder(5, 1.6, 30) == [5, 8, 12.8, 20.5]
    with pytest.raises(ValueError):
        ladder(10, 1.0, 100)


def step(offered: float, achieved: float, p50: float, p99: float | None) -> dict[str, Any]:
    return {
        "offered_rate": offered,
        "achieved_rate": achieved,
        "ok": 0 if p99 is None else 100,
        "latency": {"p50_ms": p50, "p99_ms": p99},
        "latency_from_send": {"p50_ms": p50 - 0.5, "p99_ms": p99},
    }


def test_sustained_needs_p99_and_rate() -> None:
    assert sustained(step(100, 95, 5, 40))
    assert not sustained(step(100, 95, 5, 60))  # tail too long
    assert not sustained(step(100, 80, 5, 10))  # fell behind or shed
    assert not sustained(step(100, 0, 0, None))


def test_comparison_headline_figures() -> None:
    naive = [step(10, 10, 20, 30), step(20, 19.5, 25, 45), step(40, 22, 900, 2000)]
    service = [
        step(20, 20, 3.0, 6),
        step(40, 40, 3.2, 7),
        step(80, 79, 4, 12),
        step(160, 100, 9, 80),
    ]
    summary = comparison(service, naive, floor_ms=1.0)
    assert summary["naive_max_sustainable_rate"] == 20
    assert summary["overhead_at_rate"] == 20
    assert summary["service_p50_minus_floor_ms"] == pytest.approx(1.5)  # 3.0 - 0.5 - 1.0
    assert summary["service_p50_minus_floor_from_due_ms"] == pytest.approx(2.0)
    assert summary["service_max_rate_p99_50ms"] == 79
    assert summary["naive_max_rate_p99_50ms"] == 19.5
    assert summary["throughput_ratio"] == pytest.approx(79 / 19.5)
    assert summary["naive_peak_rate"] == 22
    assert summary["throughput_ratio_vs_naive_peak"] == pytest.approx(79 / 22)
    assert summary["targets"]["overhead_met"] and not summary["targets"]["ratio_met"]


def test_comparison_when_naive_sustains_nothing() -> None:
    summary = comparison([step(5, 5, 3, 6)], [step(5, 3, 80, 200)], floor_ms=1.0)
    assert summary["naive_max_sustainable_rate"] is None
    assert summary["overhead_at_rate"] == 5  # the service's lowest step stands in
    assert summary["throughput_ratio"] is None
    assert summary["throughput_ratio_vs_naive_peak"] == pytest.approx(5 / 3)


def test_tight_p99_rate_is_the_highest_kept_up_with_step_within_5_ms() -> None:
    """The GPU target (p99 <= 5 ms at a given rate): a step that fell behind does not count,
    however short its tail, and a step over 5 ms does not either."""
    service = [
        step(500, 500, 2.0, 4.0),
        step(1000, 998, 2.5, 4.8),
        step(1500, 1490, 3.0, 5.5),  # tail over 5 ms
        step(2000, 1500, 3.0, 4.9),  # kept 75% of the offered rate: saturated
    ]
    summary = comparison(service, [], floor_ms=1.0)
    assert summary["service_max_rate_p99_5ms"] == 998
    assert summary["service_max_rate_p99_50ms"] == 1500
    assert comparison(service[2:], [], 1.0)["service_max_rate_p99_5ms"] is None


def test_naive_peak_bounds_nothing_unless_the_naive_ladder_saturated() -> None:
    """A naive ladder cut short by a slow tail at low load (it kept up with every rate it was
    offered) says nothing about its capacity: no lower-bound ratio from it."""
    summary = comparison([step(10, 10, 3, 6), step(40, 40, 3, 7)], [step(2, 2, 15, 54)], 1.0)
    assert summary["naive_peak_rate"] is None
    assert summary["throughput_ratio_vs_naive_peak"] is None
    assert not summary["targets"]["ratio_met"]


def test_climb_stops_after_the_first_unsustained_step_then_bisects() -> None:
    """The policy alone, with a fake service that sustains up to 100 req/s: the ladder stops at
    the first step over it, and REFINEMENTS geometric bisections narrow the gap."""
    offered: list[float] = []

    def measure(rate: float) -> dict[str, Any]:
        offered.append(rate)
        return step(rate, rate if rate <= 100 else 0.5 * rate, 5, 10)

    steps = climb([20, 40, 80, 160, 320], measure)
    assert offered[:4] == [20, 40, 80, 160]  # 320 is never offered
    assert len(offered) == 4 + REFINEMENTS
    assert offered[4] == pytest.approx((80 * 160) ** 0.5, rel=1e-2)  # 113: not sustained
    assert offered[5] == pytest.approx((80 * offered[4]) ** 0.5, rel=1e-2)  # 95.2: sustained
    assert [s["offered_rate"] for s in steps] == sorted(offered)
    # Every step sustained: the whole ladder, nothing bisected; the first unsustained: no gap.
    assert len(climb([20, 40], measure)) == 2
    assert [s["offered_rate"] for s in climb([200, 400], measure)] == [200]


def test_the_service_ladder_starts_at_the_naive_sustained_rate() -> None:
    naive = [step(10, 10, 20, 30), step(16, 16, 25, 45), step(25.6, 12, 900, 2000)]
    assert service_rates([10, 16, 25.6, 41], "service", naive) == [16, 25.6, 41]
    assert service_rates([10, 16, 25.6, 41], "naive", []) == [10, 16, 25.6, 41]
    assert service_rates([10, 16], "service", [step(10, 3, 80, 200)]) == [10, 16]


def test_low_rate_steps_run_long_enough_for_a_meaningful_p99() -> None:
    assert step_seconds(1000, duration=8, warmup=2) == 8
    assert step_seconds(10, duration=8, warmup=2) == 2 + MIN_MEASURED_REQUESTS / 10
    assert step_seconds(7, duration=8, warmup=2) * 7 >= MIN_MEASURED_REQUESTS + 2 * 7


METRICS = """\
# HELP qin_batch_candidates Candidates per model batch.
# TYPE qin_batch_candidates histogram
qin_batch_candidates_bucket{le="100.0"} 3.0
qin_batch_candidates_sum{model="a"} 1200.0
qin_batch_candidates_count{model="a"} 6.0
qin_batch_candidates_sum{model="b"} 300.0
qin_batch_candidates_count{model="b"} 3.0
qin_batch_requests_sum 15.0
qin_batch_requests_count 9.0
qin_requests_total{status="200"} 15.0
"""


def test_metrics_parsing_and_mean_batch() -> None:
    after = parse_metrics(METRICS)
    assert after["qin_batch_candidates_sum"] == 1500.0
    assert after["qin_batch_candidates_count"] == 9.0
    before = {"qin_batch_candidates_sum": 500.0, "qin_batch_candidates_count": 4.0}
    assert mean_batch(before, after, "qin_batch_candidates") == pytest.approx(200.0)
    assert mean_batch({}, after, "qin_batch_candidates") is None  # absent before: no delta
    assert mean_batch(after, after, "qin_batch_candidates") is None  # no batches in between
    assert parse_metrics("qin_requests_total 3\n") == {}


def test_sample_values_by_name_and_exact_labels() -> None:
    assert sample_value(METRICS, "qin_requests_total", {"status": "200"}) == 15.0
    assert sample_value(METRICS, "qin_requests_total", 'status="200"') == 15.0
    assert sample_value(METRICS, "qin_requests_total") is None  # only a labelled series
    assert sample_value(METRICS, "qin_batch_requests_sum") == 15.0
    assert sample_value(METRICS, "qin_batch_candidates_sum", 'model="b"') == 300.0
    assert sample_value(METRICS, "qin_absent_total") is None
    assert selector_labels('a="x",b="y, \\"z\\""') == {"a": "x", "b": 'y, "z"'}


def test_stage_means_come_from_the_services_own_metrics_per_stage() -> None:
    """Parsed from what the service's real registry renders, so a renamed metric or label
    breaks this test rather than silently emptying the benchmark's column."""
    metrics = Metrics()
    for redis_s, model_s in ((0.001, 0.002), (0.003, 0.002)):
        metrics.stages["redis"].observe(redis_s)
        metrics.stages["queue"].observe(0.0)
        metrics.stages["model"].observe(model_s)
        metrics.stages["total"].observe(redis_s + model_s)
    before = parse_metrics(metrics.render().decode())
    metrics.stages["redis"].observe(0.010)
    metrics.stages["queue"].observe(0.001)
    metrics.stages["model"].observe(0.004)
    metrics.stages["total"].observe(0.015)
    after = parse_metrics(metrics.render().decode())
    assert after["qin_stage_duration_seconds:redis_count"] == 3.0
    assert stage_means_ms({}, before) is None  # nothing to subtract from: no delta
    assert stage_means_ms(before, after) == pytest.approx(
        {"redis": 10.0, "queue": 1.0, "model": 4.0, "total": 15.0}
    )
    assert stage_means_ms(after, after) is None  # nothing scored in between (the naive service)


def test_table_shows_the_stage_breakdown_at_the_comparison_rate() -> None:
    step = {
        "offered_rate": 90.0, "achieved_rate": 90.0, "candidates_per_s": 9000.0, "ok": True,
        "latency": {"p50_ms": 4.0, "p95_ms": 5.0, "p99_ms": 6.0},
        "latency_from_send": {"p50_ms": 3.5},
        "mean_batch_candidates": 100.0, "mean_batch_requests": 1.0,
        "status_counts": {"200": 900}, "send_lag": {"p99_ms": 1.0},
        "stage_means_ms": {"redis": 1.2, "queue": 0.1, "model": 1.4, "total": 2.8},
    }  # fmt: skip
    naive = {**step, "stage_means_ms": None}
    floor = {"graph": "serving", "median_ms": 0.3, "p99_ms": 0.5, "calls": 10}
    results = {
        "services": {"naive": {"steps": [naive]}, "service": {"steps": [step]}},
        "summary": comparison([step], [naive], 0.3), "candidates": 100,
        "model_floor": floor, "step_seconds": 8, "warmup_seconds": 2, "load_average": [0.1],
    }  # fmt: skip
    text = table(results)
    assert "| 1.20 / 0.10 / 1.40 / 2.80 |" in text
    assert "features from Redis 1.20 ms, queue 0.10 ms, model batch 1.40 ms" in text
    assert "total 2.80 ms." in text
    assert "1 user x 100 candidates, history 64, model on CPU" in text
    # A result from a CUDA run says so, with its own request size.
    cuda = table({**results, "candidates": 200, "provider": "cuda"})
    assert "1 user x 200 candidates, history 64, model on CUDA" in cuda
    assert "Model-only floor (onnxruntime CUDA, serving graph, 1 x 200, history 64)" in cuda
    assert "Max throughput at p99 <= 5 ms (offered rate kept up with): service none." in cuda
    assert "Service p50 at a load the naive service sustains (90.0 req/s)" in text
    # A run without the naive service (the GPU run) reads the overhead at its own lowest step
    # and says so, rather than naming a naive load that was never measured.
    alone = {**results, "services": {"service": {"steps": [step]}}}
    alone["summary"] = comparison([step], [], 0.3)
    assert "Service p50 at its lowest measured load (no sustained naive rate to compare at)" in (
        table(alone)
    )


def test_request_size_and_provider_are_options() -> None:
    args = build_parser().parse_args(["--candidates", "200", "--provider", "cuda"])
    assert (args.candidates, args.provider) == (200, "cuda")
    defaults = build_parser().parse_args([])
    assert (defaults.candidates, defaults.provider) == (100, "cpu")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--provider", "tpu"])


def test_results_name_the_commit_a_copied_tree_came_from(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU machine runs a copy of the tree without .git: BENCH_COMMIT names the commit. In a
    checkout, git's own answer wins over the variable."""
    monkeypatch.setenv("BENCH_COMMIT", "abc1234")
    in_checkout = commit()
    assert in_checkout != "abc1234" and in_checkout != "unknown"
    monkeypatch.chdir(tmp_path)
    assert commit() == "abc1234"
    monkeypatch.delenv("BENCH_COMMIT")
    assert commit() == "unknown"


def test_python_command_uses_this_interpreter() -> None:
    import sys

    assert python_command("python -m service --x 'a b'") == [
        sys.executable, "-m", "service", "--x", "a b",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Child processes

#: A stand-in service: answers /readyz with JSON on HOST:PORT from its environment.
FAKE_SERVICE = """
import http.server, json, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"ready": True, "path": self.path}).encode()
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_a_running_service_is_ready_then_stopped_with_its_group() -> None:
    import sys

    with supervised("test_") as (children, workdir):
        command = [sys.executable, "-c", FAKE_SERVICE]
        with running_service(children, command, {"X": "1"}, workdir / "fake.log") as service:
            assert service.readyz == {"ready": True, "path": "/readyz"}
            assert service.base.startswith("http://127.0.0.1:")
            assert service.process.poll() is None and children.processes == [service.process]
        assert service.process.poll() is not None  # stopped on leaving the block
        assert children.processes == []
        left = children.start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert left.poll() is not None  # supervised stops what is still running


def test_a_service_that_exits_fails_at_once_with_its_log() -> None:
    import sys

    command = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    with (
        supervised("test_") as (children, workdir),
        pytest.raises(RuntimeError) as error,
        running_service(children, command, {}, workdir / "bad.log"),
    ):
        pass
    assert "exited with 3" in str(error.value) and "no model here" in str(error.value)
