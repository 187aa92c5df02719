"""The planted-fit analysis: what a model's logits hold of the generator's known click process."""

from __future__ import annotations

import numpy as np
import pytest

from bench.research.planted_fit import COUNT_BANDS, analyse, logits, report


def test_analysis_recovers_coefficients_and_flags_overconfident_bands() -> None:
    rng = np.random.default_rng(0)
    rows = 4000
    count = rng.integers(0, 65, rows)
    terms = {"a": rng.standard_normal(rows), "b": rng.standard_normal(rows)}
    truth = terms["a"] + terms["b"]
    # A model that got term a twice over, term b not at all, and adds noise that grows with the
    # count: half the rows with 31+ same-topic behaviours are scored beyond |8|.
    noise = rng.standard_normal(rows) * np.where(count > 30, 20.0, 0.1)
    logit = 2.0 * terms["a"] + noise
    item = rng.integers(1, 200, rows)
    fit = analyse(logit, truth, terms, count, item)
    clean = count <= 30
    refit = analyse(
        logit[clean],
        truth[clean],
        {k: v[clean] for k, v in terms.items()},
        count[clean],
        item[clean],
    )
    assert refit["coefficients"]["a"] == pytest.approx(2.0, abs=0.02)
    assert refit["coefficients"]["b"] == pytest.approx(0.0, abs=0.02)
    assert refit["planted_r2"] > 0.99
    assert fit["planted_r2"] < 0.1  # the noisy band dominates the variance
    bands = {tuple(band["same_topic"]): band for band in fit["bands"]}
    assert set(bands) == set(COUNT_BANDS)
    assert bands[(31, 64)]["extreme_share"] > 0.5
    assert bands[(0, 0)]["extreme_share"] == 0.0
    assert bands[(31, 64)]["unexplained_std"] > 10 * bands[(1, 8)]["unexplained_std"]
    assert 0.0 < fit["correlation_with_truth"] < refit["correlation_with_truth"]


def test_logits_survive_saturated_probabilities() -> None:
    out = logits(np.array([0.0, 0.5, 1.0], np.float32))
    assert np.isfinite(out).all()
    assert out[1] == 0.0
    assert out[0] == pytest.approx(-out[2])


def test_report_lists_every_model_and_band() -> None:
    rng = np.random.default_rng(1)
    count = np.repeat([0, 5, 20, 50], 50)
    terms = {"a": rng.standard_normal(200)}
    item = np.arange(200) % 10
    fit = analyse(terms["a"] + 0.1 * rng.standard_normal(200), terms["a"], terms, count, item)
    text = report([{"variant": "QIN", "valid_auc": 0.81, "fit": fit}], ["--seed", "1"], 4)
    row = next(line for line in text.splitlines() if line.startswith("| QIN | 0.8100 |"))
    assert row.count(" / ") == len(COUNT_BANDS)
    header = text.splitlines()[0]
    assert header.count("|") == row.count("|")  # no stray pipe breaks the table
    assert "`python -m model.synth --seed 1`" in text


def test_item_offsets_show_as_unexplained_variance_between_items() -> None:
    """A model that adds a fixed offset per target item (memorised, not planted) has most of its
    unexplained variance between items; one that adds row noise has what chance gives."""
    rng = np.random.default_rng(2)
    rows = 20_000
    item = rng.integers(1, 500, rows)
    terms = {"a": rng.standard_normal(rows)}
    count = rng.integers(0, 65, rows)
    offsets = rng.standard_normal(500)
    memorised = analyse(terms["a"] + offsets[item], terms["a"], terms, count, item)
    noisy = analyse(terms["a"] + rng.standard_normal(rows), terms["a"], terms, count, item)
    assert memorised["item_share"] > 0.9
    chance = memorised["item_share_shuffled"]
    assert chance == pytest.approx(noisy["item_share"], abs=0.03)
    assert chance < 0.1  # about one over the rows per item (40 here)
    one_row_each = analyse(terms["a"] + offsets[item], terms["a"], terms, count, np.arange(rows))
    assert np.isnan(one_row_each["item_share"])  # fewer than MIN_ITEM_ROWS rows per item
