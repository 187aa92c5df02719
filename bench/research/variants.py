"""What the model-research studies share: the variants, the generated data and its options,
training one variant with the real trainer, and writing a study's result files.

The studies (bench.research.ablations, .planted_fit, .qnn_vs_mlp) train on the same generated
data with the same defaults, so that their tables describe the same runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.report import publish
from model.config import RunConfig, build_config
from model.data import Dataset
from model.train import train

#: Where a study writes NAME.json and NAME.md unless ``--out`` says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: key -> (name in the table, --set overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "qin": ("QIN", []),
    "softmax": ("QIN, softmax ASTA", ["attention=softmax"]),
    "no-asta": ("QIN, no ASTA", ["attention=none"]),
    "mlp": ("QIN, MLP instead of QNN", ["interaction=mlp"]),
    "relu": ("QIN, ReLU instead of PReLU", ["activation=relu"]),
    "din": ("DIN (baseline)", ["model=din"]),
}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The generated data and the epoch budget, shared by the benchmarks that train variants
    (the same defaults, so that their tables describe the same runs)."""
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=150_000)
    parser.add_argument("--eval-rows", type=int, default=20_000, help="rows of valid and of test")
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--out", type=Path, help="results folder (default bench/research/results)")


def chosen_variants(parser: argparse.ArgumentParser, only: str | None) -> list[str]:
    """Keys of ``--only`` (all variants when not given); an unknown key is a usage error."""
    names = only.split(",") if only else list(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return names


def synth_arguments(args: argparse.Namespace) -> list[str]:
    """The ``python -m model.synth`` arguments of the data these benchmarks train on."""
    return [
        "--items", str(args.items),
        "--users", str(args.users),
        "--train-rows", str(args.train_rows),
        "--valid-rows", str(args.eval_rows),
        "--test-rows", str(args.eval_rows),
        "--seed", str(args.seed),
    ]  # fmt: skip


def generate_data(args: argparse.Namespace, folder: Path) -> Dataset:
    """Write the run's dataset into ``folder`` with ``python -m model.synth`` and open it."""
    command = [sys.executable, "-m", "model.synth", "--out", str(folder), *synth_arguments(args)]
    subprocess.run(command, check=True)
    return Dataset(folder)


def variant_config(key: str, args: argparse.Namespace, settings: Sequence[str] = ()) -> RunConfig:
    """Variant ``key`` at the small preset with the run's epochs and seed, plus ``settings``."""
    overrides = [*VARIANTS[key][1], f"max_epochs={args.epochs}", f"seed={args.seed}", *settings]
    return build_config("small", overrides)


def train_variant(
    dataset: Dataset,
    key: str,
    args: argparse.Namespace,
    out: Path,
    settings: Sequence[str] = (),
) -> tuple[dict[str, Any], float]:
    """Train variant ``key`` at the small preset with the run's epochs and seed, plus any
    ``settings`` (``KEY=VALUE``, as ``--set``), into ``out`` (the real trainer, best epoch
    kept); its checkpoint metadata and the seconds it took."""
    started = time.perf_counter()
    meta = train(
        dataset,
        variant_config(key, args, settings),
        out,
        torch.device("cpu"),
        resume=False,
        progress=False,
    )
    return meta, time.perf_counter() - started


def publish_study(
    name: str,
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    table: str,
) -> int:
    """Write the study's NAME.{json,md} (its epochs, data arguments and rows) into ``--out`` or
    bench/research/results, print them; the exit status (0)."""
    return publish(
        name,
        {"epochs": args.epochs, "synth_args": synth_arguments(args), "results": results},
        table,
        args.out or RESULTS_DIR,
    )
