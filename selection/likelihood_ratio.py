"""Likelihood ratios of a version's penultimate features (Heng & Soh, ICLR 2026, "Know When to Abstain: Optimal
Selective Classification with Likelihood Ratios"; their code: github.com/clear-nus/sc-likelihood-ratios), and
DeepFailGuard's selection with such a ratio in place of its distance KDEs.

By the Neyman–Pearson lemma the best test of "the version is right on x", at every coverage, is a monotone function
of p(x | right) / p(x | wrong). These scores estimate that ratio on the features the ``feature`` distance mode keeps
(``features``: the input of the network's last layer with parameters, ``distances/feature.py``), from two groups:
the fitting inputs the version answers right, and those it answers wrong. As the authors' code defines them:

- ``delta_mds`` (Δ-MDS): max_c −(z − μ_c)ᵀ Σ⁻¹ (z − μ_c) under the right group's class means μ_c and covariance Σ,
  minus the same under the wrong group's. A group's class means are by the inputs' *true* class (in the wrong
  group too); the max runs over the classes the group has inputs of (the reference turns the others' NaN into
  −∞); Σ is the covariance of the group's features centred on their class means, shared by its classes.
- ``delta_knn`` (Δ-KNN): on L2-normalised features, the mean of −log(d² + 10⁻⁶) over the squared Euclidean
  distances d² to the k nearest right inputs, minus the same over the wrong inputs; k = 25, capped at the group's
  size.
- ``delta_mds_rlog``, ``delta_knn_rlog``: the score plus λ times the gap between the two largest logits (RLog),
  λ = 3 (the reference's ``--lam`` default; its README's example mixes Δ-MDS with λ = 10⁴).
- ``dfg_features``: DeepFailGuard's P(correct) with these densities, a·L_c(z) / (a·L_c(z) + (1 − a)·L_w(z)), a the
  version's validation accuracy as DeepFailGuard takes it and L_g the group's class-conditional Gaussians as a
  density, Σ_c π_c N(z; μ_c, Σ), π_c the class's share of the group. Δ-MDS is not that log-ratio: it is twice the
  log-ratio of the two groups' best-class densities plus log det Σ_right − log det Σ_wrong, a constant per version
  that leaves the ranking of one version's inputs alone but not how versions compare, and it has no prior. The
  posterior is therefore computed from proper Gaussian log-densities, log-determinants included, and given as its
  log-odds (``FeaturePCorrect`` says why: in float64 it saturates at 1).

**Fitted on the validation split, not the training split.** The reference fits on the training split; a DIGITS
version answers almost every training input right (the wrong group would be empty or a handful), and features of
the inputs a network was trained on are not distributed as those of new inputs. The project's failure models fit
on validation (DeepFailGuard's KDEs, REL-U, DFG+), and so do these: on all of it for the test inputs' scores;
where the validation inputs' own scores are needed (cascade thresholds, abstention), each input's comes from a fit
on the other folds (``Score.validation_scores``, cross-fitted), never from one that saw it.

**Shrinkage.** A group's covariance is Ledoit–Wolf's (scikit-learn): the empirical covariance shrunk towards a
multiple of the identity, by the intensity that minimises the expected squared error, estimated from the data.
The features have hundreds to thousands of dimensions and the wrong group tens of inputs: the empirical covariance
(the reference's) is singular there, and its pseudo-inverse measures distances only within the span of those few
inputs. Ledoit–Wolf's is invertible, needs no tuning, and tends to the empirical one as a group grows.
``covariance="empirical"`` gives the reference's (Δ-MDS only: a singular covariance has no density).

**Small groups.** Without a wrong (or without a right) validation input there is no ratio: the scores are
undefined for the version (``Score.undefined``). ``failure_prediction.csv`` leaves them empty, as it does the scores
of a failure model fitted so (the fit step warns of that split), and the methods selecting by them skip the sets
the version is in, with a note; a cross-fitted fold without one gives NaN. A group whose inputs, centred on their
class means, have fewer than ``min_dof`` degrees of freedom (inputs minus the classes they fall in: every wrong
input alone in its class, say) or no spread at all has no covariance of its own and borrows the other group's;
where neither has one, Δ-MDS and ``dfg_features`` are undefined. Δ-KNN needs one input per group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.linalg import LinAlgError
from scipy.linalg import cholesky, solve_triangular
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from selection.base import SCORES, Score, register_score

#: the covariance estimators a group may be fitted with (scikit-learn's), by the name the scores record
ESTIMATORS = {"ledoit_wolf": LedoitWolf, "empirical": EmpiricalCovariance}
#: the split the groups are fitted on (the module's docstring says why)
VALIDATION = "validation"


def features_of(answers) -> np.ndarray:
    """The penultimate features of ``answers``' inputs (the ``feature`` mode's ``features``), one row each."""
    return np.asarray(answers.outputs["features"], dtype=np.float64)


def top_two_logit_gap(logits) -> np.ndarray:
    """RLog: the largest logit minus the second largest."""
    top_two = np.sort(np.asarray(logits, dtype=np.float64), axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def missing_group(validation) -> str | None:
    """Why a version's validation inputs give no ratio (no right, or no wrong, one); None: both groups exist."""
    right = int(validation.correct.sum())
    wrong = len(validation.correct) - right
    if right and wrong:
        return None
    return (f"its validation inputs are {right} right and {wrong} wrong: no likelihood ratio without both "
            "(more validation inputs: --max-inputs)")


