"""Wall time of the README's main command, ``bash deploy/demo.sh``, from a fresh clone.

    python -m bench.demo_wall [--port 8010] [--timeout 1800]

Clones the committed HEAD of this checkout into a temporary folder (no venv, no artifacts: what a
new user has after ``git clone``), runs the main job there and times each of its stages from the
lines it prints: installing, generating the data, training, evaluating, exporting, starting Redis,
loading the features, serving until the example request has been answered. The clock stops at
that answer (the job then serves until stopped); the benchmark then stops it with Ctrl-C (SIGINT)
and checks that it exits. Package installs come from whatever index or wheel cache pip is
configured with on the machine, which the figure depends on: the result says so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import markdown_table, publish

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "The QIN scoring service is running"
#: The first line of each stage, as deploy/demo.sh and deploy/serve_demo.sh print it.
STAGES = (
    ("generate data", "== generating demo data"),
    ("train", "== training the small QIN preset"),
    ("evaluate", "== evaluating on the test split"),
    ("export ONNX", "== exporting the serving graph"),
    ("start Redis", "== starting redis-server"),
    ("load features", "== loading the demo features"),
    ("start service, answer the example", "== serving "),
)


@dataclass(frozen=True)
class Stage:
    name: str
    start_s: float
    seconds: float


def split_stages(lines: list[tuple[float, str]], ready_s: float) -> list[Stage]:
    """Stages from (seconds since start, line) pairs: each from its first line to the next
    stage's (installing: from 0 to the first stage), the last to ``ready_s``. Stages the run
    skipped (reused data or checkpoint, an outside Redis) are absent."""
    starts: list[tuple[str, float]] = [("install packages", 0.0)]
    for name, prefix in STAGES:
        found = next((at for at, text in lines if text.startswith(prefix)), None)
        if found is not None:
            starts.append((name, found))
    starts.sort(key=lambda item: item[1])
    ends = [at for _, at in starts[1:]] + [ready_s]
    return [Stage(name, at, end - at) for (name, at), end in zip(starts, ends, strict=True)]


def run_demo(clone: Path, port: int, timeout: float) -> tuple[list[tuple[float, str]], float, int]:
    """Run the main job in ``clone`` until it has answered the example request; stop it with
    SIGINT. Returns the timed lines, the seconds to ready and the job's exit code."""
    env = {
        **os.environ,
        "PORT": str(port),
        "DEMO_REDIS_PORT": str(port + 1),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    env.pop("VENV", None)
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", "deploy/demo.sh"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[tuple[float, str]] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for text in process.stdout:
            lines.append((time.monotonic() - started, text.rstrip("\n")))
            print(text, end="", flush=True)
            if text.startswith(READY_LINE):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not ready.wait(0.5):
        if process.poll() is not None or time.monotonic() - started > timeout:
            break
    if not ready.is_set():
        _stop(process)
        tail = "\n".join(text for _, text in lines[-20:])
        raise SystemExit(f"error: the main job did not become ready:\n{tail}")
    # The answer is printed a few lines after the banner: let them arrive before stopping.
    time.sleep(1.0)
    ready_s = next(at for at, text in lines if text.startswith(READY_LINE))
    code = _stop(process)
    reader.join(timeout=10)
    return lines, ready_s, code


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()
    return process.returncode


def short_answer(answer: str) -> str:
    """The example answer with scores to two decimals (the caption is read, not parsed)."""
    try:
        body = json.loads(answer)
        body["scores"] = [round(score, 2) for score in body["scores"]]
    except (ValueError, KeyError, TypeError):
        return answer
    return json.dumps(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_wall", description=__doc__)
    parser.add_argument("--port", type=int, default=8010, help="service port (Redis: port + 1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for ready")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="demo-wall-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=clone,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        lines, ready_s, code = run_demo(clone, args.port, args.timeout)
    stages = split_stages(lines, ready_s)
    answer = next(
        (lines[i + 1][1].strip() for i, (_, t) in enumerate(lines[:-1]) if t == "Its answer:"), ""
    )
    table = markdown_table(
        ["stage", "starts at (s)", "seconds"],
        [[s.name, f"{s.start_s:.1f}", f"{s.seconds:.1f}"] for s in stages]
        + [["**ready: example request answered**", "", f"**{ready_s:.1f}**"]],
    )
    pip_source = os.environ.get("PIP_FIND_LINKS") or os.environ.get("PIP_INDEX_URL") or "PyPI"
    caption = (
        f"`bash deploy/demo.sh` in a fresh clone of commit {head} (no venv, no artifacts), "
        f"packages from {pip_source} (pip's cache as the machine had it). It stopped on Ctrl-C "
        f"with exit code {code}. The example request's answer: `{short_answer(answer)}`."
    )
    return publish(
        "demo_wall",
        {
            "clone_commit": head,
            "ready_s": ready_s,
            "exit_code_on_sigint": code,
            "pip_source": pip_source,
            "answer": answer,
            "stages": [vars(s) for s in stages],
            # The job's own lines (stages and the final banner), not the installers' output.
            "lines": [[round(at, 2), text] for at, text in lines if text.startswith("== ")],
        },
        f"{table}\n\n{caption}",
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
