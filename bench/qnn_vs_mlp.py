"""Does QIN's standing against its 'MLP instead of QNN' ablation hold when the training settings
change? Pairs of runs on one generated dataset, the same settings for both members of a pair.

    python -m bench.qnn_vs_mlp [--settings "batch_size=8192;embedding_l2=1e-3"] [--epochs 8] ...

The ablation table (bench.ablations) compares the variants at the small preset's settings only;
a lead or a deficit of a few thousandths there could be an artefact of one learning rate, batch
size or amount of regularisation that suits one network better. ``--settings`` lists entries
separated by ``;``, each entry ``--set`` values joined by ``&`` (an empty entry is the preset
itself); every entry trains QIN and the MLP ablation with those values, and the best epoch by
valid AUC is kept. Writes bench/results/qnn_vs_mlp.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.ablations import add_data_arguments, generate_data, synth_arguments, train_variant
from bench.report import markdown_table, publish
from model.config import build_config

#: The preset itself, then one change each: the paper's batch size, five times the embedding L2,
#: half the learning rate, twice the dropout.
DEFAULT_SETTINGS = ";batch_size=8192;embedding_l2=1e-3;lr=1e-3;dropout=0.2"


def parse_settings(parser: argparse.ArgumentParser, text: str) -> list[list[str]]:
    """``"a=1;b=2&c=3"`` -> ``[["a=1"], ["b=2", "c=3"]]``; each group must build a valid
    small-preset config (an unknown key or a bad value is a usage error, before any training)."""
    groups = [[item for item in entry.split("&") if item] for entry in text.split(";")]
    for group in groups:
        try:
            build_config("small", group)
        except ValueError as error:
            parser.error(f"--settings {'&'.join(group) or '(preset)'}: {error}")
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.qnn_vs_mlp", description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    args = parser.parse_args(argv)
    groups = parse_settings(parser, args.settings)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_data(args, Path(tmp) / "data")
        for number, group in enumerate(groups):
            row: dict[str, Any] = {"settings": group}
            for key in ("qin", "mlp"):
                meta, seconds = train_variant(
                    dataset, key, args, Path(tmp) / f"{number}-{key}", group
                )
                metrics = meta["metrics"]
                row[key] = {
                    "valid_auc": metrics["valid"]["auc"],
                    "test_auc": metrics["test"]["auc"],
                    "best_epoch": metrics["best_epoch"],
                    "seconds": seconds,
                }
            results.append(row)
            print(row, flush=True)
    table = markdown_table(
        ["settings", "QIN valid AUC", "MLP valid AUC", "QIN - MLP (valid)", "QIN test AUC",
         "MLP test AUC", "best epochs (QIN / MLP)"],
        [
            [
                ", ".join(r["settings"]) or "small preset",
                r["qin"]["valid_auc"],
                r["mlp"]["valid_auc"],
                r["qin"]["valid_auc"] - r["mlp"]["valid_auc"],
                r["qin"]["test_auc"],
                r["mlp"]["test_auc"],
                f"{r['qin']['best_epoch']} / {r['mlp']['best_epoch']}",
            ]
            for r in results
        ],
    )  # fmt: skip
    synth_args = synth_arguments(args)
    table += (
        f"\n\nSmall preset plus each row's settings (both networks), {args.epochs} epochs at "
        f"most, seed {args.seed}, data: `python -m model.synth {' '.join(synth_args)}`."
    )
    return publish(
        "qnn_vs_mlp",
        {"epochs": args.epochs, "synth_args": synth_args, "results": results},
        table,
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
