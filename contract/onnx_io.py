"""The input contract of the exported graphs, shared by the exporter and the service.

Torch-free on purpose (standard library only): the service imports this module to build its input
arrays, and the service never installs torch.

Two graphs are exported from one checkpoint:

* ``serving`` (the default): grouped by user. A micro-batch holds U users and C candidates; each
  user's history is an input once, and ``candidate_user`` says which user each candidate belongs to.
  History-side work is done once per user.
* ``direct``: the training forward, one row per candidate with its history repeated. Kept as the
  reference the serving graph's rewrites are measured and verified against.

Rules for ids the model has not seen (applied inside both graphs, so callers need not):

* An item id outside ``[1, item_vocab)`` (new in Redis, or negative) uses the padding row of the id
  embedding (zeros); its tags and 128-d vector are used as given. A history position counts as a
  behaviour when its raw id is > 0, so a new item in a history still takes part in attention.
* A tag outside ``[1, tag_vocab)`` is treated as padding: left out of the item's tag mean.
* A likes/views level outside ``[0, level_vocab)`` is treated as 0 (unknown).
* Only the most recent ``history_len`` history positions (the right end) are read, as in training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

#: Name of the graph output: click probabilities, float32, one per candidate.
OUTPUT = "probability"
GRAPH_KINDS = ("serving", "direct")
#: onnx.ModelProto.metadata_props keys written by the exporter.
METADATA_KEYS = ("model_version", "graph", "feature_schema", "input_contract", "export_options")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[str | int, ...]  # symbolic names for dynamic axes
    doc: str


def serving_inputs(tags_per_item: int, vector_dim: int) -> list[TensorSpec]:
    """Inputs of the serving graph, in order. U users, L history positions, C candidates."""
    t, v = tags_per_item, vector_dim
    return [
        TensorSpec(
            "history_ids",
            "int64",
            (
                "users",
                "history",
            ),
            "item ids, oldest first, 0 pads",
        ),
        TensorSpec("history_tags", "int64", ("users", "history", t), "tag ids per history item"),
        TensorSpec("history_vectors", "float32", ("users", "history", v), "128-d item vectors"),
        TensorSpec("candidate_user", "int64", ("candidates",), "row of the candidate's user"),
        TensorSpec("candidate_ids", "int64", ("candidates",), "target item ids"),
        TensorSpec("candidate_tags", "int64", ("candidates", t), "target tag ids"),
        TensorSpec("candidate_vectors", "float32", ("candidates", v), "target 128-d vectors"),
        TensorSpec("likes_level", "int64", ("candidates",), "0..10, 0 = unknown"),
        TensorSpec("views_level", "int64", ("candidates",), "0..10, 0 = unknown"),
    ]


def direct_inputs(tags_per_item: int, vector_dim: int) -> list[TensorSpec]:
    """Inputs of the direct graph, in order: one row per candidate, B rows, L positions."""
    t, v = tags_per_item, vector_dim
    return [
        TensorSpec("likes_level", "int64", ("rows",), "0..10, 0 = unknown"),
        TensorSpec("views_level", "int64", ("rows",), "0..10, 0 = unknown"),
        TensorSpec("candidate_ids", "int64", ("rows",), "target item ids"),
        TensorSpec("candidate_tags", "int64", ("rows", t), "target tag ids"),
        TensorSpec("candidate_vectors", "float32", ("rows", v), "target 128-d vectors"),
        TensorSpec("history_ids", "int64", ("rows", "history"), "item ids, oldest first"),
        TensorSpec("history_tags", "int64", ("rows", "history", t), "tag ids per history item"),
        TensorSpec("history_vectors", "float32", ("rows", "history", v), "128-d item vectors"),
    ]


def input_specs(graph: str, tags_per_item: int, vector_dim: int) -> list[TensorSpec]:
    if graph == "serving":
        return serving_inputs(tags_per_item, vector_dim)
    if graph == "direct":
        return direct_inputs(tags_per_item, vector_dim)
    raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {graph!r}")


def contract_json(graph: str, tags_per_item: int, vector_dim: int) -> str:
    specs = input_specs(graph, tags_per_item, vector_dim)
    payload: dict[str, Any] = {
        "graph": graph,
        "inputs": [asdict(s) for s in specs],
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["candidates"]},
    }
    return json.dumps(payload, sort_keys=True)
