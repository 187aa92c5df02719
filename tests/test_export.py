"""ONNX export: both graphs match PyTorch in real onnxruntime sessions; bad exports are refused."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from contract.schema import FeatureSchema
from export import __main__ as export_cli
from export import folding, graphs
from export.graphs import GEMM_ATTENTION_MAX_USERS, ServingGraph, build_graph
from export.onnx_io import _REGISTRY_LOGGER, make_session, read_metadata, run_session
from export.parity import Requests, reference, verification_requests
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import build_config
from model.data import Dataset, infer_schema
from model.factory import build_model

SCHEMA = FeatureSchema(item_vocab=300, tag_vocab=50)
ROOT = Path(__file__).resolve().parents[1]


def trained_like(overrides: list[str], seed: int = 0) -> torch.nn.Module:
    """A small-preset model with non-trivial BatchNorm statistics, PReLU slopes and embeddings."""
    torch.manual_seed(seed)
    model = build_model(build_config("small", overrides).model, SCHEMA)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            if isinstance(module, torch.nn.PReLU):
                module.weight.fill_(0.1)
            if isinstance(module, torch.nn.Embedding):
                module.weight[1:].normal_(0, 0.05)
    return model.eval()


def random_requests(users: int, history: int, per_user: int, seed: int = 1) -> Requests:
    rng = np.random.default_rng(seed)
    count = users * per_user
    history_ids = rng.integers(1, SCHEMA.item_vocab, size=(users, history))
    if history:
        history_ids[:, : history // 4] = 0  # left padding
    return Requests(
        history_ids=history_ids,
        history_tags=rng.integers(0, SCHEMA.tag_vocab, size=(users, history, 5)),
        history_vectors=(rng.standard_normal((users, history, 128)) * 0.1).astype(np.float32),
        candidate_user=np.repeat(np.arange(users), per_user),
        candidate_ids=rng.integers(1, SCHEMA.item_vocab, size=count),
        candidate_tags=rng.integers(0, SCHEMA.tag_vocab, size=(count, 5)),
        candidate_vectors=(rng.standard_normal((count, 128)) * 0.1).astype(np.float32),
        likes_level=rng.integers(0, 11, size=count),
        views_level=rng.integers(0, 11, size=count),
    )


@pytest.fixture(scope="module")
def qin_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    config = build_config("small", [])
    save_checkpoint(folder, trained_like([]), config, {"data": {"path": "generated"}})
    return folder


@pytest.fixture(scope="module")
def sessions(qin_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CLI's own output for each graph and precision, exported once for the module."""
    out = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, extra in [("serving", []), ("direct", ["--graph", "direct"]), ("fp16", ["--fp16"])]:
        path = out / f"{name}.onnx"
        argv = ["--checkpoint", str(qin_checkpoint), "--out", str(path), "--verify-rows", "512"]
        assert export_cli.main([*argv, *extra]) == 0
        files[name] = path
    return files


def test_folded_quadratic_layer_is_the_same_function() -> None:
    model = trained_like([])
    layer = model.interaction.layers[0].eval()
    z = torch.randn(64, layer.width)
    f = folding.fold_quadratic(layer)
    q = z * (z @ f.weight.T + f.bias) + f.shift
    assert f.slope is not None
    folded = z + torch.where(q >= 0, q, q * f.slope)
    torch.testing.assert_close(folded, layer(z), atol=1e-5, rtol=1e-5)
    assert f.weight.shape == (layer.width, layer.width)  # R blocks became one matrix


@pytest.mark.parametrize(
    "overrides",
    [[], ["attention=softmax"], ["attention=none"], ["interaction=mlp"], ["activation=relu"],
     ["model=din"]],
    ids=["qin", "softmax", "no-asta", "mlp", "relu", "din"],
)  # fmt: skip
def test_serving_graph_in_torch_equals_the_training_forward(overrides: list[str]) -> None:
    model = trained_like(overrides)
    requests = random_requests(users=3, history=64, per_user=20)
    serving = build_graph(model, "serving")
    feeds = {k: torch.from_numpy(v) for k, v in requests.serving().items()}
    direct = {k: torch.from_numpy(v) for k, v in requests.direct().items()}
    with torch.no_grad():
        got = serving(**feeds).numpy()
        expected = torch.sigmoid(
            model(
                direct["likes_level"],
                direct["views_level"],
                direct["candidate_ids"],
                direct["candidate_tags"],
                direct["candidate_vectors"],
                direct["history_ids"],
                direct["history_tags"],
                direct["history_vectors"],
            )
        ).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    assert expected.std() > 0.0  # scores differ between candidates: the check compares something


