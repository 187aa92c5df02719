"""Parity: the exported graph against the PyTorch model, on real batches, before a file is kept.

The reference is the model in eval mode under the id rules of :mod:`contract.onnx_io`
(``DirectGraph`` run by PyTorch: the training forward, one row per candidate, history repeated).

Three kinds of batches are checked:

* ``rows``: dataset rows as they are, each its own user (the AUC check uses their labels);
* ``grouped``: a few users, each with many candidates, as the service sends them;
* ``edges``: an empty history, a history longer than the model reads, ids outside the trained
  vocabulary (new items), out-of-range tags and levels.

Rows come from ``--verify-data`` (its valid split, else test, else train) or, without data, are
drawn at random within the checkpoint's vocabularies, with labels drawn from the model's own
probabilities so that the AUC check still measures ranking changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from contract.dataset import ItemTable
from export.graphs import build_graph
from export.onnx_io import run_session
from model.base import CTRModel
from model.data import Dataset
from model.metrics import roc_auc

#: The export contract (docs/model.md): fp32 max |Δp| and, for fp16, max |Δp| and the AUC change.
FP32_MAX_DIFF = 1e-5
FP16_MAX_DIFF = 2e-3
FP16_MAX_AUC_CHANGE = 1e-4


@dataclass
class Requests:
    """A batch in serving layout; ``direct()`` gives the same rows in direct layout."""

    history_ids: np.ndarray  # (U, L)
    history_tags: np.ndarray  # (U, L, T)
    history_vectors: np.ndarray  # (U, L, 128)
    candidate_user: np.ndarray  # (C,)
    candidate_ids: np.ndarray  # (C,)
    candidate_tags: np.ndarray  # (C, T)
    candidate_vectors: np.ndarray  # (C, 128)
    likes_level: np.ndarray  # (C,)
    views_level: np.ndarray  # (C,)
    labels: np.ndarray | None = None

    def serving(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if k != "labels"}

    def direct(self) -> dict[str, np.ndarray]:
        user = self.candidate_user
        return {
            "likes_level": self.likes_level,
            "views_level": self.views_level,
            "candidate_ids": self.candidate_ids,
            "candidate_tags": self.candidate_tags,
            "candidate_vectors": self.candidate_vectors,
            "history_ids": self.history_ids[user],
            "history_tags": self.history_tags[user],
            "history_vectors": self.history_vectors[user],
        }

    def feeds(self, graph: str) -> dict[str, np.ndarray]:
        return self.serving() if graph == "serving" else self.direct()

    def __len__(self) -> int:
        return len(self.candidate_ids)


def _features(items: ItemTable, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tags and vectors of ``ids``; ids outside the table get padding features."""
    inside = (ids > 0) & (ids < len(items.tags))
    safe = np.where(inside, ids, 0)
    tags = np.where(inside[..., None], items.tags[safe], 0)
    vectors = np.where(inside[..., None], items.vectors[safe], 0.0).astype(np.float32)
    return tags.astype(np.int64), vectors


def requests_from_rows(
    items: ItemTable,
    history: np.ndarray,
    targets: np.ndarray,
    likes: np.ndarray,
    views: np.ndarray,
    labels: np.ndarray | None,
) -> Requests:
    """Each row its own user."""
    history_tags, history_vectors = _features(items, history)
    tags, vectors = _features(items, targets)
    return Requests(
        history, history_tags, history_vectors, np.arange(len(targets)), targets, tags, vectors,
        likes, views, labels,
    )  # fmt: skip


def grouped_requests(
    items: ItemTable, histories: np.ndarray, per_user: int, rng: np.random.Generator
) -> Requests:
    """One user per history row, each with ``per_user`` random candidates."""
    users = len(histories)
    candidates = rng.integers(1, len(items.tags), size=users * per_user)
    history_tags, history_vectors = _features(items, histories)
    tags, vectors = _features(items, candidates)
    levels = rng.integers(0, 11, size=(2, users * per_user))
    return Requests(
        histories, history_tags, history_vectors, np.repeat(np.arange(users), per_user),
        candidates, tags, vectors, levels[0], levels[1],
    )  # fmt: skip


