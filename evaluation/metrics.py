"""Evaluation metrics over (versions × inputs) arrays: limits, improvements, e_k, AUROC and the risk-coverage
areas, significance, calibration (voting itself is ``selection.base.majority_vote``).

No Python loop runs over inputs. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.special import xlogy
from scipy.stats import binned_statistic, binom, sem, t
from sklearn.metrics import auc, brier_score_loss, roc_auc_score

from utils import SEED


def accuracy(predictions: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(truth))) if len(truth) else float("nan")


def upper_limit(version_labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of inputs on which at least one version is right: no selector can do better."""
    return float(np.mean((np.asarray(version_labels) == truth).any(axis=0)))


def lower_limit(version_labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of inputs on which every version is right."""
    return float(np.mean((np.asarray(version_labels) == truth).all(axis=0)))


def improvements(method_accuracy: float, voting_accuracy: float, upper: float) -> tuple[float, float | None]:
    """Absolute (method − voting) and relative ((method − voting) / (upper − voting)) improvement.

    The relative one is None where upper equals voting (nothing left to improve).
    """
    absolute = method_accuracy - voting_accuracy
    headroom = upper - voting_accuracy
    return absolute, (absolute / headroom if headroom > 1e-12 else None)


def error_breakdown(version_labels: np.ndarray, truth: np.ndarray,
                    predictions: np.ndarray) -> list[tuple[float, float | None]]:
    """For k = 0..N: (e_k, accuracy of ``predictions`` on those inputs).

    e_k is the share of inputs on which exactly k versions are wrong; the accuracy is None where
    no input has k wrong versions.
    """
    wrong = (np.asarray(version_labels) != truth).sum(axis=0)
    return error_breakdown_of(wrong, np.asarray(predictions) == truth, np.asarray(version_labels).shape[0])


def error_breakdown_of(wrong_versions: np.ndarray, right: np.ndarray,
                       n_versions: int) -> list[tuple[float, float | None]]:
    """:func:`error_breakdown` from the number of wrong versions per input and whether the method is right: one
    count per k, so that a set's many methods share the first."""
    inputs = np.bincount(wrong_versions, minlength=n_versions + 1)
    hits = np.bincount(wrong_versions, weights=right, minlength=n_versions + 1)
    total = max(len(wrong_versions), 1)
    return [(float(inputs[k] / total) if len(wrong_versions) else float("nan"),
             float(hits[k] / inputs[k]) if inputs[k] else None) for k in range(n_versions + 1)]


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for telling positives from negatives (ties count half).

    None when only one class is present (the area is undefined).
    """
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return None
    return float(roc_auc_score(positives, np.asarray(scores, dtype=np.float64)))


def accepted_errors(scores: np.ndarray, correct: np.ndarray) -> np.ndarray | None:
    """The expected number of wrong answers among the first k inputs accepted, k = 1..n, accepting in decreasing
    order of ``scores``. Tied scores are accepted together in no particular order: inside a tie each accepted
    input adds the tie's error rate, the exact expectation over the tie's orderings. The risk-coverage figure
    (``figures.save_risk_coverage``) draws its curves from these counts; the areas below do not use them. None
    for no input."""
    scores = np.asarray(scores, dtype=np.float64)
    wrong = ~np.asarray(correct, dtype=bool)
    if not scores.size:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_wrong = scores[order], wrong[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sizes = np.diff(np.r_[starts, scores.size])
    return np.cumsum(np.repeat(np.add.reduceat(sorted_wrong, starts) / sizes, sizes))


# The three areas follow FD-Shifts (IML-DKFZ/fd-shifts, fd_shifts/analysis/rc_stats.py and rc_stats_utils.py: the
# reference code of Traub et al., NeurIPS 2024), so that they compare with the field's published tables; FD-Shifts
# prints them multiplied by 1000, these stay in [0, 1].


def threshold_counts(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One entry per distinct value t of ``scores``, from the highest t to the lowest: how many inputs have a score
    of at least t (those a threshold of t accepts) and how many of them are wrong. A group of tied scores is one
    threshold, so it is accepted or rejected whole; the last entry accepts every input. None for no input."""
    scores = np.asarray(scores, dtype=np.float64)
    wrong = ~np.asarray(correct, dtype=bool)
    if not scores.size:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    accepted = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True]) + 1
    return accepted, np.cumsum(wrong[order])[accepted - 1]


def aurc(scores: np.ndarray, correct: np.ndarray) -> float | None:
    """Area under the risk-coverage curve (Geifman et al., 2019), as FD-Shifts computes it: one curve point per
    distinct score threshold t, at coverage (share of inputs with a score of at least t) and selective risk (the
    error rate among them), from the working point (coverage 1, the version's error rate) to the most confident
    tie group; an end point at coverage 0 repeats the last point's risk; the trapezoid rule joins them. Tied
    scores are one point (``threshold_counts``). Lower is better. None for no input.

    With no ties this is the mean selective risk over coverages 1/n .. n/n, minus err/(2n) (the working point's
    half-weight), plus w/(2n) where w is 1 if the most confident input is wrong (the repeated end point)."""
    counts = threshold_counts(scores, correct)
    if counts is None:
        return None
    accepted, errors = counts
    risks = errors / accepted
    return float(auc(np.r_[0.0, accepted / accepted[-1]], np.r_[risks[0], risks]))