@pytest.mark.parametrize("graph", ["serving", "direct", "fp16"])
@pytest.mark.parametrize(
    ("users", "history", "per_user"),
    [(1, 0, 1), (1, 1, 50), (1, 64, 200), (8, 64, 25), (3, 100, 7),
     (GEMM_ATTENTION_MAX_USERS, 64, 3), (GEMM_ATTENTION_MAX_USERS + 1, 64, 3)],
)  # fmt: skip
def test_onnx_session_matches_pytorch(
    sessions: dict[str, Path],
    qin_checkpoint: Path,
    graph: str,
    users: int,
    history: int,
    per_user: int,
) -> None:
    model, _ = load_checkpoint(qin_checkpoint)
    requests = random_requests(users, history, per_user)
    session = make_session(sessions[graph])
    got = run_session(session, requests.feeds("direct" if graph == "direct" else "serving"))
    expected = reference(model, requests)
    assert got.dtype == np.float32 and got.shape == (users * per_user,)
    assert np.abs(got - expected).max() <= (2e-3 if graph == "fp16" else 1e-5)


def shuffled(requests: Requests, seed: int = 3) -> Requests:
    """The same candidates in a random order: users' candidates interleaved, not in blocks."""
    order = np.random.default_rng(seed).permutation(len(requests))
    per_candidate = ["candidate_user", "candidate_ids", "candidate_tags", "candidate_vectors",
                     "likes_level", "views_level"]  # fmt: skip
    return Requests(**{k: v[order] if k in per_candidate else v for k, v in vars(requests).items()})


@pytest.mark.parametrize("scoring", ["relu", "softmax"])
@pytest.mark.parametrize("most_users", [0, 10**6], ids=["gather", "gemm"])
def test_both_attention_paths_equal_the_training_forward(
    scoring: str, most_users: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graphs, "GEMM_ATTENTION_MAX_USERS", most_users)
    model = trained_like([f"attention={scoring}"])
    requests = shuffled(random_requests(users=5, history=64, per_user=6))
    requests.history_ids[2] = 0  # a user without behaviours: all weights 0
    feeds = {k: torch.from_numpy(v) for k, v in requests.serving().items()}
    with torch.no_grad():
        got = build_graph(model, "serving")(**feeds).numpy()
    assert np.abs(got - reference(model, requests)).max() <= 1e-5


def test_exported_serving_graph_picks_the_attention_path_at_run_time(
    sessions: dict[str, Path], qin_checkpoint: Path
) -> None:
    # Traced with 2 users: a Python branch would have frozen the GEMM path into the file.
    nodes = onnx.load(str(sessions["serving"])).graph.node
    assert [node.op_type for node in nodes].count("If") == 1
    model, _ = load_checkpoint(qin_checkpoint)
    session = make_session(sessions["serving"])
    for users in (2, GEMM_ATTENTION_MAX_USERS + 3):
        requests = shuffled(random_requests(users=users, history=64, per_user=4))
        got = run_session(session, requests.serving())
        assert np.abs(got - reference(model, requests)).max() <= 1e-5


@pytest.mark.parametrize("slope", [0.25, -0.5, 0.0, 1.75])
def test_split_prelu_is_prelu_bit_for_bit(slope: float) -> None:
    graph = build_graph(trained_like([]), "serving")
    assert isinstance(graph, ServingGraph) and graph.prelu
    with torch.no_grad():
        graph.layer_slopes[0].fill_(slope)
    q = torch.cat([torch.randn(4096) * 3, torch.tensor([0.0, -0.0, 1e-40, -1e-40, 1e30, -1e30])])
    prelu = torch.nn.PReLU(init=slope)
    with torch.no_grad():
        assert torch.equal(graph.activate(q, 0), prelu(q))


def test_longer_history_reads_only_the_most_recent_items(sessions: dict[str, Path]) -> None:
    session = make_session(sessions["serving"])
    long = random_requests(users=2, history=100, per_user=5)
    cut = Requests(**{**vars(long)})
    cut.history_ids = long.history_ids[:, -64:]
    cut.history_tags = long.history_tags[:, -64:]
    cut.history_vectors = long.history_vectors[:, -64:]
    np.testing.assert_array_equal(
        run_session(session, long.serving()), run_session(session, cut.serving())
    )


