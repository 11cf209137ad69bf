"""The evaluation metrics of evaluation/metrics.py, against hand-computed values and reference
implementations (plain Python loops, scikit-learn)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.metrics import (
    accepted_errors,
    accuracy,
    augrc,
    aurc,
    auroc,
    eaurc,
    error_breakdown,
    improvements,
    lower_limit,
    upper_limit,
)
from selection.base import majority_vote

# A hand-checked example (3 versions × 8 inputs, classes 0-3), also used in test_evaluation.py:
#   input          0      1      2      3        4        5      6      7
#   truth          0      1      2      3        0        1      2      3
#   versions     0 0 1  1 2 1  2 2 2  0 3 1    1 2 3    1 0 0  3 3 0  3 1 3
#   vote           0      1      2    0 (tie)  1 (tie)    0      3      3
#   wrong votes    1      1      0      2        3        2      3      1
TRUTH = np.array([0, 1, 2, 3, 0, 1, 2, 3])
LABELS = np.array([[0, 1, 2, 0, 1, 1, 3, 3],
                   [0, 2, 2, 3, 2, 0, 3, 1],
                   [1, 1, 2, 1, 3, 0, 0, 3]])


def reference_vote(column) -> int:
    """Majority vote, ties to the smallest class, written the obvious way."""
    counts = Counter(int(label) for label in column)
    best = max(counts.values())
    return min(label for label, count in counts.items() if count == best)


# ---------------------------------------------------------------------------------------------
# majority vote
# ---------------------------------------------------------------------------------------------

def test_majority_vote_ties_go_to_the_smallest_class():
    # two versions that disagree: each input is a 1-1 tie
    np.testing.assert_array_equal(majority_vote(np.array([[1, 2], [2, 1]])), [1, 1])
    # three-way ties, whatever the order the labels come in
    np.testing.assert_array_equal(majority_vote(np.array([[2, 1, 0], [0, 2, 1], [1, 0, 2]])), [0, 0, 0])
    np.testing.assert_array_equal(majority_vote(np.array([[9], [4], [7]])), [4])
    # a 2-2 tie among four versions
    np.testing.assert_array_equal(majority_vote(np.array([[5], [3], [5], [3]])), [3])
    # a clear majority is not a tie, even when it is the larger class
    np.testing.assert_array_equal(majority_vote(np.array([[1, 7], [8, 7], [8, 2]])), [8, 7])


def test_majority_vote_on_the_hand_checked_example():
    np.testing.assert_array_equal(majority_vote(LABELS), [0, 1, 2, 0, 1, 0, 3, 3])
    np.testing.assert_array_equal(majority_vote(LABELS, num_classes=10), [0, 1, 2, 0, 1, 0, 3, 3])


@pytest.mark.parametrize("n_versions", [1, 2, 3, 4, 5, 7])
def test_majority_vote_matches_a_reference_for_any_number_of_versions(n_versions):
    rng = np.random.default_rng(n_versions)
    labels = rng.integers(0, 4, size=(n_versions, 300))  # few classes: many ties
    expected = [reference_vote(labels[:, i]) for i in range(labels.shape[1])]
    np.testing.assert_array_equal(majority_vote(labels), expected)
    np.testing.assert_array_equal(majority_vote(labels, num_classes=12), expected)
    if n_versions == 1:
        np.testing.assert_array_equal(majority_vote(labels), labels[0])


# ---------------------------------------------------------------------------------------------
# accuracy and limits
# ---------------------------------------------------------------------------------------------

def test_accuracy():
    assert accuracy(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 0])) == 0.5
    assert accuracy([1, 1, 1], [1, 1, 1]) == 1.0
    assert accuracy(np.array([2]), np.array([3])) == 0.0
    assert accuracy(LABELS[0], TRUTH) == 5 / 8
    assert accuracy(LABELS[1], TRUTH) == 3 / 8
    assert np.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_upper_and_lower_limit():
    # some version right on inputs 0, 1, 2, 3, 5, 7; all right only on input 2
    assert upper_limit(LABELS, TRUTH) == 6 / 8
    assert lower_limit(LABELS, TRUTH) == 1 / 8
    assert upper_limit(LABELS[:1], TRUTH) == lower_limit(LABELS[:1], TRUTH) == accuracy(LABELS[0], TRUTH)
    truth = np.array([1, 1, 1])
    labels = np.array([[1, 0, 0], [1, 1, 0]])
    assert upper_limit(labels, truth) == pytest.approx(2 / 3)
    assert lower_limit(labels, truth) == pytest.approx(1 / 3)
    rng = np.random.default_rng(3)
    labels, truth = rng.integers(0, 3, (4, 200)), rng.integers(0, 3, 200)
    right = [[labels[v, i] == truth[i] for v in range(4)] for i in range(200)]
    assert upper_limit(labels, truth) == pytest.approx(np.mean([any(r) for r in right]))
    assert lower_limit(labels, truth) == pytest.approx(np.mean([all(r) for r in right]))


# ---------------------------------------------------------------------------------------------
# improvements
# ---------------------------------------------------------------------------------------------

def test_improvements_absolute_and_relative():
    absolute, relative = improvements(0.625, 0.5, 0.75)
    assert absolute == pytest.approx(0.125)
    assert relative == pytest.approx(0.125 / 0.25)
    absolute, relative = improvements(0.8, 0.6, 0.9)
    assert absolute == pytest.approx(0.2) and relative == pytest.approx(0.2 / 0.3)
    # worse than voting: both negative
    absolute, relative = improvements(0.4, 0.6, 0.9)
    assert absolute == pytest.approx(-0.2) and relative == pytest.approx(-0.2 / 0.3)
    # reaching the upper limit: relative improvement 1
    assert improvements(0.9, 0.6, 0.9)[1] == pytest.approx(1.0)


def test_relative_improvement_is_none_without_headroom():
    absolute, relative = improvements(0.7, 0.7, 0.7)
    assert absolute == 0.0 and relative is None
    absolute, relative = improvements(0.5, 0.7, 0.7)
    assert absolute == pytest.approx(-0.2) and relative is None
    # accuracies computed from arrays (3/8 etc.) that are equal compare equal, so no 0/0 either
    assert improvements(accuracy(LABELS[1], TRUTH), 3 / 8, upper_limit(LABELS[1:2], TRUTH))[1] is None


# ---------------------------------------------------------------------------------------------
# error breakdown
# ---------------------------------------------------------------------------------------------

def test_error_breakdown_hand_computed():
    # wrong versions per input: 1 1 0 2 3 2 3 1 -> e0 = 1/8, e1 = 3/8, e2 = 2/8, e3 = 2/8
    voting = majority_vote(LABELS)  # right on inputs 0, 1, 2, 7
    rows = error_breakdown(LABELS, TRUTH, voting)
    assert len(rows) == 4  # k = 0..N
    assert [share for share, _ in rows] == pytest.approx([1 / 8, 3 / 8, 2 / 8, 2 / 8])
    assert [right for _, right in rows] == pytest.approx([1.0, 1.0, 0.0, 0.0])
    # a selector right on inputs 0, 1, 2, 3, 7: half of the e2 inputs (3 of 3, 5)
    rows = error_breakdown(LABELS, TRUTH, np.array([0, 1, 2, 3, 3, 0, 3, 3]))
    assert [right for _, right in rows] == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_error_breakdown_accuracy_is_none_where_no_input_has_k_errors():
    truth = np.array([0, 1, 2, 3])
    labels = np.array([[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 3]])  # 0 wrong on three inputs, 2 wrong on one
    rows = error_breakdown(labels, truth, np.array([0, 1, 0, 0]))
    assert [share for share, _ in rows] == [0.75, 0.0, 0.25, 0.0]
    assert rows[0][1] == pytest.approx(2 / 3)
    assert rows[1][1] is None and rows[3][1] is None
    assert rows[2][1] == 0.0


@pytest.mark.parametrize("n_versions", [2, 3, 5])
def test_error_breakdown_shares_sum_to_one_and_match_a_loop(n_versions):
    rng = np.random.default_rng(10 + n_versions)
    truth = rng.integers(0, 3, 150)
    labels = rng.integers(0, 3, (n_versions, 150))
    predictions = rng.integers(0, 3, 150)
    rows = error_breakdown(labels, truth, predictions)
    assert len(rows) == n_versions + 1
    assert sum(share for share, _ in rows) == pytest.approx(1.0)
    for k, (share, right) in enumerate(rows):
        inputs = [i for i in range(150) if sum(labels[v, i] != truth[i] for v in range(n_versions)) == k]
        assert share == pytest.approx(len(inputs) / 150)
        if inputs:
            assert right == pytest.approx(np.mean([predictions[i] == truth[i] for i in inputs]))
        else:
            assert right is None


# ---------------------------------------------------------------------------------------------
# AUROC
# ---------------------------------------------------------------------------------------------

def test_auroc_hand_computed():
    # positives 0.8, 0.6; negatives 0.7, 0.2: pairs (0.8>0.7, 0.8>0.2, 0.6<0.7, 0.6>0.2) -> 3/4
    assert auroc(np.array([0.8, 0.7, 0.6, 0.2]), np.array([1, 0, 1, 0])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1])) == pytest.approx(1.0)
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 0])) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_equals_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    positives = rng.random(200) < 0.7
    scores = np.round(rng.random(200) + 0.3 * positives, 1)  # rounding: many ties
    assert len(np.unique(scores)) < 20
    assert auroc(scores, positives) == pytest.approx(roc_auc_score(positives, scores), abs=1e-12)
    continuous = rng.normal(size=200) + positives
    assert auroc(continuous, positives) == pytest.approx(roc_auc_score(positives, continuous), abs=1e-12)


def test_auroc_is_none_for_a_single_class():
    assert auroc(np.array([0.1, 0.2, 0.3]), np.array([True, True, True])) is None
    assert auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0])) is None
    assert auroc(np.array([]), np.array([], dtype=bool)) is None


def reference_area(scores, correct, generalized: bool) -> float:
    """FD-Shifts' risk-coverage areas written the obvious way: a point per distinct score t (coverage: share of
    inputs scoring at least t; risk: their error rate, or the share of all inputs that are among them and wrong),
    an end point at coverage 0 (AURC: the most confident group's risk again; AUGRC: 0), trapezoids between."""
    n = len(scores)
    points = []
    for threshold in sorted(set(scores), reverse=True):
        accepted = [i for i in range(n) if scores[i] >= threshold]
        wrong = sum(not correct[i] for i in accepted)
        points.append((len(accepted) / n, wrong / n if generalized else wrong / len(accepted)))
    points.insert(0, (0.0, 0.0 if generalized else points[0][1]))
    return sum((c1 - c0) * (r0 + r1) / 2 for (c0, r0), (c1, r1) in zip(points, points[1:]))


def mean_over_coverages(scores, correct) -> tuple[float, float]:
    """The earlier definition (AURC, AUGRC): the mean risk over coverages 1/n .. n/n, from ``accepted_errors``."""
    errors = accepted_errors(scores, correct)
    return float((errors / np.arange(1, errors.size + 1)).mean()), float((errors / errors.size).mean())


@pytest.mark.parametrize("seed", range(6))
def test_risk_coverage_areas_equal_a_plain_loop_ties_included(seed):
    rng = np.random.default_rng(seed)
    for scores in (rng.integers(0, 3, 9).astype(float), rng.random(9)):  # many ties, then none
        correct = rng.random(9) < 0.6
        assert aurc(scores, correct) == pytest.approx(reference_area(list(scores), list(correct), False))
        assert augrc(scores, correct) == pytest.approx(reference_area(list(scores), list(correct), True))


@pytest.mark.parametrize("seed", range(6))
def test_without_ties_the_areas_are_the_mean_over_coverages_less_a_half_step(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores, correct = rng.permutation(n).astype(float), rng.random(n) < rng.uniform(0.2, 0.9)
    err, top_wrong = 1.0 - correct.mean(), float(not correct[np.argmax(scores)])
    old_aurc, old_augrc = mean_over_coverages(scores, correct)
    assert augrc(scores, correct) == pytest.approx(old_augrc - err / (2 * n))
    # AURC's end point repeats the most confident input's risk (0 or 1), which adds top_wrong / (2n)
    assert aurc(scores, correct) == pytest.approx(old_aurc - err / (2 * n) + top_wrong / (2 * n))


def test_the_measured_augrc_examples():
    """Two versions on 20 inputs of distinct scores, inputs listed from the most confident; right at the
    positions given. Earlier mean over coverages: Σ_k (wrong among the first k) / 20 / 20."""
    def version(right_positions):
        correct = np.zeros(20, dtype=bool)
        correct[np.array(right_positions) - 1] = True
        return np.arange(20, 0, -1.0), correct

    # err 0.8: a wrong input at position p counts in 21 − p of the prefixes: Σ = 210 − (20 + 19 + 18 + 14) = 139
    scores, correct = version([1, 2, 3, 7])
    assert mean_over_coverages(scores, correct)[1] == pytest.approx(139 / 400)  # 0.3475
    assert augrc(scores, correct) == pytest.approx(0.3475 - 0.8 / 40)  # 0.3275
    # err 0.55: Σ = 210 − (20 + 19 + 18 + 17 + 16 + 15 + 12 + 2 + 1) = 90
    scores, correct = version([1, 2, 3, 4, 5, 6, 9, 19, 20])
    assert mean_over_coverages(scores, correct)[1] == pytest.approx(0.2250)
    assert augrc(scores, correct) == pytest.approx(0.2250 - 0.55 / 40)  # 0.21125


# Inputs of the closed cases. Three inputs, the third wrong (err 1/3), ranked right, reversed, all tied; and five
# inputs in two tie groups: {0.9: right, wrong} and {0.5: right, right, wrong} (err 2/5).
RIGHT_FIRST, WRONG_FIRST, ALL_TIED = np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0]), np.zeros(3)
THREE = np.array([True, True, False])
GROUPS, FIVE = np.array([0.9, 0.9, 0.5, 0.5, 0.5]), np.array([True, False, True, True, False])


