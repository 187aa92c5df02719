"""Checkpoint folder -> verified ONNX file: build the graph, trace it, check parity, then write.

Nothing is written unless parity passes: the file is serialised to a temporary name beside
``out`` and renamed into place only after the session built from it matched PyTorch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from export.graphs import build_graph
from export.onnx_io import (
    OPSET,
    ExportError,
    export_module,
    graph_metadata,
    make_session,
    write_atomically,
)
from export.parity import check_parity, verification_requests
from model.checkpoint import load_checkpoint


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    graph: str = "serving",
    fp16: bool = False,
    verify_data: Path | None = None,
    verify_rows: int = 4096,
) -> dict[str, Any]:
    """Export, verify and write; returns a summary. Raises ExportError when parity fails."""
    started = time.perf_counter()
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    schema = model.schema.to_dict()
    dtype = torch.float16 if fp16 else torch.float32
    options = {
        "fp16": fp16,
        "opset": OPSET,
        "torch": torch.__version__,
        "checkpoint": str(checkpoint),
        "config": meta["config"],
    }
    metadata = graph_metadata(meta["version"], graph, schema, options)
    proto = export_module(
        build_graph(model, graph, dtype),
        graph,
        model.schema.tags_per_item,
        model.schema.item_vector_dim,
        metadata,
    )
    batches = verification_requests(model, verify_data, verify_rows)
    report = check_parity(model, make_session(proto), graph, batches, fp16=fp16)
    if not report.passed:
        raise ExportError(f"parity check failed for the {graph} graph: {report.reason}")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "parity", json.dumps(report.to_dict(), sort_keys=True)
    write_atomically(proto, out)
    return {
        "out": str(out),
        "graph": graph,
        "model_version": meta["version"],
        "bytes": out.stat().st_size,
        "parity": report.to_dict(),
        "seconds": round(time.perf_counter() - started, 2),
    }
