"""Model and training configuration: presets plus ``--set KEY=VALUE`` overrides.

A run is fully described by one :class:`RunConfig` (model + training fields); it is written into the
checkpoint JSON, so a checkpoint can always be rebuilt without guessing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

ModelName = Literal["qin", "din"]
AttentionKind = Literal["relu", "softmax", "none"]
InteractionKind = Literal["qnn", "mlp"]
ActivationKind = Literal["prelu", "relu"]
PresetName = Literal["small", "paper"]


@dataclass(frozen=True)
class ModelConfig:
    """Network hyper-parameters (as in the QIN paper). Ablations are chosen here, not by classes."""

    model: ModelName = "qin"
    embedding_dim: int = 128  # d: id, tag and level embeddings
    vector_dim: int = 128  # h: width of the learned projection P of item_emb_d128
    attention: AttentionKind = "relu"  # ASTA scores: ReLU (QIN), softmax, or no ASTA at all
    interaction: InteractionKind = "qnn"  # QNN (QIN) or an MLP ablation
    activation: ActivationKind = "prelu"  # activation inside each QNN layer
    qnn_layers: int = 4
    qnn_rows: int = 4
    dropout: float = 0.1
    mlp_hidden: tuple[int, ...] = (1024, 512, 256)  # MLP ablation and DIN's DNN
    din_attention_hidden: tuple[int, ...] = (512, 256)

    def item_width(self) -> int:
        """n = 2d + h: the width of one item's representation."""
        return 2 * self.embedding_dim + self.vector_dim


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the QIN paper's training settings, docs/model.md)."""

    lr: float = 2e-3
    batch_size: int = 8192
    embedding_l2: float = 2e-4  # on embedding tables and P, added to the loss
    grad_clip: float = 10.0
    max_epochs: int = 100
    patience: int = 8  # epochs without valid AUC improvement before stopping
    lr_factor: float = 0.5  # lr multiplier on an epoch without improvement
    lr_floor: float = 1e-6
    eval_batch_size: int = 16384
    # Training rows whose batch statistics replace BatchNorm's running averages after every
    # epoch (model.train.refresh_batch_norm); 0 keeps the running averages.
    bn_refresh_rows: int = 65536
    seed: int = 2025


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(
            model=_build(ModelConfig, data.get("model", {})),
            train=_build(TrainConfig, data.get("train", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Presets. "paper" is the paper's setup; "small" keeps the architecture (ASTA, a QNN of R = 4
# rows) but shrinks widths and the batch so that a CPU trains it in minutes, and has two quadratic
# layers, not four: at d = 32 on 60,000 to 600,000 generated rows four layers trained slower and
# ended lower every time (docs/research.md, "The QNN's shape against the data's size").
_PRESETS: dict[tuple[PresetName, ModelName], dict[str, Any]] = {
    ("paper", "qin"): {},
    ("paper", "din"): {
        "embedding_dim": 64,
        "vector_dim": 64,
        "lr": 1e-3,
    },
    ("small", "qin"): {
        "embedding_dim": 32,
        "vector_dim": 32,
        "qnn_layers": 2,
        "mlp_hidden": (256, 128, 64),
        "batch_size": 2048,
    },
    ("small", "din"): {
        "embedding_dim": 32,
        "vector_dim": 32,
        "mlp_hidden": (256, 128, 64),
        "din_attention_hidden": (128, 64),
        "batch_size": 2048,
        "lr": 1e-3,
    },
}


def build_config(preset: PresetName = "small", overrides: list[str] | None = None) -> RunConfig:
    """Resolve a preset, then the model's own preset defaults, then ``KEY=VALUE`` overrides.

    ``model=din`` among the overrides selects DIN's preset defaults (embedding 64, lr 1e-3 ...)
    before the other overrides apply, so ``--set model=din`` alone gives the documented baseline.
    """
    if preset not in get_args(PresetName):
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(get_args(PresetName))}")
    pairs = [_split_override(item) for item in overrides or []]
    values: dict[str, str] = dict(pairs)
    model_name = values.get("model", "qin")
    if model_name not in get_args(ModelName):
        raise ValueError(f"model must be one of {list(get_args(ModelName))}, got {model_name!r}")
    merged: dict[str, Any] = dict(_PRESETS[(preset, model_name)])  # type: ignore[index]
    merged["model"] = model_name
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    hints = {**get_type_hints(ModelConfig), **get_type_hints(TrainConfig)}
    for key, raw in pairs:
        if key not in model_fields and key not in train_fields:
            known = sorted(model_fields | train_fields)
            raise ValueError(f"unknown setting {key!r}; known settings: {', '.join(known)}")
        merged[key] = _parse_value(key, raw, hints[key])
    model_part = {k: v for k, v in merged.items() if k in model_fields}
    train_part = {k: v for k, v in merged.items() if k in train_fields}
    return RunConfig(model=_build(ModelConfig, model_part), train=_build(TrainConfig, train_part))


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()


def _parse_value(key: str, raw: str, hint: Any) -> Any:
    """Parse a command-line string by the field's annotated type, with a message naming the key."""
    try:
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint == tuple[int, ...]:
            return tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
        choices = get_args(hint)
        if choices and raw not in choices:
            raise ValueError(f"choose one of {list(choices)}")
        return raw
    except ValueError as error:
        raise ValueError(f"bad value {raw!r} for {key}: {error}") from None


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, validating field names and choice values."""
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        choices = get_args(hints[key])
        if choices and hints[key] != tuple[int, ...] and value not in choices:
            raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
        values[key] = value
    config = cls(**values)
    _check_ranges(config)
    return config


def _check_ranges(config: Any) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "dropout" and not 0.0 <= value < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {value}")
        if f.name == "lr_factor" and not 0.0 <= value < 1.0:  # ReduceLROnPlateau's bound
            raise ValueError(f"lr_factor must be in [0, 1), got {value}")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value < 1
            and f.name not in {"seed", "bn_refresh_rows"}
        ):
            raise ValueError(f"{f.name} must be at least 1, got {value}")
        if f.name == "bn_refresh_rows" and value < 0:
            raise ValueError(f"bn_refresh_rows must be 0 (off) or positive, got {value}")
        if isinstance(value, float) and f.name in {"lr", "lr_floor"} and value <= 0:
            raise ValueError(f"{f.name} must be positive, got {value}")
