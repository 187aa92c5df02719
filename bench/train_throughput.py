"""Training throughput (rows/s) at the small and paper presets, on generated data.

    python -m bench.train_throughput [--steps 8] [--presets small,paper]

Side by side in one run, per preset: the indexed form the trainer uses (each distinct item of a
batch encoded once) and the direct form (every history position encoded on its own), so the ratio
is the measured gain of the item de-duplication. Times cover the whole step: batch assembly,
forward, backward, clipping and the Adam update.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.report import markdown_table, publish
from model.config import build_config
from model.data import Batch, Dataset, assemble_batch, iterate_rows
from model.evaluate import batch_tensors
from model.factory import build_model, count_parameters
from model.train import regularisation


def direct_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The same batch laid out row by row, history repeated per row (no de-duplication)."""
    target = batch.target_index
    history = batch.history_index
    return {
        "likes": torch.from_numpy(batch.likes),
        "views": torch.from_numpy(batch.views),
        "target_ids": torch.from_numpy(batch.item_ids[target]),
        "target_tags": torch.from_numpy(batch.item_tags[target]),
        "target_vectors": torch.from_numpy(batch.item_vectors[target]),
        "history_ids": torch.from_numpy(batch.item_ids[history]),
        "history_tags": torch.from_numpy(batch.item_tags[history]),
        "history_vectors": torch.from_numpy(batch.item_vectors[history]),
    }


def measure(dataset: Dataset, preset: str, form: str, steps: int) -> dict[str, float]:
    config = build_config(preset)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model(config.model, dataset.schema).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    split = dataset.split("train")
    batch_size = config.train.batch_size
    times = []
    rows = iterate_rows(len(split), batch_size, shuffle=True, seed=1)
    for step, index in enumerate(rows):
        if step >= steps + 1:
            break
        started = time.perf_counter()
        batch = assemble_batch(split, dataset.items, index)
        if form == "indexed":
            logits = model.forward_unique(**batch_tensors(batch, "cpu"))
        else:
            logits = model(**direct_inputs(batch))
        assert batch.labels is not None
        loss = loss_fn(logits, torch.from_numpy(batch.labels))
        loss = loss + regularisation(model, config.train.embedding_l2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        if step > 0:  # the first step pays for allocation and warm-up
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "batch_size": batch_size,
        "steps_timed": len(times),
        "median_step_s": median,
        "rows_per_s": batch_size / median,
        "parameters": count_parameters(model),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--data", type=Path, help="existing dataset (default: generate one)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            # The real catalogue size, so the paper preset's tables are the paper's.
            rows = 8192 * (args.steps + 1)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "model.synth",
                    "--out",
                    str(data),
                    "--items",
                    "91717",
                    "--users",
                    "50000",
                    "--train-rows",
                    str(rows),
                    "--valid-rows",
                    "1000",
                    "--test-rows",
                    "1000",
                ],
                check=True,
            )
        dataset = Dataset(data)
        results = []
        for preset in presets:
            for form in ("indexed", "direct"):
                print(f"measuring {preset} / {form} ...", flush=True)
                results.append(
                    {"preset": preset, "form": form, **measure(dataset, preset, form, args.steps)}
                )
    table_rows = []
    for preset in presets:
        indexed, direct = (
            next(r for r in results if r["preset"] == preset and r["form"] == form)
            for form in ("indexed", "direct")
        )
        table_rows.append(
            [
                preset,
                indexed["parameters"],
                indexed["batch_size"],
                round(indexed["rows_per_s"]),
                round(direct["rows_per_s"]),
                f"{indexed['rows_per_s'] / direct['rows_per_s']:.2f}x",
            ]
        )
    table = markdown_table(
        [
            "preset",
            "parameters",
            "batch",
            "rows/s (trainer, de-duplicated items)",
            "rows/s (direct form)",
            "gain",
        ],
        table_rows,
    )
    return publish(
        "train_throughput",
        {"threads": torch.get_num_threads(), "results": results},
        table,
        args.out,
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
