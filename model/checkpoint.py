"""Checkpoint folders: safetensors weights plus one JSON that says everything else.

Layout of a checkpoint folder::

    model.safetensors   best weights (never a pickle: loading cannot run code)
    checkpoint.json     format, version id, run config, feature schema, data fingerprint, metrics
    metrics.jsonl       one JSON object per epoch
    curves.png          training curves
    resume/             last epoch's weights, optimizer moments and loop state (for --resume)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contract.schema import FeatureSchema
from model.base import CTRModel
from model.config import RunConfig
from model.factory import build_model

CHECKPOINT_FORMAT = "qin-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the problem."""


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights, used in the version id."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def state_for_saving(model: CTRModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(
    folder: Path, model: CTRModel, config: RunConfig, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write the weights and checkpoint.json; returns the metadata written."""
    folder.mkdir(parents=True, exist_ok=True)
    state = state_for_saving(model)
    save_tensors(folder / WEIGHTS_FILE, state)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "version": f"{config.model.model}-{weights_digest(state)[:12]}",
        "config": config.to_dict(),
        "schema": model.schema.to_dict(),
        "torch_version": torch.__version__,
        **extra,
    }
    write_json(folder / META_FILE, meta)
    return meta


def read_metadata(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no such directory)")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is {folder} a checkpoint folder?")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return meta


def load_checkpoint(folder: Path, device: str = "cpu") -> tuple[CTRModel, dict[str, Any]]:
    """Rebuild the network from checkpoint.json and load its safetensors weights (eval mode)."""
    folder = Path(folder)
    meta = read_metadata(folder)
    try:
        config = RunConfig.from_dict(meta["config"])
        schema = FeatureSchema.from_dict(meta["schema"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / META_FILE}: bad config or schema ({error})") from None
    model = build_model(config.model, schema)
    load_weights(model, folder / WEIGHTS_FILE)
    model.to(device).eval()
    return model, meta


def load_weights(model: CTRModel, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, "
                f"config expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
