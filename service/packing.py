"""Packing requests into one serving-graph batch, and its scores back into requests. Pure numpy.

A batch of U requests becomes U history rows (each user's history once, right-aligned in
``history_len`` positions: the most recent item last, padding zeros first, as the graph reads the
right end) and the concatenation of every request's candidates, each pointing at its user's row.
Optional padding to a bucket size appends candidates of user 0 with padding features; their
scores are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.features import ItemFeatures


@dataclass(frozen=True, eq=False)
class ScoringInput:
    """One request, ready to pack: its user's history and its candidates' features."""

    history: ItemFeatures  # oldest first, at most history_len kept (the right end)
    candidates: ItemFeatures
    likes_level: np.ndarray | None = None  # (C,) overrides of the stored levels
    views_level: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.candidates)


@dataclass(frozen=True, eq=False)
class PackedBatch:
    feeds: dict[str, np.ndarray]
    bounds: np.ndarray  # (U + 1,) candidate offsets of each request
    candidates: int  # real candidates (padding excluded)

    def split(self, scores: np.ndarray) -> list[np.ndarray]:
        """Each request's scores, in its candidate order."""
        return [scores[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)]


def bucket(count: int) -> int:
    """The padded size of a batch of ``count`` candidates: the next power of two."""
    return 1 << max(0, count - 1).bit_length()


def buckets_up_to(limit: int) -> list[int]:
    """Every bucket a batch of at most ``limit`` candidates can be padded to."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, bucket(limit)]


def pack(inputs: Sequence[ScoringInput], history_len: int, pad: bool = False) -> PackedBatch:
    """The serving graph's feeds for ``inputs``; padded to ``bucket(C)`` candidates if ``pad``."""
    if not inputs:
        raise ValueError("cannot pack an empty batch")
    users, length = len(inputs), history_len
    first = inputs[0].candidates
    tags, dim = first.tags.shape[1], first.vectors.shape[1]
    history_ids = np.zeros((users, length), np.int64)
    history_tags = np.zeros((users, length, tags), np.int64)
    history_vectors = np.zeros((users, length, dim), np.float32)
    for row, item in enumerate(inputs):
        recent = item.history.ids[-length:] if length else item.history.ids[:0]
        n = len(recent)
        if n:
            history_ids[row, length - n :] = recent
            history_tags[row, length - n :] = item.history.tags[-n:]
            history_vectors[row, length - n :] = item.history.vectors[-n:]
    sizes = np.array([len(item) for item in inputs], np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    count = int(bounds[-1])
    total = bucket(count) if pad else count
    candidates = ItemFeatures.concat([item.candidates for item in inputs])
    likes = np.concatenate([_levels(item.likes_level, item.candidates.likes) for item in inputs])
    views = np.concatenate([_levels(item.views_level, item.candidates.views) for item in inputs])
    feeds: dict[str, np.ndarray] = {
        "history_ids": history_ids,
        "history_tags": history_tags,
        "history_vectors": history_vectors,
        "candidate_user": _padded(np.repeat(np.arange(users, dtype=np.int64), sizes), total),
        "candidate_ids": _padded(candidates.ids, total),
        "candidate_tags": _padded(candidates.tags, total),
        "candidate_vectors": _padded(candidates.vectors.astype(np.float32, copy=False), total),
        "likes_level": _padded(likes, total),
        "views_level": _padded(views, total),
    }
    return PackedBatch(feeds, bounds, count)


def _levels(override: np.ndarray | None, stored: np.ndarray) -> np.ndarray:
    return stored if override is None else np.asarray(override, np.int64)


def _padded(array: np.ndarray, total: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``total`` rows (as int64/float32 contiguous)."""
    missing = total - len(array)
    if missing <= 0:
        return np.ascontiguousarray(array)
    pad = np.zeros((missing, *array.shape[1:]), array.dtype)
    return np.concatenate([array, pad])
