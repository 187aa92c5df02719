"""QIN against DIN and the paper's ablations, on one generated dataset, same epochs.

    python -m bench.ablations [--epochs 8] [--train-rows 150000] [--items 2000]

Each variant is trained by the real trainer (``model.train.train``) at the small preset with the
same data, seed and epoch budget; the best epoch by valid AUC is kept, then valid and test are
scored. Writes bench/results/ablations.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.report import markdown_table, publish
from model.config import RunConfig, build_config
from model.data import Dataset
from model.train import train

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
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablations", description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--only", help=f"comma-separated keys of {list(VARIANTS)} (default: all)")
    args = parser.parse_args(argv)
    names = chosen_variants(parser, args.only)
    synth_args = synth_arguments(args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_data(args, Path(tmp) / "data")
        for key in names:
            name, variant = VARIANTS[key]
            meta, seconds = train_variant(dataset, key, args, Path(tmp) / key)
            metrics = meta["metrics"]
            results.append(
                {
                    "variant": name,
                    "overrides": variant,
                    "parameters": meta["parameters"],
                    "best_epoch": metrics["best_epoch"],
                    "seconds": seconds,
                    "valid": metrics["valid"],
                    "test": metrics["test"],
                }
            )
            print(results[-1], flush=True)
    table = markdown_table(
        ["model", "params", "best epoch", "valid AUC", "valid logloss", "test AUC", "test logloss"],
        [
            [
                r["variant"],
                r["parameters"],
                r["best_epoch"],
                r["valid"]["auc"],
                r["valid"]["logloss"],
                r["test"]["auc"],
                r["test"]["logloss"],
            ]
            for r in results
        ],
    )
    table += (
        f"\n\nSmall preset, {args.epochs} epochs at most, data: `python -m model.synth "
        f"{' '.join(synth_args)}`."
    )
    return publish(
        "ablations",
        {"epochs": args.epochs, "synth_args": synth_args, "results": results},
        table,
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
