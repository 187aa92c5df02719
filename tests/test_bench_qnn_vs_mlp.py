"""The QIN-vs-MLP settings sweep: its settings grammar and that a pair trains with them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench.research import qnn_vs_mlp
from bench.research.qnn_vs_mlp import parse_settings, run_identity
from bench.research.variants import add_data_arguments, train_variant
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


def test_a_run_is_identified_by_the_settings_its_network_reads() -> None:
    args = _parser().parse_args([])
    preset = {key: run_identity(key, args, []) for key in ("qin", "mlp")}
    assert run_identity("mlp", args, ["qnn_layers=1", "activation=relu"]) == preset["mlp"]
    assert run_identity("qin", args, ["mlp_hidden=64,32"]) == preset["qin"]
    assert run_identity("qin", args, ["qnn_layers=1"]) != preset["qin"]
    assert run_identity("mlp", args, ["dropout=0.2"]) != preset["mlp"]
    assert run_identity("mlp", _parser().parse_args(["--seed", "7"]), []) != preset["mlp"]


def test_a_run_equal_to_an_earlier_one_is_not_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real training on a tiny generated dataset: the second entry changes only the QNN's depth,
    so its MLP is the first entry's run, repeated, while its QIN is trained anew."""
    trained: list[tuple[str, list[str]]] = []

    def counting(
        dataset: Dataset, key: str, args: argparse.Namespace, out: Path, group: list[str]
    ) -> tuple[dict[str, Any], float]:
        trained.append((key, list(group)))
        return train_variant(dataset, key, args, out, group)

    monkeypatch.setattr(qnn_vs_mlp, "train_variant", counting)
    code = qnn_vs_mlp.main(
        ["--epochs", "1", "--train-rows", "3000", "--eval-rows", "600", "--items", "60",
         "--users", "300", "--settings", ";qnn_layers=1", "--out", str(tmp_path),
         "--name", "shape"]
    )  # fmt: skip
    assert code == 0
    assert trained == [("qin", []), ("mlp", []), ("qin", ["qnn_layers=1"])]
    rows = json.loads((tmp_path / "shape.json").read_text())["results"]
    assert rows[1]["mlp"]["same_as"] == 0 and "same_as" not in rows[0]["mlp"]
    assert rows[1]["mlp"]["valid_auc"] == rows[0]["mlp"]["valid_auc"]
    assert "same_as" not in rows[1]["qin"]
    assert "figures are repeated" in (tmp_path / "shape.md").read_text()
