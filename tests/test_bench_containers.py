"""bench.containers reads the container check's own stage lines (no podman needed here)."""

from __future__ import annotations

from bench.containers import parse, table

OUTPUT = """\
== [10:00:00] stage: tools
== [10:00:01] done: tools (1 s)
== [10:00:01] stage: serving image (CPU)
12 layers from podman's cache
== [10:00:39] done: serving image (CPU) (38 s)
qin-service:cpu: 544 MB; qin-train: 1884 MB
== [10:00:41] done: teardown (2 s)
== containers.sh: every check passed in 41 s
""".splitlines()


def test_stages_sizes_and_total_come_from_the_scripts_lines() -> None:
    result = parse(OUTPUT)
    assert result["stages"] == [
        {"stage": "tools", "seconds": 1},
        {"stage": "serving image (CPU)", "seconds": 38},
        {"stage": "teardown", "seconds": 2},
    ]
    assert (result["serve_image_mb"], result["train_image_mb"]) == (544, 1884)
    assert result["passed"] is True and result["total_s"] == 41


def test_a_run_without_the_closing_line_did_not_pass() -> None:
    result = parse(OUTPUT[:-1])
    assert result["passed"] is False and result["total_s"] is None
    assert "**failed**" in table(result, cold=True, head="abc1234")


def test_the_table_says_what_was_cached() -> None:
    result = parse(OUTPUT)
    assert "empty image store" in table(result, cold=True, head="abc1234")
    assert "as cached" in table(result, cold=False, head="abc1234")
    assert "| serving image (CPU) | 38 |" in table(result, cold=False, head="abc1234")
