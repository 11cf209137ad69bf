"""Methods that combine the members' answers rather than score each one: the paper's baselines (majority
voting, the most accurate version on validation), soft voting, temperature-scaled soft voting and stacking."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.linear_model import LogisticRegression

from selection.base import PREFERRED_MEMBER, SMALLEST_CLASS, Method, majority_vote, register_method, stacked_labels
from utils import SEED, stratified_split


@register_method
class MostAccurate(Method):
    """The paper's "val acc only" ablation: the version with the highest validation accuracy always answers."""

    name = "val_acc_only"
    ties = PREFERRED_MEMBER
    family = "DeepFailGuard and its ablations"

    def predict(self, state, members, context):
        accuracies = np.array([[member.val_acc] for member in members], dtype=np.float64)
        return members[int(context.first_preferred_max(accuracies)[0])].labels


@register_method
class Voting(Method):
    """Majority voting, the paper's baseline."""

    name = "voting"
    ties = SMALLEST_CLASS

    def predict(self, state, members, context):
        return majority_vote(stacked_labels(members), context.num_classes)


@register_method
class SoftVoting(Method):
    """The class with the highest mean softmax probability over the members."""

    name = "soft_voting"
    needs = ("probabilities",)
    ties = SMALLEST_CLASS

    def predict(self, state, members, context):
        return np.mean([member.probabilities for member in members], axis=0).argmax(axis=1)


@register_method
class TemperatureSoftVoting(Method):
    """Soft voting after temperature scaling (Guo et al., 2017): each member's logits divided by the one
    temperature that minimises its validation negative log-likelihood, so that an over-confident member does
    not outvote a calibrated one. The temperature is searched as log T within ``log_temperature_range``."""

    name = "soft_voting_ts"
    needs = ("logits", "validation")
    ties = SMALLEST_CLASS
    log_temperature_range: tuple[float, float] = (-3.0, 3.0)  # T from 1/20 to 20

    def predict(self, state, members, context):
        return np.mean([member.fitted(f"{self.name} softmax", self.scaled_softmax) for member in members],
                       axis=0).argmax(axis=1)

    def scaled_softmax(self, version) -> np.ndarray:
        """The version's test softmax at its fitted temperature (once per version, shared by its sets)."""
        temperature = fit_temperature(version, self.log_temperature_range)
        return softmax(np.asarray(version.logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(version, log_range: tuple[float, float] = (-3.0, 3.0)) -> float:
    """The temperature minimising the validation negative log-likelihood of ``version`` (a bounded 1-D search
    over log T within ``log_range``: the likelihood is smooth and unimodal in it)."""
    logits = np.asarray(version.validation.logits, dtype=np.float64)
    truth = version.validation.truth
    rows = np.arange(len(truth))

    def negative_log_likelihood(log_temperature: float) -> float:
        return -float(log_softmax(logits / np.exp(log_temperature), axis=1)[rows, truth].mean())

    found = minimize_scalar(negative_log_likelihood, bounds=tuple(log_range), method="bounded")
    return float(np.exp(found.x))


@register_method
class Stacking(Method):
    """Stacking (Wolpert, 1992): a multinomial logistic regression (scikit-learn, inverse regularisation ``C``)
    learns, on validation, which class the members' concatenated softmax outputs point to, and answers the test
    inputs.

    One fit per version set, so its cost decides the evaluation's on a large grid. Measured on the synthetic
    validation outputs of benchmarks/bench_evaluation.py (10 classes, 10,000 inputs, 2-5 members, 2-core CPU):
    solver newton-cg converges in 3-5 iterations, 23-31 ms a fit against 150-160 ms for the default lbfgs at
    the same accuracy; a stratified sample of ``max_inputs`` = 3,000 validation inputs cuts it to 9-11 ms
    with test accuracy within 0.25 points of fitting on all 10,000 (0.9197 vs 0.9190, 0.9169 vs 0.9182,
    0.9882 vs 0.9881 for 2, 3, 5 members). Splits of up to ``max_inputs`` (DIGITS') are used whole.
    """

    name = "stacking"
    needs = ("probabilities", "validation")
    ties = "scikit-learn's: the first class of the largest predicted probability (the smallest index)"
    #: at most this many validation inputs (a stratified sample, the same for every set) train the stacker
    max_inputs: int = 3_000
    solver: str = "newton-cg"
    C: float = 1.0

    def cannot_run(self, members, context):
        classes = len(np.unique(members[0].validation.truth))
        return None if classes >= 2 else f"the validation split holds {classes} class(es); a classifier needs two"

    def fit(self, members, context):
        truth = members[0].validation.truth
        kept = stacking_sample(truth, self.max_inputs)
        features = np.concatenate([member.validation.probabilities[kept] for member in members], axis=1)
        return LogisticRegression(solver=self.solver, C=self.C).fit(features, truth[kept])

    def predict(self, model, members, context):
        return model.predict(np.concatenate([member.probabilities for member in members], axis=1))


@lru_cache(maxsize=8)
def _sample(truth_bytes: bytes, size: int, kept: int) -> np.ndarray:
    truth = np.frombuffer(truth_bytes, dtype=np.int64)
    _, sample = stratified_split(torch.from_numpy(truth.copy()), kept / size, SEED)
    return sample


def stacking_sample(truth: np.ndarray, max_inputs: int = 3_000) -> np.ndarray | slice:
    """The validation inputs the stacker learns from: all of them up to ``max_inputs``, else a stratified
    sample of that size (seeded, so the same for every set of the dataset)."""
    if len(truth) <= max_inputs:
        return slice(None)
    return _sample(np.asarray(truth, dtype=np.int64).tobytes(), len(truth), max_inputs)
