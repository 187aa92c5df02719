"""bench.readme: the README's result tables are copies of bench/results, never typed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import readme


def test_marked_blocks_take_the_result_files_text(tmp_path: Path) -> None:
    (tmp_path / "speed.md").write_text("| a |\n|---|\n| 1 |\n")
    text = (
        "intro\n<!-- bench:speed -->\nold figure\n<!-- /bench:speed -->\n"
        "<!-- bench:absent -->\n<!-- /bench:absent -->\nend\n"
    )
    out = readme.refresh(text, tmp_path)
    assert "<!-- bench:speed -->\n| a |\n|---|\n| 1 |\n<!-- /bench:speed -->" in out
    assert "old figure" not in out
    assert "_Not measured yet: run the benchmark that writes bench/results/absent.md._" in out
    assert out.startswith("intro\n") and out.endswith("end\n")


def test_the_committed_readme_matches_the_committed_results() -> None:
    text = readme.README.read_text()
    assert "<!-- bench:" in text
    assert readme.refresh(text) == text, "run python -m bench.readme after a benchmark"


def test_help_answers_without_touching_the_readme(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "README.md"
    target.write_text("<!-- bench:train_throughput -->\nstale\n<!-- /bench:train_throughput -->\n")
    monkeypatch.setattr(readme, "README", target)
    with pytest.raises(SystemExit) as exit_info:
        readme.main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m bench.readme" in capsys.readouterr().out
    assert "stale" in target.read_text()
    assert readme.main([]) == 0
    assert "stale" not in target.read_text()