def edge_requests(items: ItemTable, model: CTRModel, histories: np.ndarray) -> Requests:
    """Empty, short and over-long histories; unknown items, tags and levels."""
    rng = np.random.default_rng(7)
    vocab, tag_vocab = model.schema.item_vocab, model.schema.tag_vocab
    long = model.schema.history_len + 36
    empty = np.zeros(long, dtype=np.int64)
    one = empty.copy()
    one[-1] = histories[0][histories[0] > 0][-1] if (histories[0] > 0).any() else 1
    full = np.concatenate([histories[min(1, len(histories) - 1)], histories[0]])[-long:]
    unknown = full.copy()
    unknown[-5:] = vocab + np.arange(5)  # new items, known only to the feature store
    rows = [empty, one, full, unknown]
    history = np.stack(rows)
    history_tags, history_vectors = _features(items, history)
    # new history items still carry tags and vectors (from Redis, say)
    history_tags[3, -5:] = rng.integers(1, tag_vocab, size=(5, history_tags.shape[-1]))
    history_vectors[3, -5:] = rng.normal(0, 0.1, size=(5, history_vectors.shape[-1]))
    per_user = 6
    candidates = rng.integers(1, vocab, size=len(rows) * per_user)
    candidates[:3] = [vocab, vocab + 10**6, -3]
    tags, vectors = _features(items, candidates)
    tags[3] = [tag_vocab, -1, 1, 0, tag_vocab + 7][: tags.shape[1]]
    likes = rng.integers(0, 11, size=len(candidates))
    views = rng.integers(0, 11, size=len(candidates))
    likes[:2], views[:2] = [11, -1], [99, 0]
    return Requests(
        history, history_tags, history_vectors.astype(np.float32),
        np.repeat(np.arange(len(rows)), per_user), candidates, tags, vectors, likes, views,
    )  # fmt: skip


def verification_requests(
    model: CTRModel, data: Path | None, rows: int = 4096, seed: int = 0
) -> dict[str, Requests]:
    """The batches parity is checked on (see the module docstring)."""
    rng = np.random.default_rng(seed)
    schema = model.schema
    if data is not None:
        dataset = Dataset(data, history_len=schema.history_len)
        name = next((s for s in ("valid", "test", "train") if dataset.has_split(s)), "valid")
        split = dataset.split(name, require_labels=False)
        items = dataset.items
        if len(items.tags) > schema.item_vocab:
            raise ValueError(
                f"{data}: item_info has {len(items.tags)} rows but the checkpoint was trained "
                f"with an item vocabulary of {schema.item_vocab}: not the same dataset"
            )
        picked = rng.choice(len(split.item_ids), size=min(rows, len(split.item_ids)), replace=False)
        picked.sort()
        row_batch = requests_from_rows(
            items, split.history[picked], split.item_ids[picked], split.likes[picked],
            split.views[picked], None if split.labels is None else split.labels[picked],
        )  # fmt: skip
        histories = split.history[picked[:8]]
    else:
        items = ItemTable(
            tags=rng.integers(0, schema.tag_vocab, size=(schema.item_vocab, schema.tags_per_item)),
            vectors=(rng.standard_normal((schema.item_vocab, schema.item_vector_dim)) / 11.3)
            .astype(np.float32),
        )  # fmt: skip
        items.tags[0], items.vectors[0] = 0, 0.0
        lengths = rng.integers(0, schema.history_len + 1, size=rows)
        history = rng.integers(1, schema.item_vocab, size=(rows, schema.history_len))
        history[
            np.arange(schema.history_len)[None, :] < (schema.history_len - lengths)[:, None]
        ] = 0
        targets = rng.integers(1, schema.item_vocab, size=rows)
        likes, views = rng.integers(0, 11, size=(2, rows))
        row_batch = requests_from_rows(items, history, targets, likes, views, None)
        histories = history[:8]
    if row_batch.labels is None:
        # Labels drawn from the model itself: AUC is then a meaningful ranking measure.
        probabilities = reference(model, row_batch)
        row_batch.labels = (rng.random(len(row_batch)) < probabilities).astype(np.float32)
    return {
        "rows": row_batch,
        "grouped": grouped_requests(items, histories, 100, rng),
        "edges": edge_requests(items, model, histories),
    }


