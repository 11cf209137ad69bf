"""Significance tests, intervals and calibration metrics in evaluation/metrics.py, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.metrics import (
    brier_score,
    expected_calibration_error,
    mcnemar_exact,
    mean_interval,
    paired_difference_interval,
    reliability_curve,
    sign_test,
)


def paired(b: int, c: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (method_right, baseline_right) with b method-only, c baseline-only, both and neither inputs."""
    method = [True] * b + [False] * c + [True] * both + [False] * neither
    baseline = [False] * b + [True] * c + [True] * both + [False] * neither
    return np.array(method), np.array(baseline)


# Six inputs used for ECE, Brier and the reliability curve with bins=5 (edges 0, .2, .4, .6, .8, 1).
CONFIDENCE = np.array([0.0, 0.3, 0.7, 0.9, 1.0, 0.95])
CORRECT = np.array([False, True, True, True, True, False])


def test_mcnemar_hand_computed():
    # b=5, c=0: P = 2 · 0.5^5 = 0.0625.
    assert mcnemar_exact(*paired(5, 0, 10, 3)) == pytest.approx(0.0625)
    # b=1, c=4: P = 2 · P(X ≤ 1 | n=5) = 2 · (1 + 5) / 32 = 0.375.
    assert mcnemar_exact(*paired(1, 4, 7, 0)) == pytest.approx(0.375)
    # b = c: no evidence either way.
    assert mcnemar_exact(*paired(3, 3, 4, 2)) == pytest.approx(1.0)


def test_identical_method_and_baseline():
    right = np.array([True, False, True, True, False])
    assert mcnemar_exact(right, right) == 1.0
    low, high = paired_difference_interval(right, right)
    assert (low, high) == (0.0, 0.0)
    assert low <= 0.0 <= high


def test_paired_difference_interval_degenerate_and_shape():
    assert all(math.isnan(end) for end in paired_difference_interval(np.array([], bool), np.array([], bool)))
    with pytest.raises(ValueError):
        paired_difference_interval(np.ones(3, bool), np.ones(4, bool))
    # Method right wherever the baseline is, and more: every resample's difference is ≥ 0.
    low, high = paired_difference_interval(*paired(30, 0, 60, 10))
    assert 0.0 < low <= 0.3 <= high <= 1.0


def test_paired_difference_interval_matches_scipy_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(7)
    baseline = rng.random(2000) < 0.8
    method = baseline.copy()
    flipped = rng.random(2000) < 0.1
    method[flipped] = rng.random(int(flipped.sum())) < 0.65
    ours = paired_difference_interval(method, baseline, confidence=0.9, resamples=10_000, seed=1)
    theirs = bootstrap((method, baseline), lambda m, b, axis: m.mean(axis=axis) - b.mean(axis=axis), paired=True,
                       vectorized=True, n_resamples=10_000, batch=2000, method="percentile", confidence_level=0.9,
                       random_state=np.random.default_rng(2)).confidence_interval
    assert ours[0] == pytest.approx(theirs.low, abs=0.002)
    assert ours[1] == pytest.approx(theirs.high, abs=0.002)
    assert ours == paired_difference_interval(method, baseline, confidence=0.9, resamples=10_000, seed=1)


def test_sign_test_hand_computed():
    assert sign_test(8, 0) == pytest.approx(2 / 256)
    assert sign_test(0, 8) == pytest.approx(2 / 256)
    # 7 wins 1 loss: 2 · P(X ≥ 7 | n=8) = 2 · (8 + 1) / 256.
    assert sign_test(7, 1) == pytest.approx(18 / 256)
    assert sign_test(0, 0) == 1.0


def test_mean_interval_hand_computed():
    # mean 2, sample sd 1, sem 1/√3, t_{0.975, 2} = 4.302652729911275.
    half = 4.302652729911275 / math.sqrt(3)
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))


def test_mean_interval_degenerate():
    assert mean_interval([0.25]) == (0.25, 0.25, 0.25)
    assert mean_interval([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1, 0.1))
    assert all(math.isnan(value) for value in mean_interval([]))


def test_ece_and_brier_hand_computed():
    # bins=5: [0, .2): {0.0 wrong} gap |0 − 0| = 0;  [.2, .4): {0.3 right} gap 0.7;  [.6, .8): {0.7 right} gap 0.3;
    # [.8, 1]: {0.9 right, 1.0 right, 0.95 wrong}: mean confidence 0.95, accuracy 2/3, gap 17/60.
    # ECE = (0 + 0.7 + 0.3) / 6 + (3/6) · 17/60 = 20/120 + 17/120 = 37/120.
    assert expected_calibration_error(CONFIDENCE, CORRECT, bins=5) == pytest.approx(37 / 120)
    # Brier: (0² + 0.7² + 0.3² + 0.1² + 0² + 0.95²) / 6 = (0.49 + 0.09 + 0.01 + 0.9025) / 6 = 1.4925 / 6.
    assert brier_score(CONFIDENCE, CORRECT) == pytest.approx(1.4925 / 6)


def test_reliability_curve_table_and_ece_identity():
    table = reliability_curve(CONFIDENCE, CORRECT, bins=5)
    assert list(table.columns) == ["bin_low", "bin_high", "count", "mean_confidence", "accuracy"]
    assert table["bin_low"].tolist() == pytest.approx([0.0, 0.2, 0.6, 0.8])
    assert table["bin_high"].tolist() == pytest.approx([0.2, 0.4, 0.8, 1.0])
    assert table["count"].tolist() == [1, 1, 1, 3]
    assert table["mean_confidence"].tolist() == pytest.approx([0.0, 0.3, 0.7, 0.95])
    assert table["accuracy"].tolist() == pytest.approx([0.0, 1.0, 1.0, 2 / 3])
    rng = np.random.default_rng(3)
    confidence = np.concatenate([rng.random(500), [0.0, 1.0, 1.0]])
    correct = rng.random(confidence.size) < confidence
    table = reliability_curve(confidence, correct)
    assert table["bin_low"].iloc[0] == 0.0 and table["bin_high"].iloc[-1] == 1.0 and table["count"].sum() == 503
    identity = float((table["count"] / confidence.size * (table["accuracy"] - table["mean_confidence"]).abs()).sum())
    assert expected_calibration_error(confidence, correct) == pytest.approx(identity, abs=1e-12)


def test_calibration_all_correct_and_empty():
    confidence, correct = np.array([0.85, 0.9, 1.0]), np.ones(3, bool)
    # One bin [.8, 1]: mean confidence 0.91666…, accuracy 1 → ECE 1/12; Brier (0.15² + 0.1² + 0²) / 3.
    assert expected_calibration_error(confidence, correct, bins=5) == pytest.approx(1 / 12)
    assert brier_score(confidence, correct) == pytest.approx((0.0225 + 0.01) / 3)
    assert brier_score(np.array([0.2, 0.4]), np.zeros(2, bool)) == pytest.approx((0.04 + 0.16) / 2)
    assert math.isnan(expected_calibration_error([], []))
    assert math.isnan(brier_score([], []))
    assert reliability_curve([], []).empty
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [True])


@pytest.mark.parametrize("versions", [2, 7])  # one shared panel; small multiples from 7 on
def test_reliability_diagram_written(tmp_path, versions):
    from evaluation.figures import save_reliability_diagram

    rng = np.random.default_rng(versions)
    curves = {}
    for index in range(versions):
        confidence = rng.random(200)
        curves[f"v{index}"] = (confidence, rng.random(200) < confidence ** (1 + index / 10))
    path = tmp_path / "reliability.png"
    save_reliability_diagram(curves, path, title="reliability")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
