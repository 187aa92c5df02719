"""Presets and ``--set`` overrides: what a user types becomes exactly one typed config."""

from __future__ import annotations

import pytest

from model.config import RunConfig, build_config


def test_paper_preset_is_the_papers_training_setup() -> None:
    config = build_config("paper")
    assert config.model.embedding_dim == 128 and config.model.vector_dim == 128
    assert (config.model.qnn_layers, config.model.qnn_rows, config.model.dropout) == (4, 4, 0.1)
    assert (config.train.lr, config.train.batch_size, config.train.embedding_l2) == (
        2e-3,
        8192,
        2e-4,
    )
    assert (config.train.grad_clip, config.train.patience, config.train.lr_floor) == (
        10.0,
        8,
        1e-6,
    )


def test_small_preset_shrinks_widths_and_the_qnns_depth_for_a_cpu() -> None:
    config = build_config("small")
    assert (config.model.embedding_dim, config.model.vector_dim) == (32, 32)
    assert (config.model.qnn_layers, config.model.qnn_rows) == (2, 4)
    assert config.train.batch_size == 2048
    assert build_config("small", ["qnn_layers=4"]).model.qnn_layers == 4


def test_din_override_brings_the_baselines_own_defaults() -> None:
    config = build_config("paper", ["model=din"])
    assert config.model.model == "din"
    assert config.model.embedding_dim == 64 and config.train.lr == 1e-3
    assert config.model.din_attention_hidden == (512, 256)
    assert build_config("paper", ["model=din", "lr=0.01"]).train.lr == 0.01


def test_overrides_are_parsed_by_type() -> None:
    config = build_config(
        "small", ["qnn_rows=3", "dropout=0.2", "mlp_hidden=64,32", "attention=softmax"]
    )
    assert config.model.qnn_rows == 3
    assert config.model.dropout == 0.2
    assert config.model.mlp_hidden == (64, 32)
    assert config.model.attention == "softmax"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nope=1", "unknown setting 'nope'"),
        ("qnn_rows=x", "bad value 'x' for qnn_rows"),
        ("attention=sigmoid", "attention"),
        ("dropout=1.5", "dropout must be in [0, 1)"),
        ("lr_factor=1.0", "lr_factor must be in [0, 1)"),
        ("qnn_layers=0", "qnn_layers must be at least 1"),
        ("lr", "KEY=VALUE"),
        ("model=xgboost", "model must be one of"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        build_config("small", [override])
    assert message in str(info.value)


def test_run_config_round_trips_through_json_dict() -> None:
    config = build_config("small", ["model=din", "seed=7"])
    assert RunConfig.from_dict(config.to_dict()) == config
