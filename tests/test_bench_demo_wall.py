"""bench.demo_wall: the main job's stages are read from the lines it prints."""

from __future__ import annotations

import pytest

from bench.demo_wall import READY_LINE, short_answer, split_stages


def test_each_stage_runs_from_its_first_line_to_the_next() -> None:
    lines = [
        (0.5, "Collecting torch==2.13.0"),
        (40.0, "== generating demo data in artifacts/demo/data"),
        (55.0, "== training the small QIN preset (3 epochs at most)"),
        (90.0, "{'epoch': 0}"),
        (150.0, "== evaluating on the test split"),
        (153.0, "== exporting the serving graph to ONNX (parity-checked against PyTorch)"),
        (170.0, "== starting redis-server on 127.0.0.1:6399 (log: ...)"),
        (171.0, "== loading the demo features into Redis"),
        (180.0, "== serving artifacts/demo/model.onnx on http://127.0.0.1:8000"),
        (186.0, READY_LINE + "; Ctrl-C stops it (and the Redis it started)."),
    ]
    stages = split_stages(lines, ready_s=186.0)
    assert [s.name for s in stages] == [
        "install packages",
        "generate data",
        "train",
        "evaluate",
        "export ONNX",
        "start Redis",
        "load features",
        "start service, answer the example",
    ]
    assert [s.seconds for s in stages] == pytest.approx([40, 15, 95, 3, 17, 1, 9, 6])
    assert sum(s.seconds for s in stages) == pytest.approx(186.0)


def test_reused_data_and_an_outside_redis_are_absent_stages() -> None:
    lines = [
        (10.0, "== reusing demo data in artifacts/demo/data"),
        (10.5, "== reusing the checkpoint in artifacts/demo/checkpoint"),
        (11.0, "== evaluating on the test split"),
        (14.0, "== exporting the serving graph to ONNX (parity-checked against PyTorch)"),
        (30.0, "== using the Redis at redis://elsewhere:6379/0"),
        (30.5, "== loading the demo features into Redis"),
        (40.0, "== serving artifacts/demo/model.onnx on http://127.0.0.1:8000"),
    ]
    stages = split_stages(lines, ready_s=45.0)
    assert [(s.name, s.seconds) for s in stages] == [
        ("install packages", 11.0),
        ("evaluate", 3.0),
        ("export ONNX", 16.5),
        ("load features", 9.5),
        ("start service, answer the example", 5.0),
    ]


def test_the_caption_rounds_the_example_scores_and_keeps_anything_else() -> None:
    answer = '{"scores": [0.10714134573936462, 0.2297], "model_version": "qin-1"}'
    assert short_answer(answer) == '{"scores": [0.11, 0.23], "model_version": "qin-1"}'
    assert short_answer("Internal Server Error") == "Internal Server Error"
