"""Stage times of ``bash deploy/containers.sh`` (images built, the compose stack run for real).

    python -m bench.containers [--cold]

Clones the committed HEAD into a temporary folder, as a new user would have it, and runs the
container check there: build the local bases and the project's images with podman, bring up the
stack of docker-compose.yml, score, scrape, crash and restart, tear down. The script prints one
``done: STAGE (N s)`` line per stage and the image sizes; this records them with the machine, the
commit and the date, so the README quotes the file, not a figure typed by hand. ``--cold`` first
removes podman's whole image store and the script's base cache, so every image is built anew (what
a new machine pays, podman's own install aside); without it the run uses whatever is cached.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import markdown_table, publish

ROOT = Path(__file__).resolve().parent.parent
DONE = re.compile(r"^== \[[\d:]+\] done: (?P<stage>.+) \((?P<seconds>\d+) s\)$")
SIZES = re.compile(r"^qin-service:cpu: (?P<serve>\d+) MB; qin-train: (?P<train>\d+) MB$")
PASSED = re.compile(r"^== containers\.sh: every check passed in (?P<seconds>\d+) s$")
CACHE = Path("/var/cache/qin-containers")


def parse(lines: list[str]) -> dict[str, object]:
    """Stages, image sizes and the total from the script's output lines."""
    stages = [(m["stage"], int(m["seconds"])) for m in (DONE.match(line) for line in lines) if m]
    sizes = next((m for m in (SIZES.match(line) for line in lines) if m), None)
    passed = next((m for m in (PASSED.match(line) for line in lines) if m), None)
    return {
        "stages": [{"stage": name, "seconds": seconds} for name, seconds in stages],
        "serve_image_mb": int(sizes["serve"]) if sizes else None,
        "train_image_mb": int(sizes["train"]) if sizes else None,
        "passed": passed is not None,
        "total_s": int(passed["seconds"]) if passed else None,
    }


def table(result: dict[str, object], cold: bool, head: str) -> str:
    stages = result["stages"]
    assert isinstance(stages, list)
    rows = [[s["stage"], s["seconds"]] for s in stages]
    rows.append(["**every check passed**" if result["passed"] else "**failed**", result["total_s"]])
    cache = "empty image store and base cache" if cold else "images and bases as cached"
    return (
        markdown_table(["stage", "seconds"], rows)
        + f"\n\n`bash deploy/containers.sh` in a fresh clone of commit {head} ({cache}; podman"
        f" already installed). Serving image `qin-service:cpu` {result['serve_image_mb']} MB,"
        f" train image `qin-train` {result['train_image_mb']} MB (uncompressed, as podman"
        " reports them, on the local Debian bookworm base).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.containers", description=__doc__)
    parser.add_argument("--cold", action="store_true", help="build every image anew")
    parser.add_argument("--out", type=Path, default=None, help="results folder (bench/results)")
    args = parser.parse_args(argv)
    if args.cold:
        subprocess.run(["podman", "system", "reset", "--force"], check=True)
        shutil.rmtree(CACHE, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="qin-containers-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
        ).stdout.strip()
        started = time.monotonic()
        run = subprocess.run(
            ["bash", "deploy/containers.sh"],
            cwd=clone,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wall = time.monotonic() - started
    sys.stdout.write(run.stdout)
    result = parse(run.stdout.splitlines())
    result.update({"cold": args.cold, "wall_s": round(wall, 1), "exit_code": run.returncode})
    if run.returncode != 0 or not result["passed"]:
        print(f"error: deploy/containers.sh failed (exit {run.returncode})", file=sys.stderr)
        return 1
    return publish("containers", result, table(result, args.cold, head), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
