"""AUC and logloss in numpy, so evaluation needs neither scikit-learn nor torch."""

from __future__ import annotations

import numpy as np

#: Probabilities are clipped before the log, as CTR tooling conventionally does.
LOGLOSS_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula; tied scores share their average rank."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    positives = float(labels.sum())
    negatives = float(labels.size - positives)
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both positive and negative labels")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: ranks start after all smaller scores.
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][labels > 0.5].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