def augrc(scores: np.ndarray, correct: np.ndarray) -> float | None:
    """Area under the generalized risk-coverage curve (Traub et al., NeurIPS 2024), as FD-Shifts computes it: the
    points of :func:`aurc`, with the share of *all* inputs that are accepted and wrong as risk instead of the error
    rate among the accepted, and an end point at coverage 0 of risk 0 (nothing accepted, nothing wrong); the
    trapezoid rule joins them. Unlike AURC it does not weigh the first few accepted inputs' failures up. Tied
    scores are one point. Lower is better. None for no input.

    With no ties this is the mean generalized risk over coverages 1/n .. n/n minus err/(2n)."""
    counts = threshold_counts(scores, correct)
    if counts is None:
        return None
    accepted, errors = counts
    return float(auc(np.r_[0.0, accepted / accepted[-1]], np.r_[0.0, errors / accepted[-1]]))


def eaurc(scores: np.ndarray, correct: np.ndarray) -> float | None:
    """Excess AURC (Geifman et al., 2019), as FD-Shifts computes it for right/wrong outcomes: :func:`aurc` minus the
    closed form err + (1 − err)·ln(1 − err), the area under an oracle's curve when coverage is continuous (err: the
    version's error rate), so that versions of different accuracy compare. All right (err = 0): the optimum is 0.
    All wrong (err = 1): (1 − err)·ln(1 − err) is taken as its limit 0, so the optimum is 1 (FD-Shifts adds a
    machine epsilon inside the logarithm to the same effect). At finite n the trapezoid of a perfect ranking lies
    a little below the closed form, so a near-perfect ranking may score slightly below 0. None for no input."""
    achieved = aurc(scores, correct)
    if achieved is None:
        return None
    err = float(np.mean(~np.asarray(correct, dtype=bool)))
    return achieved - (err + float(xlogy(1.0 - err, 1.0 - err)))


# ---------------------------------------------------------------------------------------------------------------------
# Significance, uncertainty and calibration: is an improvement over voting real, and are the P(correct) honest?
# ---------------------------------------------------------------------------------------------------------------------


def _discordant_counts(method_right: np.ndarray, baseline_right: np.ndarray) -> tuple[int, int, int]:
    """(b, c, n): inputs only the method gets right, only the baseline gets right, and all inputs."""
    method_right = np.asarray(method_right, dtype=bool)
    baseline_right = np.asarray(baseline_right, dtype=bool)
    if method_right.shape != baseline_right.shape:
        raise ValueError(f"paired arrays differ in shape: {method_right.shape} vs {baseline_right.shape}")
    b = int(np.count_nonzero(method_right & ~baseline_right))
    c = int(np.count_nonzero(~method_right & baseline_right))
    return b, c, method_right.size


def _binomial_p(successes: int, trials: int) -> float:
    """Two-sided exact binomial p-value against 1/2; 1.0 when there is nothing to test."""
    return float(two_sided_half_p(np.array([successes]), np.array([trials]))[0])


def two_sided_half_p(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial p-values against 1/2, many at once: the distribution is symmetric, so the
    outcomes at most as likely as the observed one are the two tails, ``min(1, 2·P(X <= min(k, n − k)))``;
    1.0 where there are no trials.

    scipy.stats.binomtest gives the same values (tests/test_selection.py checks it) but searches for the
    other tail: 0.4-0.85 ms per call (two tests per result row, 21,760 rows on the paper-sized grid of
    benchmarks/bench_evaluation.py: 17-37 s); one vectorised ``binom.cdf`` per set costs 11 µs per test.
    """
    successes, trials = np.asarray(successes, dtype=np.int64), np.asarray(trials, dtype=np.int64)
    tail = binom.cdf(np.minimum(successes, trials - successes), np.maximum(trials, 1), 0.5)
    return np.where(trials > 0, np.minimum(1.0, 2.0 * tail), 1.0)


def mcnemar_exact(method_right, baseline_right) -> float:
    """Two-sided exact McNemar p-value: only inputs where the two disagree carry evidence of a difference."""
    b, c, _ = _discordant_counts(method_right, baseline_right)
    return _binomial_p(b, b + c)


def mcnemar_exact_many(methods_right: np.ndarray, baseline_right: np.ndarray) -> np.ndarray:
    """:func:`mcnemar_exact` of each row of ``methods_right`` (methods × inputs) against one baseline."""
    methods_right, baseline_right = np.asarray(methods_right, dtype=bool), np.asarray(baseline_right, dtype=bool)
    b = np.count_nonzero(methods_right & ~baseline_right, axis=1)
    c = np.count_nonzero(~methods_right & baseline_right, axis=1)
    return two_sided_half_p(b, b + c)


def paired_difference_interval(method_right, baseline_right, confidence: float = 0.95, resamples: int = 10_000,
                               seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(method) − accuracy(baseline), resampling inputs in pairs.

    Each input's paired difference is +1, −1 or 0, so resampling n inputs with replacement is a multinomial
    draw of the three counts: O(resamples) rather than O(n·resamples). Empty input gives (NaN, NaN).
    """
    # Hand-written instead of scipy.stats.bootstrap(paired=True, method="percentile"), measured on n = 10,000 inputs,
    # 10,000 resamples, median of 3 runs (3 sessions) on 2 busy shared CPU cores: 2.1-3.6 ms here vs 1.4-2.8 s for
    # SciPy (batch=500 or unbatched), i.e. 400-1,200x faster. tests/test_statistics.py checks both give one interval.
    return _bootstrap_interval(*_discordant_counts(method_right, baseline_right), confidence, resamples, seed)


def paired_difference_intervals(methods_right: np.ndarray, baseline_right: np.ndarray, workers: int = 1,
                                confidence: float = 0.95, resamples: int = 10_000,
                                seed: int = SEED) -> list[tuple[float, float]]:
    """:func:`paired_difference_interval` of each row of ``methods_right`` (methods × inputs) against one baseline,
    on ``workers`` threads: NumPy draws the resamples without holding the interpreter lock, and each interval
    has a generator of its own, so the intervals do not depend on the number of workers."""
    counts = [_discordant_counts(right, baseline_right) for right in methods_right]
    if workers <= 1 or len(counts) < 2:
        return [_bootstrap_interval(*c, confidence, resamples, seed) for c in counts]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda c: _bootstrap_interval(*c, confidence, resamples, seed), counts))


