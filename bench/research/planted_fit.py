"""What each model learned of the generator's planted click process, on its valid split.

    python -m bench.research.planted_fit [--only qin,mlp] [--epochs 8] [--train-rows 150000]
        [--items 2000]

The ablation table (bench.research.ablations) says which variant ranks best; this says why. The
generated data's labels follow a known logit (model.synth: a term in the number of same-topic
behaviours, two level interactions, a target-topic x history-topics term, popularity, then
noise), so a trained model's valid logits can be held against that truth:

* correlation with the noiseless logit (1.0 would be the Bayes-optimal ranking);
* R^2 of a least-squares fit of the model's logit on the planted terms: how much of what the
  model outputs is the planted structure rather than something else (noise it fitted);
* the share of that unexplained part's variance that lies between target items (the spread of
  per-item means, items with at least ``MIN_ITEM_ROWS`` valid rows), against the same share for
  those rows with their items shuffled (what chance alone gives groups of those sizes): well
  above chance means the model learned item-specific offsets the planted process lacks;
* by the number of same-topic behaviours among the 64 the model reads: the spread of the logit
  and of what the planted terms leave unexplained, and the share of rows scored beyond |8|
  (click probability below 0.03% or above 99.97%: overconfidence, since the data's noise caps
  how sure any model can be).

Each variant is trained by the real trainer at the small preset, same data, seed and epochs as
bench.research.ablations. Writes bench/research/results/planted_fit.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table
from bench.research.variants import (
    VARIANTS,
    add_data_arguments,
    chosen_variants,
    publish_study,
    synth_arguments,
    train_variant,
)
from model import synth
from model.checkpoint import load_checkpoint
from model.data import Dataset
from model.evaluate import predict

#: Same-topic behaviour counts (inclusive bounds) the rows are grouped by.
COUNT_BANDS = ((0, 0), (1, 8), (9, 30), (31, 64))
#: |logit| beyond this is called overconfident.
EXTREME_LOGIT = 8.0
#: Items with fewer valid rows are left out of the between-item share (their means are noise).
MIN_ITEM_ROWS = 5
#: Probabilities are clipped here before taking logits (float32 sigmoids saturate at 1.0).
PROBABILITY_CLIP = 1e-7


def logits(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return np.log(p / (1.0 - p))


def between_group_share(values: np.ndarray, group: np.ndarray) -> float:
    """Share of ``values``' variance (over rows whose group has ``MIN_ITEM_ROWS`` or more rows)
    carried by the group means; NaN when no group is that large."""
    _, inverse, sizes = np.unique(group, return_inverse=True, return_counts=True)
    kept = sizes[inverse] >= MIN_ITEM_ROWS
    if not kept.any():
        return float("nan")
    means = np.bincount(inverse, weights=values) / sizes
    return float(means[inverse][kept].var() / values[kept].var())


def analyse(
    logit: np.ndarray,
    truth: np.ndarray,
    terms: dict[str, np.ndarray],
    count: np.ndarray,
    item: np.ndarray,
) -> dict[str, Any]:
    """The figures above for one model: ``logit`` and ``truth`` (noiseless logit) per row, the
    planted ``terms`` per row, ``count`` the same-topic behaviours and ``item`` the target id
    per row."""
    design = np.column_stack([*terms.values(), np.ones(logit.size)])
    coefficients, *_ = np.linalg.lstsq(design, logit, rcond=None)
    residual = logit - design @ coefficients
    bands = []
    for low, high in COUNT_BANDS:
        rows = (count >= low) & (count <= high)
        if not rows.any():
            continue
        bands.append(
            {
                "same_topic": [low, high],
                "rows": int(rows.sum()),
                "logit_std": float(logit[rows].std()),
                "unexplained_std": float(residual[rows].std()),
                "extreme_share": float((np.abs(logit[rows]) > EXTREME_LOGIT).mean()),
            }
        )
    return {
        "correlation_with_truth": float(np.corrcoef(logit, truth)[0, 1]),
        "planted_r2": float(1.0 - residual.var() / logit.var()),
        "coefficients": {
            **dict(zip(terms, map(float, coefficients[:-1]), strict=True)),
            "intercept": float(coefficients[-1]),
        },
        "extreme_share": float((np.abs(logit) > EXTREME_LOGIT).mean()),
        "item_share": between_group_share(residual, item),
        "item_share_shuffled": between_group_share(
            residual, np.random.default_rng(0).permutation(item)
        ),
        "bands": bands,
    }


def report(results: list[dict[str, Any]], synth_args: list[str], epochs: int) -> str:
    columns = [
        "model",
        "valid AUC",
        "corr. with true logit",
        "planted R^2",
        "logit beyond ±8",
        "unexplained between items (shuffled)",
    ]
    for low, high in COUNT_BANDS:
        band = f"{low}" if low == high else f"{low}-{high}"
        columns.append(f"logit std / unexplained, {band} same-topic")
    rows = []
    for result in results:
        fit = result["fit"]
        by_band = {tuple(band["same_topic"]): band for band in fit["bands"]}
        row = [
            result["variant"],
            f"{result['valid_auc']:.4f}",
            f"{fit['correlation_with_truth']:.3f}",
            f"{fit['planted_r2']:.3f}",
            f"{fit['extreme_share']:.2%}",
            f"{fit['item_share']:.2f} ({fit['item_share_shuffled']:.2f})",
        ]
        for band_key in COUNT_BANDS:
            found = by_band.get(band_key)
            row.append(
                "-"
                if found is None
                else f"{found['logit_std']:.2f} / {found['unexplained_std']:.2f}"
            )
        rows.append(row)
    return (
        markdown_table(columns, rows)
        + f"\n\nValid split; small preset, {epochs} epochs at most (best epoch kept), data: "
        f"`python -m model.synth {' '.join(synth_args)}`. Rows are grouped by how many of the 64 "
        "behaviours the model reads share the target's topic (the count term of the planted "
        "logit); 'unexplained' is what a least-squares fit on the planted terms leaves of the "
        "model's logit; 'between items' is the share of its variance carried by per-target-item "
        f"means (items with {MIN_ITEM_ROWS}+ rows), in brackets the same with the items "
        "shuffled."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.research.planted_fit", description=__doc__
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--only", default="qin,mlp", help=f"comma-separated keys of {list(VARIANTS)}"
    )
    args = parser.parse_args(argv)
    names = chosen_variants(parser, args.only)
    config = synth.SynthConfig(
        items=args.items,
        users=args.users,
        train_rows=args.train_rows,
        valid_rows=args.eval_rows,
        test_rows=args.eval_rows,
        seed=args.seed,
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        world = synth.generate(config, data)  # in process: the analysis needs the drawn truth
        index = synth.split_rows(config)["valid"]
        truth = world.score[index]
        terms = synth.click_terms(
            config, world.items, world.users, world.rows, synth.topic_pair_matrix(config), index
        )
        count = synth.same_topic_count(world, index)
        dataset = Dataset(data)
        valid = dataset.split("valid")
        for key in names:
            name, variant = VARIANTS[key]
            meta, seconds = train_variant(dataset, key, args, Path(tmp) / key)
            model, _ = load_checkpoint(Path(tmp) / key)  # the best epoch's weights
            logit = logits(predict(model, valid, dataset.items))
            results.append(
                {
                    "variant": name,
                    "overrides": variant,
                    "valid_auc": meta["metrics"]["valid"]["auc"],
                    "seconds": seconds,
                    "fit": analyse(logit, truth, terms, count, world.rows.target[index]),
                }
            )
            print(results[-1], flush=True)
    return publish_study(
        "planted_fit", args, results, report(results, synth_arguments(args), args.epochs)
    )


if __name__ == "__main__":
    sys.exit(main())
