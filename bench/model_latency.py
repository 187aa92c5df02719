"""Model-only latency: PyTorch eager, the direct ONNX export and the serving graph, side by side.

    python -m bench.model_latency [--presets small,paper] [--provider cpu|cuda] [--budget 2]

For each preset a model is built (random weights: latency does not depend on their values) and
both graphs are exported in memory. Every shape is timed on all three in one run: 1 user x
{1, 50, 200, 1000} candidates and 8 users x 200 candidates, history 64 (all positions filled).
Times are per model call (inputs already in memory), median and p90 over repeated calls after a
warm-up; ``--budget`` seconds per cell bounds the repeats. Multiply-adds per candidate are
counted analytically for both graph forms. Writes bench/results/model_latency[_cuda].{json,md}.

With ``--provider cuda`` the ONNX sessions run on onnxruntime's CUDA provider with IO binding
(inputs copied to the device once, outputs bound there) and the run fails unless the session
really got the CUDA provider; PyTorch runs on the GPU too.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.report import markdown_table, write_result
from contract.schema import MICROLENS_1M, FeatureSchema
from export.graphs import GEMM_ATTENTION_MAX_USERS, build_graph
from export.onnx_io import export_module, graph_metadata, make_session
from export.parity import Requests
from model.base import CTRModel
from model.config import ModelConfig, build_config
from model.factory import build_model

SHAPES = [(1, 1), (1, 50), (1, 200), (1, 1000), (8, 200)]
HISTORY = 64


def multiply_adds(config: ModelConfig, schema: FeatureSchema, users: int, candidates: int) -> dict:
    """Multiply-adds per candidate of the direct form and of the serving graph (QIN family).

    Counts matrix products only (the embedding gathers and element-wise work are small).
    """
    d, h, L = config.embedding_dim, config.vector_dim, schema.history_len
    n = 2 * d + h
    a = 2 * n
    width = 2 * d + 2 * n if config.attention != "none" else 2 * d + n
    encode = schema.item_vector_dim * h  # P per item
    if config.interaction == "qnn":
        interaction_direct = config.qnn_layers * width * config.qnn_rows * width
        interaction_serving = config.qnn_layers * width * width
    else:
        sizes = [width, *config.mlp_hidden]
        interaction_direct = interaction_serving = sum(x * y for x, y in itertools.pairwise(sizes))
    head = width if config.interaction == "qnn" else config.mlp_hidden[-1]
    attention_direct = attention_serving = 0
    if config.attention != "none":
        # Direct (the training forward, re-associated as model/layers.py does): W_kᵀW_q t and
        # W_o W_v (Σ w s) are four n x a products, plus the scores and pooling over L items.
        attention_direct = 4 * n * a + 2 * L * n
        # Serving: the two folded n x n maps per candidate, then scores and pooling against the
        # history: every user's (GEMMs) for few users, the candidate's own (gathered) otherwise.
        searched = users if users <= GEMM_ATTENTION_MAX_USERS else 1
        attention_serving = 2 * n * n + 2 * searched * L * n
    direct = (L + 1) * encode + attention_direct + interaction_direct + head
    per_user = L * encode
    serving = (
        encode + attention_serving + interaction_serving + head + per_user * users / candidates
    )
    return {"direct": direct, "serving": serving}


def requests(schema: FeatureSchema, users: int, per_user: int, seed: int = 0) -> Requests:
    rng = np.random.default_rng(seed)
    count = users * per_user
    return Requests(
        history_ids=rng.integers(1, schema.item_vocab, size=(users, HISTORY)),
        history_tags=rng.integers(1, schema.tag_vocab, size=(users, HISTORY, 5)),
        history_vectors=(rng.standard_normal((users, HISTORY, 128)) * 0.1).astype(np.float32),
        candidate_user=np.repeat(np.arange(users), per_user),
        candidate_ids=rng.integers(1, schema.item_vocab, size=count),
        candidate_tags=rng.integers(1, schema.tag_vocab, size=(count, 5)),
        candidate_vectors=(rng.standard_normal((count, 128)) * 0.1).astype(np.float32),
        likes_level=rng.integers(0, 11, size=count),
        views_level=rng.integers(0, 11, size=count),
    )


def time_calls(call: Callable[[], Any], budget: float, min_calls: int = 5) -> dict[str, float]:
    call()  # warm-up (allocations, kernel selection)
    call()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_calls or (
        time.perf_counter() - started < budget and len(samples) < 500
    ):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p90_ms": samples[int(0.9 * (len(samples) - 1))] * 1e3,
        "calls": len(samples),
    }


def session_call(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], cuda: bool
) -> Callable[[], Any]:
    if not cuda:
        names = [i.name for i in session.get_inputs()]
        arrays = {k: feeds[k] for k in names}
        return lambda: session.run(None, arrays)
    binding = session.io_binding()
    for name in [i.name for i in session.get_inputs()]:
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[name]), "cuda", 0)
        binding.bind_ortvalue_input(name, value)
    binding.bind_output(session.get_outputs()[0].name, "cuda", 0)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def torch_call(model: CTRModel, feeds: dict[str, np.ndarray], device: str) -> Callable[[], Any]:
    tensors = [
        torch.from_numpy(np.ascontiguousarray(feeds[k])).to(device)
        for k in (
            "likes_level", "views_level", "candidate_ids", "candidate_tags", "candidate_vectors",
            "history_ids", "history_tags", "history_vectors",
        )
    ]  # fmt: skip

    @torch.no_grad()
    def run() -> None:
        model(*tensors)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def bench_preset(preset: str, provider: str, budget: float) -> list[dict[str, Any]]:
    config = build_config("paper" if preset == "paper" else "small", [])
    schema = MICROLENS_1M if preset == "paper" else FeatureSchema(item_vocab=10_001, tag_vocab=2001)
    torch.manual_seed(0)
    model = build_model(config.model, schema).eval()
    cuda = provider == "cuda"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None
    sessions = {}
    for graph in ("direct", "serving"):
        meta = graph_metadata("bench", graph, schema.to_dict(), {})
        proto = export_module(build_graph(model, graph), graph, 5, 128, meta)
        session = make_session(proto, providers)
        if cuda and session.get_providers()[0] != "CUDAExecutionProvider":
            raise SystemExit(f"onnxruntime gave {session.get_providers()}, not CUDA: not measured")
        sessions[graph] = session
    device = "cuda" if cuda else "cpu"
    model = model.to(device)
    rows = []
    for users, per_user in SHAPES:
        batch = requests(schema, users, per_user)
        candidates = users * per_user
        eager = time_calls(torch_call(model, batch.direct(), device), budget)
        direct = time_calls(session_call(sessions["direct"], batch.direct(), cuda), budget)
        serving = time_calls(session_call(sessions["serving"], batch.serving(), cuda), budget)
        macs = multiply_adds(config.model, schema, users, candidates)
        rows.append(
            {
                "preset": preset,
                "users": users,
                "candidates": candidates,
                "eager_ms": eager["median_ms"],
                "direct_ms": direct["median_ms"],
                "serving_ms": serving["median_ms"],
                "serving_p90_ms": serving["p90_ms"],
                "speedup_vs_direct": direct["median_ms"] / serving["median_ms"],
                "speedup_vs_eager": eager["median_ms"] / serving["median_ms"],
                "serving_candidates_per_s": candidates / serving["median_ms"] * 1e3,
                "macs_direct": macs["direct"],
                "macs_serving": macs["serving"],
                "calls": [eager["calls"], direct["calls"], serving["calls"]],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_latency", description=__doc__)
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per cell (default 2)")
    parser.add_argument("--out-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args(argv)
    rows = []
    for preset in args.presets.split(","):
        rows += bench_preset(preset, args.provider, args.budget)
    columns = [
        "preset", "users x candidates", "PyTorch eager ms", "direct ONNX ms", "serving ONNX ms",
        "serving p90 ms", "serving vs direct", "serving vs eager", "candidates/s (serving)",
        "MACs/cand. direct", "MACs/cand. serving",
    ]  # fmt: skip
    table = markdown_table(
        columns,
        [
            [
                r["preset"], f"{r['users']} x {r['candidates'] // r['users']}", r["eager_ms"],
                r["direct_ms"], r["serving_ms"], r["serving_p90_ms"],
                f"{r['speedup_vs_direct']:.1f}x", f"{r['speedup_vs_eager']:.1f}x",
                int(r["serving_candidates_per_s"]), int(r["macs_direct"]), int(r["macs_serving"]),
            ]
            for r in rows
        ],
    )  # fmt: skip
    name = "model_latency" if args.provider == "cpu" else "model_latency_cuda"
    title = f"Model-only latency, onnxruntime {ort.__version__} ({args.provider}), history 64\n\n"
    path = write_result(
        name, {"provider": args.provider, "rows": rows}, title + table, args.out_dir
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
