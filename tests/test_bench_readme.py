"""bench.readme: the result tables in README.md and docs/*.md are copies of the result files,
never typed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import readme


def test_marked_blocks_take_the_result_files_text(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "speed.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "research" / "results").mkdir(parents=True)
    (tmp_path / "research" / "results" / "fit.md").write_text("| b |\n|---|\n| 2 |\n")
    text = (
        "intro\n<!-- bench:speed -->\nold figure\n<!-- /bench:speed -->\n"
        "<!-- bench:research/fit -->\nold fit\n<!-- /bench:research/fit -->\n"
        "<!-- bench:absent -->\n<!-- /bench:absent -->\n"
        "<!-- bench:research/absent -->\n<!-- /bench:research/absent -->\nend\n"
    )
    out = readme.refresh(text, tmp_path)
    assert "<!-- bench:speed -->\n| a |\n|---|\n| 1 |\n<!-- /bench:speed -->" in out
    assert "<!-- bench:research/fit -->\n| b |\n|---|\n| 2 |\n<!-- /bench:research/fit -->" in out
    assert "old figure" not in out and "old fit" not in out
    assert "_Not measured yet: run the benchmark that writes bench/results/absent.md._" in out
    assert (
        "_Not measured yet: run the benchmark that writes bench/research/results/absent.md._" in out
    )
    assert out.startswith("intro\n") and out.endswith("end\n")


def test_a_mark_names_a_result_file_under_bench_only() -> None:
    assert readme.result_path("overload") == Path("results/overload.md")
    assert readme.result_path("research/ablations") == Path("research/results/ablations.md")
    # A name that climbs out of bench/ is no mark: the text is left as it is.
    text = "<!-- bench:../secret -->\nx\n<!-- /bench:../secret -->\n"
    assert readme.refresh(text) == text


def committed_marks() -> list[tuple[Path, str]]:
    """Every (document, mark name) in README.md and docs/*.md (docs/ may not exist yet)."""
    return [
        (document, match.group("name"))
        for document in readme.documents()
        for match in readme.MARK.finditer(document.read_text())
    ]


def test_the_committed_documents_have_marks() -> None:
    assert readme.documents()[0] == readme.ROOT / "README.md"
    assert committed_marks(), "no <!-- bench:NAME --> mark in README.md or docs/*.md"


@pytest.mark.parametrize("document", readme.documents(), ids=lambda path: path.name)
def test_every_committed_mark_equals_its_result_file(document: Path) -> None:
    text = document.read_text()
    assert readme.refresh(text) == text, (
        f"{document.name} differs from the result files: run python -m bench.readme after a "
        "benchmark, and name research results research/NAME"
    )


def test_a_figure_edited_by_hand_fails_the_check() -> None:
    document, name = next(
        (document, name)
        for document, name in committed_marks()
        if (readme.BENCH / readme.result_path(name)).is_file()
    )
    text = document.read_text()
    figure = (readme.BENCH / readme.result_path(name)).read_text().strip()
    edited = text.replace(figure, figure.replace("|", "| 9", 1), 1)
    assert edited != text
    assert readme.refresh(edited) != edited


def test_documents_are_the_readme_and_every_doc(tmp_path: Path) -> None:
    assert readme.documents(tmp_path) == []  # neither exists
    (tmp_path / "README.md").write_text("x\n")
    assert readme.documents(tmp_path) == [tmp_path / "README.md"]
    (tmp_path / "docs").mkdir()
    for name in ("research.md", "benchmarks.md", "notes.txt"):
        (tmp_path / "docs" / name).write_text("y\n")
    assert readme.documents(tmp_path) == [
        tmp_path / "README.md",
        tmp_path / "docs" / "benchmarks.md",
        tmp_path / "docs" / "research.md",
    ]


def test_help_answers_without_touching_the_documents(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = "<!-- bench:train_throughput -->\nstale\n<!-- /bench:train_throughput -->\n"
    (tmp_path / "README.md").write_text(stale)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text(stale)
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        readme.main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m bench.readme" in capsys.readouterr().out
    assert "stale" in (tmp_path / "README.md").read_text()
    assert readme.main([]) == 0
    for document in (tmp_path / "README.md", tmp_path / "docs" / "benchmarks.md"):
        assert "stale" not in document.read_text()
