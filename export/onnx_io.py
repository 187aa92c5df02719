"""Writing a graph module to an ONNX file with dynamic sizes and metadata, and reading it back.

Choices, deliberately:

* The dynamo-based exporter of torch 2.13 (``torch.onnx.export(dynamo=True)``), opset 18: new
  enough for every op used here, old enough for any onnxruntime >= 1.14 (CPU and CUDA builds).
* All weights inside the one file (no external data): the paper preset is about 125 MB, far from
  protobuf's 2 GB limit, and one file is one atomic unit to copy, verify and hot-reload.
* The file holds the graph as exported (plus the exporter's own constant folding), not
  onnxruntime's optimised form, which is specific to the onnxruntime version and execution
  provider; sessions apply ``ORT_ENABLE_ALL`` when they load it (:func:`make_session`).
* fp16: the graph computes in float16 but keeps float32 vectors in and float32 probabilities out,
  so callers feed and read the same arrays either way.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contract.onnx_io import METADATA_KEYS, OUTPUT, contract_json, input_specs

OPSET = 18
#: The logger of torch.onnx's op registry. Building the registry, it warns once per torchvision op
#: ("torchvision is not installed. Skipping torchvision::nms", roi_align, ...) when torchvision is
#: absent; no graph here uses a torchvision op, so those lines say nothing about this export.
_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


class ExportError(RuntimeError):
    """Export or verification failed; the message says which step and why."""


class _NoTorchvisionNotice(logging.Filter):
    """Drops exactly the registry's "torchvision is not installed" warnings; every other record
    of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


def _quiet_torchvision_notice() -> None:
    logger = logging.getLogger(_REGISTRY_LOGGER)
    if not any(isinstance(f, _NoTorchvisionNotice) for f in logger.filters):
        logger.addFilter(_NoTorchvisionNotice())


_quiet_torchvision_notice()


def sample_inputs(graph: str, tags: int, vector_dim: int) -> dict[str, torch.Tensor]:
    """Small, valid inputs to trace with: sizes > 1 so no dimension is specialised to 0 or 1."""
    generator = torch.Generator().manual_seed(0)
    users, history, rows = 2, 5, 3

    def ids(*shape: int) -> torch.Tensor:
        return torch.randint(1, 3, shape, generator=generator)

    if graph == "serving":
        return {
            "history_ids": ids(users, history),
            "history_tags": ids(users, history, tags),
            "history_vectors": torch.randn(users, history, vector_dim, generator=generator),
            "candidate_user": torch.tensor([0, 1, 1]),
            "candidate_ids": ids(rows),
            "candidate_tags": ids(rows, tags),
            "candidate_vectors": torch.randn(rows, vector_dim, generator=generator),
            "likes_level": ids(rows),
            "views_level": ids(rows),
        }
    return {
        "likes_level": ids(rows),
        "views_level": ids(rows),
        "candidate_ids": ids(rows),
        "candidate_tags": ids(rows, tags),
        "candidate_vectors": torch.randn(rows, vector_dim, generator=generator),
        "history_ids": ids(rows, history),
        "history_tags": ids(rows, history, tags),
        "history_vectors": torch.randn(rows, history, vector_dim, generator=generator),
    }


def _dynamic_shapes(graph: str, tags: int, vector_dim: int) -> dict[str, dict[int, Any]]:
    dims: dict[str, Any] = {}
    shapes: dict[str, dict[int, Any]] = {}
    for spec in input_specs(graph, tags, vector_dim):
        axes = {}
        for axis, size in enumerate(spec.shape):
            if isinstance(size, str):
                axes[axis] = dims.setdefault(size, torch.export.Dim.DYNAMIC)
        shapes[spec.name] = axes
    return shapes


def export_module(
    module: nn.Module,
    graph: str,
    tags: int,
    vector_dim: int,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """Trace ``module`` to an in-memory ONNX model with dynamic users/candidates/history."""
    inputs = sample_inputs(graph, tags, vector_dim)
    names = [spec.name for spec in input_specs(graph, tags, vector_dim)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args=(),
            kwargs=inputs,
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_shapes=_dynamic_shapes(graph, tags, vector_dim),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto


def graph_metadata(
    model_version: str,
    graph: str,
    schema: dict[str, int],
    options: dict[str, Any],
) -> dict[str, str]:
    return {
        "model_version": model_version,
        "graph": graph,
        "feature_schema": json.dumps(schema, sort_keys=True),
        "input_contract": contract_json(graph, schema["tags_per_item"], schema["item_vector_dim"]),
        "export_options": json.dumps(options, sort_keys=True),
    }


def read_metadata(path: Path) -> dict[str, Any]:
    """The exporter's metadata of an ONNX file, JSON fields decoded. Reads no weights' values."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    missing = [key for key in METADATA_KEYS if key not in props]
    if missing:
        raise ExportError(f"{path}: not exported by this project (missing metadata {missing})")
    decoded: dict[str, Any] = dict(props)
    for key in ("feature_schema", "input_contract", "export_options", "parity"):
        if key in decoded:
            decoded[key] = json.loads(decoded[key])
    return decoded


def make_session(
    model: onnx.ModelProto | Path | str,
    providers: list[str] | None = None,
    threads: int = 0,
) -> ort.InferenceSession:
    """An onnxruntime session with full graph optimisation; CPU unless ``providers`` say."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    result = session.run([OUTPUT], {k: v for k, v in feeds.items() if k in names})
    return np.asarray(result[0])


def write_atomically(proto: onnx.ModelProto, out: Path) -> None:
    """Serialise to a temporary file beside ``out`` and rename it: never half a model file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(proto.SerializeToString())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
