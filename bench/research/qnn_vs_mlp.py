"""Does QIN's standing against its 'MLP instead of QNN' ablation hold when the training settings
change? Pairs of runs on one generated dataset, the same settings for both members of a pair.

    python -m bench.research.qnn_vs_mlp [--settings "batch_size=8192;embedding_l2=1e-3"]
        [--epochs 8] ...

The ablation table (bench.research.ablations) compares the variants at the small preset's
settings only; a lead or a deficit of a few thousandths there could be an artefact of one
learning rate, batch size or amount of regularisation that suits one network better.
``--settings`` lists entries separated by ``;``, each entry ``--set`` values joined by ``&`` (an
empty entry is the preset itself); every entry trains QIN and the MLP ablation with those
values, and the best epoch by valid AUC is kept. Settings a network never reads (the QNN's
depth, rows and activation for the MLP; the MLP's widths for QIN) are left out when runs are
compared: training is deterministic, so a run equal to an earlier one in all it reads is not
trained again, its result is repeated (``same_as`` names the entry). Writes
bench/research/results/qnn_vs_mlp.{json,md}, or NAME.{json,md} with ``--name``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.report import markdown_table
from bench.research.variants import (
    add_data_arguments,
    generate_data,
    publish_study,
    synth_arguments,
    train_variant,
    variant_config,
)
from model.config import ModelConfig, build_config

#: The preset itself, then one change each: the paper's batch size, five times the embedding L2,
#: half the learning rate, twice the dropout.
DEFAULT_SETTINGS = ";batch_size=8192;embedding_l2=1e-3;lr=1e-3;dropout=0.2"


#: Model settings each member of a pair never reads.
UNREAD: dict[str, tuple[str, ...]] = {
    "qin": ("mlp_hidden",),
    "mlp": ("qnn_layers", "qnn_rows", "activation"),
}


def run_identity(key: str, args: argparse.Namespace, group: list[str]) -> str:
    """The configuration a run really trains with: its config with the settings it never reads
    put back to their defaults. Two runs with the same identity give the same result."""
    config = variant_config(key, args, group)
    defaults = ModelConfig()
    model = dataclasses.replace(
        config.model, **{name: getattr(defaults, name) for name in UNREAD[key]}
    )
    return dataclasses.replace(config, model=model).to_json()


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
    parser = argparse.ArgumentParser(
        prog="python -m bench.research.qnn_vs_mlp", description=__doc__
    )
    add_data_arguments(parser)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    parser.add_argument(
        "--name", default="qnn_vs_mlp", help="result file name (another sweep, another name)"
    )
    args = parser.parse_args(argv)
    groups = parse_settings(parser, args.settings)
    results = []
    trained: dict[str, tuple[int, dict[str, Any]]] = {}  # identity -> (entry, its result)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_data(args, Path(tmp) / "data")
        for number, group in enumerate(groups):
            row: dict[str, Any] = {"settings": group}
            for key in ("qin", "mlp"):
                identity = run_identity(key, args, group)
                if identity in trained:
                    entry, result = trained[identity]
                    row[key] = {**result, "same_as": entry}
                    continue
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
                trained[identity] = (number, row[key])
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
    if any("same_as" in r[key] for r in results for key in ("qin", "mlp")):
        table += (
            " Where a row's settings touch only the other network (the MLP does not read "
            "qnn_layers, qnn_rows or activation), that network is the same run as in the first "
            "row with its configuration, and its figures are repeated."
        )
    return publish_study(args.name, args, results, table)


if __name__ == "__main__":
    sys.exit(main())
