"""The QIN-vs-MLP settings sweep: its settings grammar and that a pair trains with them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.ablations import add_data_arguments, train_variant
from bench.qnn_vs_mlp import parse_settings
from model.data import Dataset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnn_vs_mlp")
    add_data_arguments(parser)
    return parser


def test_settings_split_into_groups_with_the_preset_as_the_empty_entry() -> None:
    groups = parse_settings(_parser(), ";lr=1e-3&dropout=0.2;mlp_hidden=64,32")
    assert groups == [[], ["lr=1e-3", "dropout=0.2"], ["mlp_hidden=64,32"]]


@pytest.mark.parametrize(
    ("text", "named"), [("lr=abc", "lr"), ("bogus=1", "bogus"), (";dropout=1.5", "dropout")]
)
def test_a_bad_setting_is_a_usage_error_naming_it(
    text: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(_parser(), text)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("key", ["qin", "mlp"])
def test_both_members_of_a_pair_train_with_the_settings(
    key: str, tiny_data: Path, tmp_path: Path
) -> None:
    args = _parser().parse_args(["--epochs", "1"])
    meta, _ = train_variant(Dataset(tiny_data), key, args, tmp_path, ["lr=0.0005", "dropout=0.3"])
    train, model = meta["config"]["train"], meta["config"]["model"]
    assert (train["lr"], model["dropout"], train["max_epochs"]) == (0.0005, 0.3, 1)
    assert model["interaction"] == ("qnn" if key == "qin" else "mlp")
