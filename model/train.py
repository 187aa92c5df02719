"""Training loop and the ``python -m model.train`` command.

The QIN paper's settings: Adam, BCE, L2 on embedding tables and P, gradient-norm clipping, valid AUC
every epoch, lr halved on an epoch without improvement (floor 1e-6; ``ReduceLROnPlateau``), stop
after ``patience`` such epochs in a row, best weights kept. Every epoch reseeds its shuffle and
dropout from (seed, epoch), so a run resumed from ``resume/`` continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm import tqdm

from contract.dataset import DataError
from model.base import CTRModel
from model.checkpoint import (
    CheckpointError,
    load_weights,
    save_checkpoint,
    save_tensors,
    state_for_saving,
    write_json,
)
from model.config import RunConfig, build_config
from model.data import Dataset, assemble_batch, iterate_rows
from model.evaluate import batch_tensors, evaluate_split, prefetch, resolve_device
from model.factory import build_model, count_parameters
from model.plots import plot_curves

RESUME_DIR = "resume"
#: The normalisation layers whose running statistics refresh_batch_norm recomputes (the public
#: classes; the models here use BatchNorm1d only).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class LoopState:
    """What the epoch loop needs to continue after an interruption."""

    epoch: int = 0  # next epoch to run
    lr: float = 0.0  # the optimizer's, as the scheduler left it
    best_auc: float = float("-inf")
    best_epoch: int = -1
    # Epochs in a row without improvement. A counter of its own: with patience 0 (halve on every
    # such epoch) the scheduler resets its num_bad_epochs after each cut, so it cannot count them.
    bad_epochs: int = 0
    finished: bool = False


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> ReduceLROnPlateau:
    """lr × lr_factor (not below lr_floor) after every epoch whose valid AUC is not strictly above
    the best so far; the first epoch always improves on the initial -inf. threshold 0 makes the
    improvement strict, eps 0 applies even the last tiny cut to the floor."""
    return ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=config.train.lr_factor,
        patience=0,
        threshold=0.0,
        threshold_mode="abs",
        min_lr=config.train.lr_floor,
        eps=0.0,
    )


def end_epoch(scheduler: ReduceLROnPlateau, state: LoopState, auc: float, patience: int) -> bool:
    """Feed the epoch's valid AUC to the scheduler and advance the loop state; returns whether
    the AUC improved on the best (the caller then keeps these weights)."""
    best_before = scheduler.best
    scheduler.step(auc)
    improved = bool(scheduler.best != best_before)
    state.lr = float(scheduler.optimizer.param_groups[0]["lr"])
    if improved:
        state.best_auc, state.best_epoch, state.bad_epochs = auc, state.epoch, 0
    else:
        state.bad_epochs += 1
    state.epoch += 1
    state.finished = state.bad_epochs >= patience
    return improved


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def regularisation(model: CTRModel, l2: float) -> torch.Tensor:
    """(l2 / 2) · Σ‖W‖² over the embedding tables and P: gradient l2·W, like weight decay."""
    squares = torch.stack([table.pow(2).sum() for table in model.regularised_tables()])
    return 0.5 * l2 * squares.sum()


def train_epoch(
    model: CTRModel,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    config: RunConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    split = dataset.split("train")
    settings = config.train
    model.train()
    torch.manual_seed(settings.seed * 1000 + epoch)  # dropout stream of this epoch
    rows = iterate_rows(len(split), settings.batch_size, shuffle=True, seed=settings.seed + epoch)
    batches = prefetch(rows, lambda r: assemble_batch(split, dataset.items, r))
    loss_fn = nn.BCEWithLogitsLoss()
    total_loss, seen, started = 0.0, 0, time.perf_counter()
    # A bar redraws itself many times a second: on a terminal only. Into a log or CI, where each
    # redraw would be a line of its own, one summary line per epoch is written instead.
    live = progress and sys.stderr.isatty()
    bar = tqdm(
        total=len(split),
        desc=f"epoch {epoch}",
        unit="row",
        disable=not live,
        leave=False,
        dynamic_ncols=True,
    )
    for batch in batches:
        assert batch.labels is not None
        labels = torch.from_numpy(batch.labels).to(device)
        logits = model.forward_unique(**batch_tensors(batch, device))
        loss = loss_fn(logits, labels)
        objective = loss + regularisation(model, settings.embedding_l2)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        size = len(labels)
        total_loss += loss.item() * size
        seen += size
        bar.update(size)
        bar.set_postfix(
            loss=f"{total_loss / seen:.4f}", rows_s=f"{seen / (time.perf_counter() - started):.0f}"
        )
    bar.close()
    seconds = time.perf_counter() - started
    if progress and not live:
        print(
            f"epoch {epoch}: {seen} rows in {seconds:.1f} s ({seen / seconds:.0f} rows/s), "
            f"loss {total_loss / max(seen, 1):.4f}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_seconds": seconds,
        "train_rows_per_s": seen / seconds,
    }


def refresh_batch_norm(
    model: CTRModel, dataset: Dataset, config: RunConfig, epoch: int, device: torch.device
) -> int:
    """Recompute every BatchNorm's running statistics from the current weights.

    Why: the running averages (momentum 0.1) mix statistics of many past weights. Early in
    training that is badly wrong for QIN: its quadratic terms start tiny (embeddings at N(0, 1e-4)
    multiply each other) while a running variance starts at 1, so in eval mode the QNN's
    normalised branch is scaled down by orders of magnitude for a hundred steps or more, and
    valid AUC (and the best-epoch choice, and the exported model) reflect weights as they were,
    not as they are. A forward pass over ``bn_refresh_rows`` training rows in train mode (no
    gradients, dropout off) with a cumulative average gives the statistics of the weights kept.
    Returns the rows used (0 when the model has no BatchNorm or the refresh is off).
    """
    settings = config.train
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms or settings.bn_refresh_rows == 0:
        return 0
    split = dataset.split("train")
    # Rows of its own per epoch, apart from the training shuffle's (seed + epoch).
    seed = settings.seed + 7919 * (epoch + 1)
    order = iterate_rows(len(split), settings.batch_size, shuffle=True, seed=seed)
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the refresh batches
        norm.train()
    used = 0
    with torch.no_grad():
        for rows in order:
            if used >= settings.bn_refresh_rows:
                break
            if len(rows) < 2:  # BatchNorm needs two rows for a variance
                continue
            batch = assemble_batch(split, dataset.items, rows)
            model.forward_unique(**batch_tensors(batch, device))
            used += len(rows)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
    return used


def save_resume(
    folder: Path,
    model: CTRModel,
    optimizer: torch.optim.Optimizer,
    scheduler: ReduceLROnPlateau,
    state: LoopState,
) -> None:
    """Last epoch's weights, Adam moments (safetensors, no pickle), the scheduler's state and the
    loop state."""
    resume = folder / RESUME_DIR
    resume.mkdir(parents=True, exist_ok=True)
    save_tensors(resume / "last.safetensors", state_for_saving(model))
    optimizer_state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().cpu().contiguous().reshape(value.shape)
        for index, slots in optimizer_state["state"].items()
        for key, value in slots.items()
    }
    save_tensors(resume / "optimizer.safetensors", tensors)
    write_json(
        resume / "state.json",
        {
            **state.__dict__,
            "param_groups": optimizer_state["param_groups"],
            "scheduler": scheduler.state_dict(),
        },
    )


def load_resume(
    folder: Path,
    model: CTRModel,
    optimizer: torch.optim.Optimizer,
    scheduler: ReduceLROnPlateau,
    log: Any = print,
) -> LoopState:
    resume = folder / RESUME_DIR
    data = json.loads((resume / "state.json").read_text())
    param_groups = data.pop("param_groups")
    scheduler_state = data.pop("scheduler", None)
    load_weights(model, resume / "last.safetensors")
    flat = load_file(str(resume / "optimizer.safetensors"))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in flat.items():
        index, key = name.split(".", 1)
        slots.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": slots, "param_groups": param_groups})
    state = LoopState(**data)
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    else:
        # Written before the scheduler was: its whole state follows from the loop state (with
        # patience 0 its bad-epoch count is 0 after every step; the lr is in the param groups).
        scheduler.best, scheduler.last_epoch = state.best_auc, state.epoch
        log(f"{resume / 'state.json'} predates the lr scheduler: its state rebuilt from the loop's")
    return state


def can_resume(folder: Path, config: RunConfig, fingerprint: str) -> bool:
    """Resume only a run of the same config on the same data; anything else starts afresh."""
    state_file = folder / RESUME_DIR / "state.json"
    run_file = folder / RESUME_DIR / "run.json"
    if not (state_file.is_file() and run_file.is_file()):
        return False
    run = json.loads(run_file.read_text())
    # Compared as JSON reads it back: tuples (mlp_hidden) come back as lists.
    same_config = run.get("config") == json.loads(json.dumps(config.to_dict()))
    return bool(same_config and run.get("fingerprint") == fingerprint)


def train(
    dataset: Dataset,
    config: RunConfig,
    out: Path,
    device: torch.device,
    resume: bool = True,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train, keep the best epoch by valid AUC, and write the checkpoint folder ``out``."""
    settings = config.train
    seed_everything(settings.seed)
    model = build_model(config.model, dataset.schema).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    fingerprint = dataset.fingerprint()
    valid = dataset.split("valid")
    dataset.split("train")  # validate both splits before spending time
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    scheduler = make_scheduler(optimizer, config)
    state = LoopState(lr=settings.lr)
    if resume and can_resume(out, config, fingerprint):
        state = load_resume(out, model, optimizer, scheduler, log)
        log(f"resuming {out} at epoch {state.epoch}")
    else:
        metrics_file.unlink(missing_ok=True)
        write_json(
            out / RESUME_DIR / "run.json", {"config": config.to_dict(), "fingerprint": fingerprint}
        )
    log(f"{config.model.model}: {count_parameters(model):,} parameters on {device}")
    while not state.finished and state.epoch < settings.max_epochs:
        epoch_metrics = train_epoch(
            model, optimizer, dataset, config, state.epoch, device, progress
        )
        refresh_batch_norm(model, dataset, config, state.epoch, device)
        scores = evaluate_split(model, valid, dataset.items, settings.eval_batch_size, device)
        record = {
            "epoch": state.epoch,
            "lr": state.lr,
            **epoch_metrics,
            "valid_auc": scores["auc"],
            "valid_logloss": scores["logloss"],
        }
        with metrics_file.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        log(json.dumps(record))
        if end_epoch(scheduler, state, scores["auc"], settings.patience):
            save_tensors(out / RESUME_DIR / "best.safetensors", state_for_saving(model))
        save_resume(out, model, optimizer, scheduler, state)
    return finish(out, model, config, dataset, fingerprint, state, device)


