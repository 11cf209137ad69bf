"""The evaluation metrics of evaluation/metrics.py, against hand-computed values and reference
implementations (plain Python loops, scikit-learn)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.metrics import (
    accuracy,
    augrc,
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


def over_orderings(scores, correct, risk) -> float:
    """The mean over every ordering of tied inputs of the mean ``risk(errors, accepted, n)`` over coverages."""
    groups = [[i for i in range(len(scores)) if scores[i] == s] for s in sorted(set(scores), reverse=True)]
    values = []
    for arrangement in itertools.product(*(itertools.permutations(g) for g in groups)):
        errors, risks = 0, []
        for accepted, i in enumerate((i for group in arrangement for i in group), start=1):
            errors += not correct[i]
            risks.append(risk(errors, accepted, len(scores)))
        values.append(sum(risks) / len(risks))
    return sum(values) / len(values)


@pytest.mark.parametrize("seed", range(6))
def test_augrc_and_eaurc_average_the_orderings_of_ties(seed):
    rng = np.random.default_rng(seed)
    scores, correct = rng.integers(0, 3, 7).astype(float), rng.random(7) < 0.6
    generalized = over_orderings(list(scores), list(correct), lambda errors, accepted, n: errors / n)
    assert augrc(scores, correct) == pytest.approx(generalized)
    selective = over_orderings(list(scores), list(correct), lambda errors, accepted, n: errors / accepted)
    oracle = over_orderings(list(correct.astype(float)), list(correct), lambda errors, accepted, n: errors / accepted)
    assert eaurc(scores, correct) == pytest.approx(selective - oracle) and eaurc(scores, correct) >= -1e-12


def test_augrc_and_eaurc_closed_cases():
    correct = np.array([True, True, False])
    assert augrc(np.array([3.0, 2.0, 1.0]), correct) == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert augrc(np.array([1.0, 2.0, 3.0]), correct) == pytest.approx((1 / 3 + 1 / 3 + 1 / 3) / 3)
    assert augrc(np.zeros(3), correct) == pytest.approx((1 / 9 + 2 / 9 + 3 / 9) / 3)  # one tie: 1/3 wrong each
    assert eaurc(np.array([3.0, 2.0, 1.0]), correct) == pytest.approx(0.0)  # the oracle's own order
    assert eaurc(np.array([1.0, 2.0, 3.0]), correct) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3 - 1 / 9)
    assert augrc(np.array([]), np.array([], dtype=bool)) is None and eaurc(np.array([]), np.array([], bool)) is None
