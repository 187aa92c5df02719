"""Copy benchmark result tables into README.md, so no figure there is typed by hand.

    python -m bench.readme

README.md marks each table with ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``; the text
between the marks is replaced by bench/results/NAME.md. A mark whose result file does not exist
yet says so instead. The service's configuration table (``<!-- settings -->``) is regenerated from
the settings class the same way.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench.report import RESULTS_DIR
from service.settings import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(.*?)(<!-- /bench:(?P=name) -->)", re.S)
SETTINGS = re.compile(r"(<!-- settings -->\n)(.*?)(<!-- /settings -->)", re.S)


def refresh(text: str, results: Path = RESULTS_DIR) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        source = results / f"{name}.md"
        body = (
            source.read_text().strip()
            if source.is_file()
            else f"_Not measured yet: run the benchmark that writes bench/results/{name}.md._"
        )
        return f"{match.group(1)}{body}\n{match.group(4)}"

    text = MARK.sub(replace, text)
    return SETTINGS.sub(lambda m: f"{m.group(1)}{settings_markdown()}\n{m.group(3)}", text)


def main(argv: list[str] | None = None) -> int:
    # No options; parsing still answers --help (and rejects stray arguments) without writing.
    argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__).parse_args(argv)
    README.write_text(refresh(README.read_text()))
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
