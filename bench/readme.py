"""Copy benchmark result tables into README.md and docs/*.md, so no figure there is typed by hand.

    python -m bench.readme

Each document marks a table with ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``; the text
between the marks is replaced by the result file NAME names: a plain name is
bench/results/NAME.md (the serving benchmarks), a path under bench/ such as
``research/ablations`` is bench/research/results/ablations.md (the model-research studies). A
mark whose result file does not exist yet says so instead. The service's configuration table
(``<!-- settings -->``) is regenerated from the settings class the same way. README.md and every
docs/*.md that exists are refreshed.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from service.settings import settings_markdown

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MARK = re.compile(r"(<!-- bench:(?P<name>[\w/-]+) -->\n)(.*?)(<!-- /bench:(?P=name) -->)", re.S)
SETTINGS = re.compile(r"(<!-- settings -->\n)(.*?)(<!-- /settings -->)", re.S)


def documents(root: Path | None = None) -> list[Path]:
    """README.md and docs/*.md under ``root`` (the repository), those that exist."""
    root = root or ROOT
    readme = root / "README.md"
    return [*([readme] if readme.is_file() else []), *sorted((root / "docs").glob("*.md"))]


def result_path(name: str) -> Path:
    """A mark's NAME -> its result file, relative to bench/: ``x`` -> results/x.md,
    ``research/x`` -> research/results/x.md."""
    folder, _, leaf = name.rpartition("/")
    return Path(folder) / "results" / f"{leaf}.md"


def refresh(text: str, bench: Path = BENCH) -> str:
    """``text`` with every marked block replaced by its result file under ``bench`` (the bench
    folder) and the settings table regenerated."""

    def replace(match: re.Match[str]) -> str:
        relative = result_path(match.group("name"))
        source = bench / relative
        body = (
            source.read_text().strip()
            if source.is_file()
            else f"_Not measured yet: run the benchmark that writes bench/{relative.as_posix()}._"
        )
        return f"{match.group(1)}{body}\n{match.group(4)}"

    text = MARK.sub(replace, text)
    return SETTINGS.sub(lambda m: f"{m.group(1)}{settings_markdown()}\n{m.group(3)}", text)


def main(argv: list[str] | None = None) -> int:
    # No options; parsing still answers --help (and rejects stray arguments) without writing.
    argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__).parse_args(argv)
    for document in documents():
        document.write_text(refresh(document.read_text()))
        print(f"updated {document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