@torch.no_grad()
def reference(
    model: CTRModel, requests: Requests, chunk: int = 2048, graph: nn.Module | None = None
) -> np.ndarray:
    """PyTorch eval probabilities (float32 model, id rules applied), direct layout.

    ``graph`` is ``build_graph(model, "direct")`` when the caller already has one.
    """
    graph = graph if graph is not None else build_graph(model, "direct")
    feeds = requests.direct()
    out = []
    for start in range(0, len(requests), chunk):
        part = {
            k: torch.from_numpy(np.ascontiguousarray(v[start : start + chunk]))
            for k, v in feeds.items()
        }
        out.append(graph(**part).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def run_chunked(
    session: ort.InferenceSession, graph: str, requests: Requests, chunk: int = 2048
) -> np.ndarray:
    """Session outputs; the rows batch is fed in chunks of users (each row is its own user)."""
    if graph == "serving" and len(requests.history_ids) == len(requests) and len(requests) > chunk:
        parts = []
        for start in range(0, len(requests), chunk):
            stop = start + chunk
            feeds = requests.serving()
            sub = {k: v[start:stop] for k, v in feeds.items()}
            sub["candidate_user"] = np.arange(len(sub["candidate_ids"]))
            parts.append(run_session(session, sub))
        return np.concatenate(parts)
    feeds = requests.feeds(graph)
    if graph == "direct":
        parts = [
            run_session(session, {k: v[s : s + chunk] for k, v in feeds.items()})
            for s in range(0, len(requests), chunk)
        ]
        return np.concatenate(parts)
    return run_session(session, feeds)


@dataclass
class ParityReport:
    graph: str
    precision: str
    max_abs_diff: dict[str, float]
    auc_reference: float
    auc_exported: float
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def check_parity(
    model: CTRModel,
    session: ort.InferenceSession,
    graph: str,
    batches: dict[str, Requests],
    fp16: bool = False,
) -> ParityReport:
    """Compare ``session`` with the PyTorch reference on every batch, against the tolerances."""
    diffs: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    direct = build_graph(model, "direct")  # one copy of the model for every batch
    for name, requests in batches.items():
        expected = reference(model, requests, graph=direct)
        got = run_chunked(session, graph, requests)
        outputs[name] = expected
        if got.shape != expected.shape or not np.isfinite(got).all():
            diffs[name] = float("inf")
        else:
            diffs[name] = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0))
        outputs[name + "/got"] = got
    rows = batches["rows"]
    assert rows.labels is not None
    auc_ref = roc_auc(rows.labels, outputs["rows"])
    auc_got = (
        roc_auc(rows.labels, outputs["rows/got"])
        if np.isfinite(outputs["rows/got"]).all()
        else float("nan")
    )
    limit = FP16_MAX_DIFF if fp16 else FP32_MAX_DIFF
    worst = max(diffs, key=lambda k: diffs[k])
    reasons = []
    if not diffs[worst] <= limit:
        reasons.append(f"max |Δp| {diffs[worst]:.3g} on the {worst!r} batch exceeds {limit:g}")
    if fp16 and not abs(auc_got - auc_ref) <= FP16_MAX_AUC_CHANGE:
        reasons.append(f"AUC changed by {abs(auc_got - auc_ref):.3g} > {FP16_MAX_AUC_CHANGE:g}")
    return ParityReport(
        graph=graph,
        precision="fp16" if fp16 else "fp32",
        max_abs_diff=diffs,
        auc_reference=auc_ref,
        auc_exported=auc_got,
        passed=not reasons,
        reason="; ".join(reasons) or "ok",
    )