def test_unknown_ids_fall_back_to_padding_and_new_items_still_count(
    sessions: dict[str, Path], qin_checkpoint: Path
) -> None:
    model, _ = load_checkpoint(qin_checkpoint)
    session = make_session(sessions["serving"])
    requests = random_requests(users=1, history=64, per_user=4)
    requests.candidate_ids[:] = [SCHEMA.item_vocab, 10**9, -5, 0]
    requests.likes_level[:2] = [11, -1]
    got = run_session(session, requests.serving())
    assert np.isfinite(got).all()
    # All four candidate ids use the padding id embedding: only tags/vectors/levels differ.
    same_features = Requests(**{**vars(requests)})
    same_features.candidate_ids = np.zeros(4, dtype=np.int64)
    same_features.likes_level = np.where(
        (requests.likes_level >= 0) & (requests.likes_level < 11), requests.likes_level, 0
    )
    np.testing.assert_allclose(got, run_session(session, same_features.serving()), atol=1e-6)
    # A history item unknown to the model still takes part in attention (its vector counts).
    base = run_session(session, requests.serving())
    changed = Requests(**{**vars(requests)})
    changed.history_ids = requests.history_ids.copy()
    changed.history_ids[0, -1] = SCHEMA.item_vocab + 3
    changed.history_vectors = requests.history_vectors.copy()
    changed.history_vectors[0, -1] = 0.5
    assert np.abs(run_session(session, changed.serving()) - base).max() > 1e-6
    assert np.abs(reference(model, changed) - run_session(session, changed.serving())).max() < 1e-5


def test_metadata_round_trip(sessions: dict[str, Path], qin_checkpoint: Path) -> None:
    meta = read_metadata(sessions["serving"])
    on_disk = json.loads((qin_checkpoint / "checkpoint.json").read_text())
    assert meta["model_version"] == on_disk["version"]
    assert meta["graph"] == "serving"
    assert meta["feature_schema"] == on_disk["schema"]
    names = [spec["name"] for spec in meta["input_contract"]["inputs"]]
    session = make_session(sessions["serving"])
    assert names == [i.name for i in session.get_inputs()]
    assert meta["export_options"]["fp16"] is False
    assert read_metadata(sessions["fp16"])["export_options"]["fp16"] is True
    assert meta["parity"]["passed"] is True
    assert meta["parity"]["max_abs_diff"]["rows"] <= 1e-5
    onnx.checker.check_model(str(sessions["serving"]))


def test_serving_graph_is_smaller_than_direct(sessions: dict[str, Path]) -> None:
    # Folding the QNN's R=4 rows into one matrix per layer shrinks the file about fourfold.
    assert sessions["serving"].stat().st_size < 0.6 * sessions["direct"].stat().st_size


def test_a_failing_parity_check_is_refused_and_writes_nothing(
    qin_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    original = folding.fold_quadratic

    def wrong(layer: torch.nn.Module) -> folding.FoldedQuadratic:
        folded = original(layer)  # type: ignore[arg-type]
        folded.bias = folded.bias + 1e-3  # a subtly wrong rewrite
        return folded

    monkeypatch.setattr("export.graphs.fold_quadratic", wrong)
    out = tmp_path / "bad.onnx"
    argv = ["--checkpoint", str(qin_checkpoint), "--out", str(out), "--verify-rows", "256"]
    assert export_cli.main(argv) == 1
    assert "parity" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_verification_rows_come_from_the_dataset(tiny_data: Path) -> None:
    schema = infer_schema(Dataset(tiny_data).items)
    model = build_model(build_config("small", []).model, schema).eval()
    batches = verification_requests(model, tiny_data)
    assert set(batches) == {"rows", "grouped", "edges"}
    rows = batches["rows"]
    assert rows.labels is not None and set(np.unique(rows.labels)) <= {0.0, 1.0}
    assert len(rows) == 600  # the tiny dataset's whole valid split
    assert (batches["edges"].history_ids == 0).all(axis=1).any()  # an empty history


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert export_cli.main(["--checkpoint", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "data").mkdir()
    argv = ["--checkpoint", str(tmp_path), "--out", str(out), "--verify-data", str(tmp_path)]
    assert export_cli.main(argv) == 2
    assert "checkpoint.json" in capsys.readouterr().err


def test_the_command_line_says_nothing_about_torchvision(
    qin_checkpoint: Path, tmp_path: Path
) -> None:
    """torch.onnx warns once per torchvision op when torchvision is absent; those lines are
    dropped at their logger, and only they: another warning of that logger still passes."""
    out = tmp_path / "m.onnx"
    argv = ["--checkpoint", str(qin_checkpoint), "--out", str(out), "--verify-rows", "256"]
    done = subprocess.run(
        [sys.executable, "-m", "export", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and json.loads(done.stdout)["parity"]["passed"]
    assert "torchvision" not in done.stderr, done.stderr
    registry = logging.getLogger(_REGISTRY_LOGGER)

    def record(message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(
            _REGISTRY_LOGGER, logging.WARNING, __file__, 1, message, args, None
        )

    assert not registry.filter(record("torchvision is not installed. Skipping %s", "tv::nms"))
    assert registry.filter(record("Failed to infer the signature for function '%s'", "f"))