def check_parameters(score, estimators=tuple(ESTIMATORS)) -> None:
    """Refuse a fitting split or covariance estimator these scores do not have."""
    if score.split != VALIDATION:
        raise ValueError(f"{type(score).__name__}: split must be {VALIDATION!r} (only the validation features are "
                         f"kept, and a version is right on almost every training input), not {score.split!r}")
    if getattr(score, "covariance", estimators[0]) not in estimators:
        raise ValueError(f"{type(score).__name__}: covariance must be one of {', '.join(estimators)}, not "
                         f"{score.covariance!r}")


@dataclass(frozen=True)
class ClassGaussians:
    """One group's class-conditional Gaussians with a shared covariance: the means of the classes it has inputs of,
    their shares of the group, and the covariance (a fitted scikit-learn estimator, centred at 0).

    Distances are measured after whitening by the covariance's Cholesky factor L (Σ = LLᵀ), where they are
    Euclidean; a singular covariance (the empirical estimate of a small group) has none, and is measured with its
    pseudo-inverse, as the reference does. Measured reason for not letting scikit-learn invert Σ and measure with
    its ``mahalanobis`` (SciPy's ``cdist``, one input at a time): on one thread, fitting a group of 280 inputs in
    4,096 dimensions and inverting its covariance takes 14.1 s (an eigendecomposition), its Cholesky factor 0.6 s;
    measuring 360 inputs against 10 class means in 2,048 dimensions takes 10.8 s with ``mahalanobis``, 0.07 s
    as matrix products. The tests check both paths against scikit-learn's and SciPy's to 1e-10."""

    means: np.ndarray
    shares: np.ndarray
    covariance: EmpiricalCovariance

    @cached_property
    def cholesky(self) -> np.ndarray | None:
        """The lower Cholesky factor of Σ; None where Σ is not positive definite."""
        try:
            return cholesky(self.covariance.covariance_, lower=True)
        except LinAlgError:
            return None

    def whiten(self, points: np.ndarray) -> np.ndarray:
        """L⁻¹(x) of every row x."""
        return solve_triangular(self.cholesky, points.T, lower=True).T

    @cached_property
    def whitened_means(self) -> np.ndarray:
        return self.whiten(self.means)

    @cached_property
    def pseudo_precision(self) -> np.ndarray:
        """The pseudo-inverse of a singular Σ (scikit-learn's), computed once."""
        return self.covariance.get_precision()

    def squared_distances(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of every input (row) to every class mean (column)."""
        if self.cholesky is None:
            points, means = features, self.means
            projected, means_projected = points @ self.pseudo_precision, means @ self.pseudo_precision
        else:
            points, means = self.whiten(features), self.whitened_means
            projected, means_projected = points, means
        squared = (np.einsum("ij,ij->i", projected, points)[:, None] - 2.0 * projected @ means.T
                   + np.einsum("ij,ij->i", means_projected, means)[None, :])
        return np.maximum(squared, 0.0)

    def log_density(self, features: np.ndarray) -> np.ndarray:
        """log Σ_c π_c N(z; μ_c, Σ) of every input, N's logarithm −(d_c² + k·log 2π + log det Σ)/2."""
        if self.cholesky is None:
            raise ValueError("a group's covariance is singular: it has no density")
        log_det = 2.0 * float(np.log(np.diag(self.cholesky)).sum())
        log_normal = -0.5 * (self.squared_distances(features) + self.means.shape[1] * np.log(2.0 * np.pi) + log_det)
        return logsumexp(np.log(self.shares)[None, :] + log_normal, axis=1)


def group_parts(features: np.ndarray, truth: np.ndarray):
    """A group's class means, their shares of it, its features centred on their class means, and the degrees of
    freedom left about those means (inputs minus classes)."""
    classes, index, counts = np.unique(truth, return_inverse=True, return_counts=True)
    means = np.stack([features[index == i].mean(axis=0) for i in range(len(classes))])
    return means, counts / len(truth), features - means[index], len(truth) - len(classes)


def fit_groups(validation, covariance: str, min_dof: int) -> tuple[ClassGaussians, ClassGaussians] | None:
    """The right and the wrong group's class-conditional Gaussians, fitted on the validation inputs; a group without
    enough spread of its own (``min_dof``) takes the other's covariance. None where a group is empty, or neither
    has a covariance."""
    if missing_group(validation):
        return None
    features, correct = features_of(validation), validation.correct
    parts = [group_parts(features[group], validation.truth[group]) for group in (correct, ~correct)]
    estimates = [ESTIMATORS[covariance](assume_centered=True, store_precision=False).fit(centred)
                 if dof >= min_dof and centred.any() else None for _, _, centred, dof in parts]
    if estimates[0] is None and estimates[1] is None:
        return None
    estimates = [estimate if estimate is not None else other for estimate, other in zip(estimates, estimates[::-1])]
    return tuple(ClassGaussians(means, shares, estimate) for (means, shares, _, _), estimate in zip(parts, estimates))


def gaussians_of(score, version):
    """:func:`fit_groups` of a version's validation outputs with a score's parameters, fitted once per version for
    every score that reads them (Δ-MDS, its RLog mix, ``dfg_features``)."""
    return version.learn(f"class-conditional Gaussians {score.covariance} {score.min_dof}",
                         lambda fitted: fit_groups(fitted.validation, score.covariance, score.min_dof))


def undefined_groups(score, version) -> str | None:
    """Why the class-conditional Gaussians of a version cannot be fitted, naming it; None: they can."""
    if version.validation is None:
        return None  # the evaluation says what is missing
    reason = missing_group(version.validation)
    if reason is None and gaussians_of(score, version) is None:
        reason = (f"neither its right nor its wrong validation inputs have {score.min_dof} degree(s) of freedom about "
                  "their class means: no covariance to estimate (more validation inputs: --max-inputs)")
    return reason and f"{version.model} bug {version.bug}: {reason}"


def undefined_scores(answers) -> np.ndarray:
    """NaN for every input: what a fit without both groups (a cross-fitted fold, say) scores."""
    return np.full(len(answers.labels), np.nan)


class GroupGaussianScore(Score):
    """A score read from the right and wrong groups' class-conditional Gaussians (:func:`gaussians_of`): subclasses
    say what they make of them in :meth:`from_groups`; without the groups the score is undefined (NaN)."""

    def fit(self, version):
        return gaussians_of(self, version)

    def compute(self, groups, answers, version):
        if groups is None:
            return undefined_scores(answers)
        return self.from_groups(*groups, features_of(answers), version)

    def from_groups(self, right: ClassGaussians, wrong: ClassGaussians, features: np.ndarray, version) -> np.ndarray:
        raise NotImplementedError

    def undefined(self, version):
        return undefined_groups(self, version)


@register_score
class DeltaMahalanobis(GroupGaussianScore):
    """Δ-MDS: the best class's Mahalanobis score under the right group's Gaussians minus the same under the wrong
    group's (module docstring)."""

    name = "delta_mds"
    needs = ("features", "validation")
    #: how each group's covariance is estimated (:data:`ESTIMATORS`; the module's docstring says why Ledoit–Wolf)
    covariance: str = "ledoit_wolf"
    #: a group whose class-centred inputs have fewer degrees of freedom borrows the other group's covariance
    min_dof: int = 1
    #: the split the groups are fitted on
    split: str = VALIDATION

    def __post_init__(self):
        check_parameters(self)

    def from_groups(self, right, wrong, features, version):
        return wrong.squared_distances(features).min(axis=1) - right.squared_distances(features).min(axis=1)


@register_score
class DeltaNearestNeighbours(Score):
    """Δ-KNN: the k nearest right inputs' mean −log squared distance minus the k nearest wrong inputs' (module
    docstring), on L2-normalised features."""

    name = "delta_knn"
    needs = ("features", "validation")
    #: neighbours per group (the reference's default), capped at the group's size
    k: int = 25
    #: added to each squared distance before its logarithm (the reference's)
    floor: float = 1e-6
    #: the split the groups are fitted on
    split: str = VALIDATION

    def __post_init__(self):
        check_parameters(self)

    def fit(self, version):
        if missing_group(version.validation):
            return None
        features, correct = normalize(features_of(version.validation)), version.validation.correct
        return tuple(NearestNeighbors(n_neighbors=min(self.k, int(group.sum()))).fit(features[group])
                     for group in (correct, ~correct))

    def compute(self, neighbours, answers, version):
        if neighbours is None:
            return undefined_scores(answers)
        features = normalize(features_of(answers))
        right, wrong = (self.mean_log_inverse(group, features) for group in neighbours)
        return right - wrong

    def mean_log_inverse(self, group: NearestNeighbors, features: np.ndarray) -> np.ndarray:
        """The mean of −log(d² + floor) over each input's nearest members of ``group``."""
        distances, _ = group.kneighbors(features)
        return -np.log(distances ** 2 + self.floor).mean(axis=1)

    def undefined(self, version):
        reason = None if version.validation is None else missing_group(version.validation)
        return reason and f"{version.model} bug {version.bug}: {reason}"


class RLogMix(Score):
    """A registered score plus λ times the gap between the version's two largest logits (the authors' "-RLog")."""

    name = "delta_mds_rlog"
    #: the registered score mixed with the logit gap
    base: str = "delta_mds"
    #: λ
    weight: float = 3.0

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*SCORES[self.base].needs, "logits")))

    def fit(self, version):
        return SCORES[self.base].fit(version)

    def compute(self, state, answers, version):
        return SCORES[self.base].compute(state, answers, version) + self.weight * top_two_logit_gap(answers.logits)

    def undefined(self, version):
        return SCORES[self.base].undefined(version)


