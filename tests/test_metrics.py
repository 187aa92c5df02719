"""AUC and logloss against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from model.metrics import log_loss, roc_auc


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((wins + 0.5 * ties) / (len(positives) * len(negatives)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300).astype(np.float32)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_errors() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.zeros(4)) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(3), np.zeros(3))


def test_logloss_matches_formula_and_clips() -> None:
    labels = np.array([1.0, 0.0])
    assert log_loss(labels, np.array([0.8, 0.3])) == pytest.approx(-(np.log(0.8) + np.log(0.7)) / 2)
    assert np.isfinite(log_loss(labels, np.array([0.0, 1.0])))
