"""Benchmark result files: every result carries the machine, the command, the commit and the date.

Each benchmark writes ``NAME.json`` (everything) and ``NAME.md`` (a table a person reads; the
README and docs quote it) into ``bench/results/`` (the model-research studies into
``bench/research/results/``) unless told otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Result folders, which every benchmark run rewrites: a change there does not make a commit dirty.
UNCOUNTED = (":!bench/results", ":!bench/research/results")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": _cpu_model(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    """HEAD's short hash, ``-dirty`` when tracked code differs from it (results files, which
    every benchmark run rewrites, do not count). Where the tree is a copy without git (a GPU
    machine's), ``BENCH_COMMIT`` names the commit it was copied from."""
    given = os.environ.get("BENCH_COMMIT")
    if given and not Path(".git").exists():
        return given
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *UNCOUNTED],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return given or "unknown"


def command_line() -> str:
    """The command as typed: ``python -m bench.x ...`` when run as a module, not the file path."""
    script, *arguments = sys.argv
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None)
    words = ["python", "-m", module] if module else ["python", script]
    return " ".join(shlex.quote(word) for word in [*words, *arguments])


def header() -> dict[str, Any]:
    return {
        "command": command_line(),
        "commit": commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(
    name: str, results: dict[str, Any], table: str, out_dir: Path | None = None
) -> Path:
    """Write NAME.json and NAME.md; returns the markdown path."""
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = header()
    (out_dir / f"{name}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    m = meta["machine"]
    footer = (
        f"\nMachine: {m['processor']}, {m['cpus']} CPUs"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", {m['platform']}. "
        f"Command: `{meta['command']}`. Commit {meta['commit']}, {meta['date']}.\n"
    )
    md = out_dir / f"{name}.md"
    md.write_text(table.rstrip() + "\n" + footer)
    return md


def publish(name: str, results: dict[str, Any], table: str, out_dir: Path | None = None) -> int:
    """``write_result``, then print what was written and where: the common end of a benchmark's
    ``main`` (its exit status, 0)."""
    path = write_result(name, results, table, out_dir)
    print(path.read_text())
    print(f"written {path}")
    return 0


def publish_checked(
    name: str, results: dict[str, Any], table: str, problems: list[str], out_dir: Path | None
) -> int:
    """``publish``, then each problem the run found as a ``FAIL:`` line: exit status 1 when there
    is one, so that a run whose figures do not hold is written down and still fails."""
    code = publish(name, results, table, out_dir)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else code