def test_aurc_closed_cases():
    # points (coverage, risk): (0, 0) (1/3, 0) (2/3, 0) (1, 1/3): one trapezoid 1/3 · (0 + 1/3) / 2
    assert aurc(RIGHT_FIRST, THREE) == pytest.approx(1 / 18)
    # (0, 1) (1/3, 1) (2/3, 1/2) (1, 1/3): 1/3 + 1/3 · (1 + 1/2) / 2 + 1/3 · (1/2 + 1/3) / 2 = (12 + 9 + 5) / 36
    assert aurc(WRONG_FIRST, THREE) == pytest.approx(13 / 18)
    # one threshold: (0, 1/3) (1, 1/3)
    assert aurc(ALL_TIED, THREE) == pytest.approx(1 / 3)
    # (0, 1/2) (2/5, 1/2) (1, 2/5): 2/5 · 1/2 + 3/5 · (1/2 + 2/5) / 2 = 0.20 + 0.27
    assert aurc(GROUPS, FIVE) == pytest.approx(0.47)
    assert aurc(np.array([]), np.array([], dtype=bool)) is None


def test_augrc_closed_cases():
    # (0, 0) (1/3, 0) (2/3, 0) (1, 1/3): 1/3 · (0 + 1/3) / 2
    assert augrc(RIGHT_FIRST, THREE) == pytest.approx(1 / 18)
    # (0, 0) (1/3, 1/3) (2/3, 1/3) (1, 1/3): 1/3 · 1/3 / 2 + 2/3 · 1/3 = 1/18 + 4/18
    assert augrc(WRONG_FIRST, THREE) == pytest.approx(5 / 18)
    # (0, 0) (1, 1/3)
    assert augrc(ALL_TIED, THREE) == pytest.approx(1 / 6)
    # (0, 0) (2/5, 1/5) (1, 2/5): 2/5 · 1/5 / 2 + 3/5 · (1/5 + 2/5) / 2 = 0.04 + 0.18
    assert augrc(GROUPS, FIVE) == pytest.approx(0.22)
    assert augrc(np.array([]), np.array([], dtype=bool)) is None


