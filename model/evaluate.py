"""Scoring a split with a trained network, and the ``python -m model.evaluate`` command."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from queue import Queue
from typing import TypeVar

import numpy as np
import torch

from contract.dataset import DataError, ItemTable
from model.base import CTRModel
from model.checkpoint import CheckpointError, load_checkpoint
from model.data import Batch, Dataset, Split, assemble_batch, iterate_rows
from model.metrics import log_loss, roc_auc

T = TypeVar("T")
U = TypeVar("U")


def batch_tensors(batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The indexed-form inputs of :meth:`CTRModel.forward_unique` as tensors on ``device``."""
    return {
        "likes": torch.from_numpy(batch.likes).to(device),
        "views": torch.from_numpy(batch.views).to(device),
        "item_ids": torch.from_numpy(batch.item_ids).to(device),
        "item_tags": torch.from_numpy(batch.item_tags).to(device),
        "item_vectors": torch.from_numpy(batch.item_vectors).to(device),
        "target_index": torch.from_numpy(batch.target_index).to(device),
        "history_index": torch.from_numpy(batch.history_index).to(device),
    }


def prefetch(items: Iterable[T], work: Callable[[T], U], depth: int = 2) -> Iterator[U]:
    """Run ``work`` on the next items in a background thread while the caller uses the current one.

    Batch assembly is numpy (it releases the GIL in sorting and gathers), so it overlaps with the
    model's torch kernels. Exceptions in the worker are re-raised in the caller.
    """
    queue: Queue[tuple[bool, object]] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put((True, work(item)))
            queue.put((False, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            queue.put((False, error))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            ok, value = queue.get()
            if not ok:
                if isinstance(value, BaseException):
                    raise value
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():
            try:
                queue.get_nowait()
            except Exception:
                thread.join(timeout=0.05)


@torch.no_grad()
def predict(
    model: CTRModel,
    split: Split,
    items: ItemTable,
    batch_size: int = 16384,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Click probabilities for every row of ``split``, in row order."""
    was_training = model.training
    model.eval()
    outputs = []
    rows = iterate_rows(len(split), batch_size, shuffle=False)
    for batch in prefetch(rows, lambda r: assemble_batch(split, items, r)):
        logits = model.forward_unique(**batch_tensors(batch, device))
        outputs.append(torch.sigmoid(logits).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)


def evaluate_split(
    model: CTRModel,
    split: Split,
    items: ItemTable,
    batch_size: int = 16384,
    device: torch.device | str = "cpu",
) -> dict[str, float | int]:
    if split.labels is None:
        raise DataError(f"split {split.name!r} has no label column: nothing to evaluate against")
    probabilities = predict(model, split, items, batch_size, device)
    return {
        "auc": roc_auc(split.labels, probabilities),
        "logloss": log_loss(split.labels, probabilities),
        "rows": len(split),
    }


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(choice)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.evaluate",
        description="Score a dataset split with a checkpoint and print AUC and logloss as JSON.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (parquet)")
    parser.add_argument("--split", choices=["train", "valid", "test"], default="valid")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, meta = load_checkpoint(args.checkpoint, str(device))
        dataset = Dataset(args.data, history_len=model.schema.history_len)
        split = dataset.split(args.split)
        result = evaluate_split(model, split, dataset.items, args.batch_size, device)
    except (CheckpointError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {**result, "split": args.split, "model_version": meta["version"]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