register_score(RLogMix, name="delta_mds_rlog")
register_score(RLogMix, name="delta_knn_rlog", base="delta_knn")


@register_score
class FeaturePCorrect(GroupGaussianScore):
    """DeepFailGuard's P(correct) with the right and wrong groups' class-conditional Gaussian densities of the
    features in place of the distance KDEs, the version's validation accuracy as prior (module docstring), given as
    its log-odds, log(a·L_c(z)) − log((1 − a)·L_w(z)): the posterior is expit of it, and the member with the
    highest log-odds is the one with the highest posterior.

    Why not the posterior itself: the log-ratio of two Gaussian densities in hundreds to thousands of dimensions
    runs to hundreds of nats, and a float64 posterior is exactly 1.0 past 37. Measured on DIGITS (``feature``
    distance, 300 test inputs): AlexNet's posterior was 1.0 on every input and SqueezeNet's on 98 %, so its failure
    prediction was a coin (AUROC 0.500) and selection fell to the tie rule, where the log-odds keep the order. A
    probability this saturated says nothing about calibration either: the score is not read as one."""

    name = "dfg_features"
    needs = ("features", "validation")
    family = "DeepFailGuard and its ablations"
    #: how each group's covariance is estimated: a density needs an invertible one, Ledoit–Wolf's
    covariance: str = "ledoit_wolf"
    #: a group whose class-centred inputs have fewer degrees of freedom borrows the other group's covariance
    min_dof: int = 1
    #: the split the groups are fitted on
    split: str = VALIDATION

    def __post_init__(self):
        check_parameters(self, ("ledoit_wolf",))

    def from_groups(self, right, wrong, features, version):
        accuracy = version.val_acc
        with np.errstate(divide="ignore"):
            return (np.log(accuracy) + right.log_density(features)) - (np.log1p(-accuracy)
                                                                         + wrong.log_density(features))
