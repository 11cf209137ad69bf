"""GEN and the likelihood-ratio family (``selection/confidence.py``, ``selection/likelihood_ratio.py``) against
closed cases computed here by hand: 2-D features of three classes whose groups' class-centred covariances are
exactly 0.5·I (right answers) and 2·I (wrong ones), so that every Mahalanobis distance, Gaussian density and
nearest-neighbour distance is a line of arithmetic."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import multivariate_normal
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

import evaluation
from DeepFailGuard import DeepFailGuardModule, posterior
from failure_model.kde import GaussianKDE
from selection import METHODS, SCORES, SetContext, likelihood_ratio
from storage import caches

CLASSES = 3
#: the right answers: class 0 at (0, 0) and class 1 at (10, 10), each ±1 along each axis (covariance 0.5·I)
RIGHT = [((-1, 0), 0), ((1, 0), 0), ((0, -1), 0), ((0, 1), 0), ((9, 10), 1), ((11, 10), 1), ((10, 9), 1), ((10, 11), 1)]
RIGHT_MEANS, RIGHT_VARIANCE = [(0, 0), (10, 10)], 0.5
#: the wrong answers, by true class: 0 at (4, 5) and 1 at (7, 0), each ±2 (covariance 2·I); predicted as another
#: class, not one per true class (grouping them by the predicted class would give other means)
WRONG = [((2, 5), 0, 1), ((6, 5), 0, 2), ((4, 3), 0, 1), ((4, 7), 0, 2),
         ((5, 0), 1, 0), ((9, 0), 1, 0), ((7, -2), 1, 2), ((7, 2), 1, 2)]
WRONG_MEANS, WRONG_VARIANCE = [(4, 5), (7, 0)], 2.0
TEST_POINTS = [(1, 1), (4, 3), (6, 2), (10, 9), (3, 3)]
TEST_TRUTH = np.array([0, 0, 1, 1, 2])
VAL_ACC = 0.6


def logits_for(labels, seed: int) -> np.ndarray:
    """Logits peaked on each label, drawn so that every row's top two differ."""
    logits = np.random.default_rng(seed).normal(0.0, 1.0, (len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] += 3.0
    return logits


def answers(points, labels, truth=None, seed: int = 0) -> caches.CachedAnswers:
    labels = np.asarray(labels)
    logits = logits_for(labels, seed)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return caches.CachedAnswers(labels, np.linspace(0.1, 1.0, len(labels)), probabilities, logits,
                                None if truth is None else np.asarray(truth),
                                {"features": np.asarray(points, dtype=np.float64)})


def validation_answers(right=RIGHT, wrong=WRONG) -> caches.CachedAnswers:
    points = [p for p, _ in right] + [p for p, _, _ in wrong]
    truth = [t for _, t in right] + [t for _, t, _ in wrong]
    labels = [t for _, t in right] + [label for _, _, label in wrong]
    return answers(points, labels, truth, seed=1)


def record(tmp_path, model: str, validation, test, val_acc: float = VAL_ACC) -> evaluation.VersionRecord:
    correct = validation.correct
    paths = tmp_path / f"{model}_correct.npz", tmp_path / f"{model}_wrong.npz"
    GaussianKDE.fit(validation.distances[correct]).save(paths[0])
    GaussianKDE.fit(validation.distances[~correct]).save(paths[1])
    module = DeepFailGuardModule(None, *paths, val_acc, name=model)
    return evaluation.VersionRecord("TOY", model, 0, test.labels, test.distances, module, "", test.probabilities,
                                    test.logits, validation, outputs=test.outputs)


@pytest.fixture
def toy(tmp_path) -> evaluation.VersionRecord:
    return record(tmp_path, "resnet", validation_answers(), answers(TEST_POINTS, [0, 1, 1, 1, 0]))


def squared(z, mean) -> float:
    return sum((a - b) ** 2 for a, b in zip(z, mean))


def gaussian_mixture(z, means, variance) -> float:
    """Σ_c ½·N(z; μ_c, variance·I) in 2-D: each class half of its group."""
    return sum(0.5 * math.exp(-squared(z, mean) / (2 * variance)) / (2 * math.pi * variance) for mean in means)


# ---------------------------------------------------------------------------------------------
# GEN
# ---------------------------------------------------------------------------------------------

def test_gen_is_the_negated_generalized_entropy_of_the_largest_probabilities():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])
    toy = answers([(0, 0)] * 3, [0, 2, 0])
    toy.probabilities = probabilities
    gen = SCORES["gen"]
    assert (gen.gamma, gen.M) == (0.1, 100)  # the authors' defaults; M above the 3 classes: all of them
    expected = [-sum(p ** 0.1 * (1 - p) ** 0.1 for p in row) for row in probabilities]
    np.testing.assert_allclose(gen.compute(None, toy, None), expected, rtol=1e-12)
    assert expected[2] == 0.0 and expected[0] < expected[1]  # the certain answer is the most confident
    top_two = dataclasses.replace(gen, gamma=0.5, M=2)
    np.testing.assert_allclose(top_two.compute(None, toy, None),
                               [-(0.7 ** 0.5 * 0.3 ** 0.5 + 0.2 ** 0.5 * 0.8 ** 0.5),
                                -(0.8 ** 0.5 * 0.2 ** 0.5 + 0.1 ** 0.5 * 0.9 ** 0.5), 0.0], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# the closed case
# ---------------------------------------------------------------------------------------------

def test_the_groups_are_fitted_by_true_class_with_their_own_shrunk_covariances(toy):
    right, wrong = toy.learn("score delta_mds", SCORES["delta_mds"].fit)
    np.testing.assert_allclose(right.means, RIGHT_MEANS)
    np.testing.assert_allclose(wrong.means, WRONG_MEANS)  # by true class, not by the predicted one
    np.testing.assert_allclose(right.covariance.covariance_, RIGHT_VARIANCE * np.eye(2), atol=1e-12)
    np.testing.assert_allclose(wrong.covariance.covariance_, WRONG_VARIANCE * np.eye(2), atol=1e-12)
    assert type(right.covariance).__name__ == "LedoitWolf"


def test_delta_mds_by_hand(toy):
    for i, z in enumerate(TEST_POINTS):
        best_right = min(squared(z, mean) / RIGHT_VARIANCE for mean in RIGHT_MEANS)
        best_wrong = min(squared(z, mean) / WRONG_VARIANCE for mean in WRONG_MEANS)
        assert toy.score("delta_mds")[i] == pytest.approx(-best_right - (-best_wrong), rel=1e-9)
        # twice the log-ratio of the best classes' densities, plus log det Σ_right − log det Σ_wrong
        log_ratio = -best_right / 2 - math.log(2 * math.pi * RIGHT_VARIANCE) \
            - (-best_wrong / 2 - math.log(2 * math.pi * WRONG_VARIANCE))
        assert toy.score("delta_mds")[i] == pytest.approx(
            2 * log_ratio + 2 * math.log(RIGHT_VARIANCE) - 2 * math.log(WRONG_VARIANCE), rel=1e-9)


def mean_log_inverse(z, points, k, floor=1e-6) -> float:
    """The mean of −log(d² + floor) over the k smallest squared distances of L2-normalised z to the points."""
    def unit(v):
        norm = math.hypot(*v)
        return [x / norm for x in v]

    distances = sorted(squared(unit(z), unit(p)) for p in points)[:k]
    return sum(-math.log(d + floor) for d in distances) / len(distances)


def test_delta_knn_by_hand(toy):
    right, wrong = [p for p, _ in RIGHT], [p for p, _, _ in WRONG]
    assert SCORES["delta_knn"].k == 25  # more than either group has: capped at its size
    nearest_two = dataclasses.replace(SCORES["delta_knn"], k=2)
    two = nearest_two.compute(nearest_two.fit(toy), toy.test, toy)
    for i, z in enumerate(TEST_POINTS):
        assert toy.score("delta_knn")[i] == pytest.approx(
            mean_log_inverse(z, right, 8) - mean_log_inverse(z, wrong, 8), rel=1e-9)
        assert two[i] == pytest.approx(mean_log_inverse(z, right, 2) - mean_log_inverse(z, wrong, 2), rel=1e-9)


def test_the_rlog_mixes_add_three_times_the_top_two_logit_gap(toy):
    top_two = np.sort(toy.logits, axis=1)[:, -2:]
    gap = top_two[:, 1] - top_two[:, 0]
    for base in ("delta_mds", "delta_knn"):
        assert SCORES[f"{base}_rlog"].weight == 3.0 and SCORES[f"{base}_rlog"].base == base
        np.testing.assert_allclose(toy.score(f"{base}_rlog"), toy.score(base) + 3.0 * gap, rtol=1e-12)


def test_dfg_features_is_the_log_odds_of_the_posterior_of_the_two_gaussian_densities_with_the_accuracy_prior(toy):
    assert not SCORES["dfg_features"].probability and toy.val_acc == VAL_ACC
    for i, z in enumerate(TEST_POINTS):
        right = gaussian_mixture(z, RIGHT_MEANS, RIGHT_VARIANCE)
        wrong = gaussian_mixture(z, WRONG_MEANS, WRONG_VARIANCE)
        assert toy.score("dfg_features")[i] == pytest.approx(
            math.log(VAL_ACC * right) - math.log((1 - VAL_ACC) * wrong), rel=1e-9)
        posterior = VAL_ACC * right / (VAL_ACC * right + (1 - VAL_ACC) * wrong)  # DeepFailGuard's P(correct)
        assert expit(toy.score("dfg_features")[i]) == pytest.approx(posterior, rel=1e-9)
    assert METHODS["dfg_features"].score == "dfg_features"  # selected by, as DeepFailGuard by its P(correct)


def test_dfg_features_keeps_the_order_where_the_posterior_is_1_in_floating_point():
    """One dimension, unit variances, the right group's mean at 0 and the wrong group's at 20: the log-odds at z
    are log(a / (1 − a)) + 200 − 20z, 220 and 240 nats at z = −1 and −2, where both posteriors are 1.0."""
    unit = EmpiricalCovariance(assume_centered=True).fit(np.array([[1.0], [-1.0]]))
    right = likelihood_ratio.ClassGaussians(np.array([[0.0]]), np.array([1.0]), unit)
    wrong = likelihood_ratio.ClassGaussians(np.array([[20.0]]), np.array([1.0]), unit)
    scores = SCORES["dfg_features"].from_groups(right, wrong, np.array([[-1.0], [-2.0]]), SimpleNamespace(val_acc=0.9))
    np.testing.assert_allclose(scores, math.log(9) + np.array([220.0, 240.0]), rtol=1e-12)
    assert (posterior(right.log_density(np.array([[-1.0], [-2.0]])), wrong.log_density(np.array([[-1.0], [-2.0]])),
                      0.9) == 1.0).all()


def test_a_method_selects_by_each_score_and_they_are_cross_fitted_on_validation(toy, tmp_path):
    other = record(tmp_path, "alexnet", toy.validation, answers(TEST_POINTS[::-1], [0, 0, 1, 2, 2]), 0.7)
    members = [toy, other]
    predictions = evaluation.predict_set(members, SetContext(CLASSES))
    for name in ("gen", "delta_mds", "delta_knn", "delta_mds_rlog", "delta_knn_rlog", "dfg_features"):
        scores = np.stack([member.score(name) for member in members])
        np.testing.assert_array_equal(predictions[name], np.where(scores[1] > scores[0], other.labels, toy.labels))
        validation = SCORES[name].validation_scores(toy.learn(f"score {name}", SCORES[name].fit), toy)
        assert validation.shape == (16,) and np.isfinite(validation).sum() >= 8, name


# ---------------------------------------------------------------------------------------------
# small and empty groups
# ---------------------------------------------------------------------------------------------

def test_without_a_wrong_validation_input_the_scores_are_undefined_and_left_out(tmp_path, capsys):
    right_only = validation_answers(wrong=[])
    versions = {("resnet", 0): record(tmp_path, "resnet", right_only, answers(TEST_POINTS, [0, 1, 1, 1, 0])),
                ("alexnet", 0): record(tmp_path, "alexnet", right_only, answers(TEST_POINTS, [0, 0, 1, 1, 2]))}
    family = ("delta_mds", "delta_knn", "delta_mds_rlog", "delta_knn_rlog", "dfg_features")
    for name in family:
        assert "8 right and 0 wrong" in SCORES[name].undefined(versions["resnet", 0]), name
        fitted = SCORES[name].fit(versions["resnet", 0])
        assert np.isnan(SCORES[name].compute(fitted, versions["resnet", 0].test, versions["resnet", 0])).all()
    assert SCORES["gen"].undefined(versions["resnet", 0]) is None
    evaluated = evaluation.evaluate_datasets({"TOY": versions}, {"TOY": {"": TEST_TRUTH}}, ["resnet", "alexnet"],
                                             {"TOY": [0]})
    for row in evaluated.failure_rows:  # empty, as the scores of a failure model fitted without a wrong input
        assert all(row[f"{metric}_{name}"] is None for name in family for metric in ("auroc", "aurc"))
        assert "ece_dfg_features" not in row and row["aurc_gen"] is not None  # not a probability
    ran = {row["method"] for row in evaluated.rows}
    assert not ran & set(family) and {"gen", "dfg"} <= ran
    assert not {row["score"] for row in evaluated.selective_rows} & set(family)
    notes = [line for line in capsys.readouterr().err.splitlines() if "cannot run" in line]
    assert len(notes) == 1 and all(f"{name} (" in notes[0] for name in family) and "0 wrong" in notes[0]


def test_a_wrong_group_without_spread_of_its_own_borrows_the_right_groups_covariance(tmp_path):
    lone = [((4, 5), 0, 1), ((7, 0), 1, 2)]  # one wrong input per class: 0 degrees of freedom
    version = record(tmp_path, "resnet", validation_answers(wrong=lone), answers(TEST_POINTS, [0, 1, 1, 1, 0]))
    right, wrong = version.learn("score delta_mds", SCORES["delta_mds"].fit)
    assert wrong.covariance is right.covariance
    for i, z in enumerate(TEST_POINTS):
        best = [min(squared(z, mean) / RIGHT_VARIANCE for mean in means) for means in (RIGHT_MEANS, WRONG_MEANS)]
        assert version.score("delta_mds")[i] == pytest.approx(best[1] - best[0], rel=1e-9)
    assert SCORES["delta_mds"].undefined(version) is None


def test_no_group_with_spread_leaves_the_gaussian_scores_undefined(tmp_path):
    alone = validation_answers(right=[((0, 0), 0), ((10, 10), 1)], wrong=[((4, 5), 0, 1)])
    version = record(tmp_path, "resnet", alone, answers(TEST_POINTS, [0, 1, 1, 1, 0]))
    for name in ("delta_mds", "delta_mds_rlog", "dfg_features"):
        assert "degree(s) of freedom" in SCORES[name].undefined(version), name
    assert SCORES["delta_knn"].undefined(version) is None  # one neighbour per group is enough
    assert np.isfinite(version.score("delta_knn")).all()


# ---------------------------------------------------------------------------------------------
# what is recorded
# ---------------------------------------------------------------------------------------------

def test_methods_json_records_k_lambda_the_split_and_the_shrinkage(toy, tmp_path):
    other = record(tmp_path, "alexnet", toy.validation, answers(TEST_POINTS[::-1], [0, 0, 1, 2, 2]), 0.7)
    evaluated = evaluation.evaluate_datasets({"TOY": {("resnet", 0): toy, ("alexnet", 0): other}},
                                             {"TOY": {"": TEST_TRUTH}}, ["resnet", "alexnet"], {"TOY": [0]})
    recorded = evaluation.provenance(evaluated)
    scores = recorded["scores"]
    assert scores["gen"]["parameters"] == {"gamma": 0.1, "M": 100}
    assert scores["delta_knn"]["parameters"] == {"k": 25, "floor": 1e-6, "split": "validation"}
    for name in ("delta_mds", "dfg_features"):
        assert scores[name]["parameters"] == {"covariance": "ledoit_wolf", "min_dof": 1, "split": "validation"}
        assert scores[name]["needs"] == ["features", "validation"]
    assert scores["delta_mds_rlog"]["parameters"] == {"base": "delta_mds", "weight": 3.0}
    assert scores["delta_knn_rlog"]["parameters"] == {"base": "delta_knn", "weight": 3.0}
    assert scores["delta_knn_rlog"]["needs"] == ["features", "validation", "logits"]
    assert {"delta_mds", "delta_knn_rlog", "dfg_features", "gen"} <= set(recorded["methods"])


@pytest.mark.parametrize("values", [{"split": "training"}, {"covariance": "oas"}])
def test_a_split_or_estimator_the_family_does_not_have_is_refused(values):
    with pytest.raises(ValueError, match=next(iter(values))):
        likelihood_ratio.DeltaMahalanobis(**values)
    with pytest.raises(ValueError, match="covariance must be one of ledoit_wolf,"):
        likelihood_ratio.FeaturePCorrect(covariance="empirical")  # singular in high dimension: no density


def test_the_gaussians_distances_and_densities_equal_scikit_learns_and_scipys_on_a_correlated_case():
    """The two-product Mahalanobis distances and the densities built on them (``ClassGaussians``) against
    scikit-learn's ``mahalanobis`` and SciPy's ``multivariate_normal`` with a full, correlated covariance."""
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(6, 6))
    estimate = LedoitWolf(assume_centered=True).fit(rng.normal(size=(40, 6)) @ mixing)
    means, shares = rng.normal(size=(3, 6)), np.array([0.5, 0.3, 0.2])
    gaussians, points = likelihood_ratio.ClassGaussians(means, shares, estimate), rng.normal(size=(7, 6)) @ mixing
    np.testing.assert_allclose(gaussians.squared_distances(points),
                               np.column_stack([estimate.mahalanobis(points - mean) for mean in means]), rtol=1e-10)
    densities = sum(share * multivariate_normal(mean, estimate.covariance_).pdf(points)
                    for share, mean in zip(shares, means))
    np.testing.assert_allclose(gaussians.log_density(points), np.log(densities), rtol=1e-10)
    # a singular (empirical, three inputs in six dimensions) covariance: its pseudo-inverse, as the reference
    singular = EmpiricalCovariance(assume_centered=True).fit(rng.normal(size=(3, 6)))
    gaussians = likelihood_ratio.ClassGaussians(means, shares, singular)
    assert gaussians.cholesky is None
    np.testing.assert_allclose(gaussians.squared_distances(points),
                               np.column_stack([singular.mahalanobis(points - mean) for mean in means]), rtol=1e-8)
    with pytest.raises(ValueError, match="no density"):
        gaussians.log_density(points)
