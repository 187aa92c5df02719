"""Checkpoint folders: exact round trip, no pickle, clear errors for broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from contract.schema import FeatureSchema
from model.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from model.config import build_config
from model.factory import build_model
from tests.test_model import random_rows

SCHEMA = FeatureSchema(item_vocab=200, tag_vocab=40, history_len=8)


def saved(tmp_path: Path, overrides: list[str] | None = None) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    config = build_config("small", [*(overrides or []), "embedding_dim=8", "vector_dim=8"])
    model = build_model(config.model, SCHEMA)
    with torch.no_grad():  # move BatchNorm statistics off their defaults
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, config, {"metrics": {"valid": {"auc": 0.7}}})
    return model, tmp_path / "ckpt"


@pytest.mark.parametrize("overrides", [[], ["model=din"], ["attention=none", "interaction=mlp"]])
def test_round_trip_gives_identical_outputs(tmp_path: Path, overrides: list[str]) -> None:
    model, folder = saved(tmp_path, overrides)
    loaded, meta = load_checkpoint(folder)
    rows = random_rows(4, 8)
    assert torch.equal(loaded(**rows), model(**rows))
    assert meta["schema"] == SCHEMA.to_dict()
    assert meta["metrics"]["valid"]["auc"] == 0.7
    assert meta["version"].startswith(meta["config"]["model"]["model"] + "-")


def test_weights_are_safetensors_not_pickle(tmp_path: Path) -> None:
    _, folder = saved(tmp_path)
    header_size = int.from_bytes((folder / WEIGHTS_FILE).read_bytes()[:8], "little")
    header = json.loads((folder / WEIGHTS_FILE).read_bytes()[8 : 8 + header_size])
    assert "items.id_embedding.weight" in header
    assert not (folder / WEIGHTS_FILE).read_bytes().startswith(b"\x80")  # pickle protocol mark


def test_missing_folder_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "absent")
    _, folder = saved(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing weights file"):
        load_checkpoint(folder)
    (folder / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint\.json: missing"):
        load_checkpoint(folder)


def test_corrupt_files_are_refused(tmp_path: Path) -> None:
    _, folder = saved(tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(folder)
    (folder / META_FILE).write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    _, folder = saved(tmp_path)
    save_file({"head.weight": torch.zeros(1, 3)}, str(folder / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_checkpoint(folder)
    meta = json.loads((folder / META_FILE).read_text())
    meta["config"]["model"]["attention"] = "banana"
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="bad config"):
        load_checkpoint(folder)