@lru_cache(maxsize=65_536)
def _bootstrap_interval(b: int, c: int, n: int, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """The interval depends on the counts alone (a fresh generator per call): methods that share them share it."""
    if n == 0:
        return float("nan"), float("nan")
    counts = np.random.default_rng(seed).multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
    differences = (counts[:, 0] - counts[:, 1]) / n
    tail = (1.0 - confidence) / 2.0
    low, high = np.percentile(differences, [100.0 * tail, 100.0 * (1.0 - tail)])
    return float(low), float(high)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test p-value over configurations (ties already dropped): does the method win more often?"""
    return _binomial_p(int(wins), int(wins) + int(losses))


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) with a Student-t interval: how large the improvement is across configurations."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    spread = float(sem(values)) if values.size > 1 else 0.0
    if spread == 0.0:
        return mean, mean, mean
    low, high = t.interval(confidence, values.size - 1, loc=mean, scale=spread)
    return mean, float(low), float(high)


def _calibration_inputs(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Validated float confidences in [0, 1] and 0/1 outcomes of equal length."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct differ in length: {confidence.size} vs {correct.size}")
    if not np.all((confidence >= 0.0) & (confidence <= 1.0)):
        raise ValueError("confidence must lie in [0, 1] (a predicted probability of being correct)")
    return confidence, correct


def _calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin on [0, 1]: count, mean confidence, accuracy (NaN where empty).

    binned_statistic closes the last bin on the right, so a confidence of exactly 1.0 lands in it.
    """
    means, _, numbers = binned_statistic(confidence, [confidence, correct.astype(np.float64)], statistic="mean",
                                         bins=bins, range=(0.0, 1.0))
    counts = np.bincount(numbers - 1, minlength=bins)
    return counts, means[0], means[1]


def reliability_curve(confidence, correct, bins: int = 15):
    """Non-empty calibration bins as a table (bin_low, bin_high, count, mean_confidence, accuracy)."""
    confidence, correct = _calibration_inputs(confidence, correct)
    columns = ["bin_low", "bin_high", "count", "mean_confidence", "accuracy"]
    if confidence.size == 0:
        return pd.DataFrame(columns=columns)
    counts, mean_confidence, accuracy = _calibration_bins(confidence, correct, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    kept = counts > 0
    return pd.DataFrame({"bin_low": edges[:-1][kept], "bin_high": edges[1:][kept], "count": counts[kept],
                         "mean_confidence": mean_confidence[kept], "accuracy": accuracy[kept]}, columns=columns)


def expected_calibration_error(confidence, correct, bins: int = 15) -> float:
    """ECE: count-weighted gap between accuracy and mean confidence over equal-width bins; NaN when empty."""
    confidence, correct = _calibration_inputs(confidence, correct)
    if confidence.size == 0:
        return float("nan")
    counts, mean_confidence, accuracy = _calibration_bins(confidence, correct, bins)
    kept = counts > 0
    return float(np.sum(counts[kept] / confidence.size * np.abs(accuracy[kept] - mean_confidence[kept])))


def brier_score(confidence, correct) -> float:
    """Mean squared gap between P(correct) and the 0/1 outcome; NaN when empty.

    pos_label=1 keeps scikit-learn from refusing an all-correct (single-class) version.
    """
    confidence, correct = _calibration_inputs(confidence, correct)
    if confidence.size == 0:
        return float("nan")
    return float(brier_score_loss(correct.astype(np.int64), confidence, pos_label=1))
