"""The model: an onnxruntime session on the exported serving graph, its provider and its inputs.

Torch-free. The provider is chosen at start-up and checked against what the session really got:
onnxruntime's GPU build silently falls back to CPU when CUDA libraries are missing, and a service
that believes it runs on a GPU while it runs on CPU is the worst kind of slow.

On CUDA every call binds its inputs to the device and its output there (IO binding), so
onnxruntime does no hidden host copies; only the probabilities come back.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contract.onnx_io import METADATA_KEYS, OUTPUT, serving_inputs

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelError(RuntimeError):
    """The model file cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    version: str
    graph: str
    provider: str  # the provider the session really runs on
    schema: dict[str, int]
    export_options: dict[str, Any]


def default_threads() -> int:
    """One intra-op thread per core this process may use, less one for the event loop."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Providers to ask onnxruntime for, best first, for ``requested`` (auto | cuda | cpu)."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ModelError(
                f"PROVIDER=cuda but this onnxruntime offers {available}: install onnxruntime-gpu"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def check_provider(requested: str, asked: list[str], got: list[str]) -> str:
    """The provider really in use; refuses a CUDA session that fell back when CUDA was required."""
    real = got[0] if got else CPU
    if requested == "cuda" and real != CUDA:
        raise ModelError(f"PROVIDER=cuda but the session runs on {real} (CUDA failed to load)")
    if asked[0] == CUDA and real != CUDA:
        log.warning("CUDA was offered but the session fell back to %s", real)
    return real


class ModelRunner:
    """One loaded serving graph. ``run`` is blocking and thread-safe; call it off the event loop."""

    def __init__(
        self,
        path: Path,
        provider: str = "auto",
        intra_op_threads: int = 0,
        spinning: bool = False,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file (MODEL_PATH); run python -m export")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.intra_op_num_threads = intra_op_threads or default_threads()
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        asked = choose_providers(provider, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=asked)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        real = check_provider(provider, asked, self.session.get_providers())
        self.info = _read_info(path, self.session, real)
        self.metadata = _decoded_metadata(self.session)
        self._check_inputs()
        self._cuda = real == CUDA

    @property
    def schema(self) -> dict[str, int]:
        return self.info.schema

    def _check_inputs(self) -> None:
        schema = self.info.schema
        specs = serving_inputs(schema["tags_per_item"], schema["item_vector_dim"])
        expected = [spec.name for spec in specs]
        got = [i.name for i in self.session.get_inputs()]
        if got != expected:
            raise ModelError(f"{self.info.path}: inputs {got}; the serving contract: {expected}")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Click probabilities, float32, one per candidate."""
        if self._cuda:
            return self._run_bound(feeds)
        return np.asarray(self.session.run([OUTPUT], feeds)[0])

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output(OUTPUT, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])


def _decoded_metadata(session: ort.InferenceSession) -> dict[str, Any]:
    """The exporter's metadata, JSON values decoded where they are JSON."""
    decoded: dict[str, Any] = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


def _read_info(path: Path, session: ort.InferenceSession, provider: str) -> ModelInfo:
    props = session.get_modelmeta().custom_metadata_map
    missing = [key for key in METADATA_KEYS if key not in props]
    if missing:
        raise ModelError(f"{path}: not exported by this project (missing metadata {missing})")
    if props["graph"] != "serving":
        raise ModelError(
            f"{path}: a {props['graph']!r} graph; the service needs the serving graph "
            "(python -m export --graph serving, the default)"
        )
    try:
        schema = json.loads(props["feature_schema"])
        options = json.loads(props["export_options"])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: malformed metadata ({exc})") from exc
    return ModelInfo(path, props["model_version"], props["graph"], provider, schema, options)