def finish(
    out: Path,
    model: CTRModel,
    config: RunConfig,
    dataset: Dataset,
    fingerprint: str,
    state: LoopState,
    device: torch.device,
) -> dict[str, Any]:
    """Reload the best weights, measure them, write checkpoint.json and the curves."""
    load_weights(model, out / RESUME_DIR / "best.safetensors")
    model.eval()
    metrics: dict[str, Any] = {"best_epoch": state.best_epoch, "epochs_run": state.epoch}
    for name in ("valid", "test"):
        if dataset.has_split(name):
            split = dataset.split(name, require_labels=False)
            if split.labels is not None:
                metrics[name] = evaluate_split(
                    model, split, dataset.items, config.train.eval_batch_size, device
                )
    meta = save_checkpoint(
        out,
        model,
        config,
        {
            "data": {
                "path": str(dataset.root),
                "fingerprint": fingerprint,
                "rows": {"train": len(dataset.split("train"))},
            },
            "metrics": metrics,
            "parameters": count_parameters(model),
        },
    )
    plot_curves(out / "metrics.jsonl", out / "curves.png", title=meta["version"])
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train QIN (or DIN, or an ablation chosen with --set) on a MicroLens-format "
        "dataset and write a checkpoint folder.",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (parquet)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--preset", choices=["small", "paper"], default="paper")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any model or training setting",
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (same as --set max_epochs=N)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    parser.add_argument(
        "--history-len", type=int, default=64, help="most recent behaviours kept per row"
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh even if OUT holds an interrupted run of this config",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"max_epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    try:
        config = build_config(args.preset, overrides)
        device = resolve_device(args.device)
        dataset = Dataset(args.data, history_len=args.history_len)
        meta = train(
            dataset,
            config,
            args.out,
            device,
            resume=not args.no_resume,
            progress=not args.no_progress,
        )
    except (DataError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {"checkpoint": str(args.out), "version": meta["version"], **meta["metrics"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
