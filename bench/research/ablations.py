"""QIN against DIN and the paper's ablations, on one generated dataset, same epochs.

    python -m bench.research.ablations [--epochs 8] [--train-rows 150000] [--items 2000]

Each variant is trained by the real trainer (``model.train.train``) at the small preset with the
same data, seed and epoch budget; the best epoch by valid AUC is kept, then valid and test are
scored. Writes bench/research/results/ablations.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.report import markdown_table
from bench.research.variants import (
    VARIANTS,
    add_data_arguments,
    chosen_variants,
    generate_data,
    publish_study,
    synth_arguments,
    train_variant,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.research.ablations", description=__doc__)
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
    return publish_study("ablations", args, results, table)


if __name__ == "__main__":
    sys.exit(main())
