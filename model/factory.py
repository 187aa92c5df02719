"""One place that turns a config and a schema into a network."""

from __future__ import annotations

from contract.schema import FeatureSchema
from model.base import CTRModel
from model.config import ModelConfig
from model.din import DIN
from model.qin import QIN


def build_model(config: ModelConfig, schema: FeatureSchema) -> CTRModel:
    if config.model == "qin":
        return QIN(config, schema)
    if config.model == "din":
        return DIN(config, schema)
    raise ValueError(f"unknown model {config.model!r}")


def count_parameters(model: CTRModel) -> int:
    return sum(p.numel() for p in model.parameters())