def test_eaurc_closed_cases():
    optimum_third = 1 / 3 + 2 / 3 * np.log(2 / 3)  # err + (1 − err) ln(1 − err) at err 1/3: 0.0630
    # a perfect ranking's trapezoids (1/18 = 0.0556) lie under the continuous optimum: slightly below 0
    assert eaurc(RIGHT_FIRST, THREE) == pytest.approx(1 / 18 - optimum_third) and eaurc(RIGHT_FIRST, THREE) < 0
    assert eaurc(WRONG_FIRST, THREE) == pytest.approx(13 / 18 - optimum_third)  # 0.6592
    assert eaurc(GROUPS, FIVE) == pytest.approx(0.47 - (0.4 + 0.6 * np.log(0.6)))  # 0.47 − 0.0935 = 0.3765
    # the edges: all right, err 0, optimum 0 + 1 · ln 1 = 0 and AURC 0; all wrong, err 1, (1 − err) ln(1 − err)
    # taken as its limit 0, optimum 1 and AURC 1 (every risk 1)
    assert eaurc(np.arange(4.0), np.ones(4, dtype=bool)) == 0.0
    assert eaurc(np.arange(4.0), np.zeros(4, dtype=bool)) == pytest.approx(0.0)
    assert eaurc(np.array([]), np.array([], dtype=bool)) is None
