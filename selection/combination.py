"""Methods that combine the members' answers rather than score each one: the paper's baselines (majority
voting, the most accurate version on validation), soft voting, temperature-scaled soft voting and stacking."""

from __future__ import annotations

import numpy as np

from metrics import majority_vote
from selection.base import Method, register_method


def _labels(members) -> np.ndarray:
    return np.stack([member.labels for member in members])


@register_method
class MostAccurate(Method):
    """The paper's "val acc only" ablation: the version with the highest validation accuracy always answers."""

    name = "val_acc_only"

    def predict(self, state, members, context):
        return members[int(np.argmax([member.val_acc for member in members]))].labels


@register_method
class Voting(Method):
    """Majority voting, the paper's baseline (ties to the smallest class)."""

    name = "voting"

    def predict(self, state, members, context):
        return majority_vote(_labels(members), context.num_classes)


@register_method
class SoftVoting(Method):
    """The class with the highest mean softmax probability over the members."""

    name = "soft_voting"
    needs = ("probabilities",)

    def predict(self, state, members, context):
        return np.mean([member.probabilities for member in members], axis=0).argmax(axis=1)


@register_method
class TemperatureSoftVoting(Method):
    """Soft voting after temperature scaling (Guo et al., 2017): each member's logits divided by the one
    temperature that minimises its validation negative log-likelihood, so that an over-confident member does
    not outvote a calibrated one."""

    name = "soft_voting_ts"
    needs = ("logits", "validation")

    def fit(self, members, context):
        return [member.fitted("temperature", fit_temperature) for member in members]

    def predict(self, temperatures, members, context):
        from scipy.special import softmax

        return np.mean([softmax(np.asarray(member.logits, dtype=np.float64) / temperature, axis=1)
                        for member, temperature in zip(members, temperatures)], axis=0).argmax(axis=1)


#: the temperatures searched, as log T (T from 1/20 to 20)
LOG_TEMPERATURE_RANGE = (-3.0, 3.0)


def fit_temperature(version) -> float:
    """The temperature minimising the validation negative log-likelihood of ``version`` (a bounded 1-D search
    over log T: the likelihood is smooth and unimodal in it)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(version.validation.logits, dtype=np.float64)
    truth = version.validation.truth
    rows = np.arange(len(truth))

    def negative_log_likelihood(log_temperature: float) -> float:
        return -float(log_softmax(logits / np.exp(log_temperature), axis=1)[rows, truth].mean())

    found = minimize_scalar(negative_log_likelihood, bounds=LOG_TEMPERATURE_RANGE, method="bounded")
    return float(np.exp(found.x))


@register_method
class Stacking(Method):
    """Stacking (Wolpert, 1992): a multinomial logistic regression (scikit-learn) learns, on validation, which
    class the members' concatenated softmax outputs point to, and answers the test inputs.

    Solver newton-cg: on 10,000 validation inputs × 2-5 members × 10 classes it converges in 3-5 iterations,
    4-5x faster than the default lbfgs at the same validation accuracy (benchmarks/bench_evaluation.py fits one
    per version set)."""

    name = "stacking"
    needs = ("probabilities", "validation")

    def fit(self, members, context):
        from sklearn.linear_model import LogisticRegression

        features = np.concatenate([member.validation.probabilities for member in members], axis=1)
        return LogisticRegression(solver="newton-cg").fit(features, members[0].validation.truth)

    def predict(self, model, members, context):
        return model.predict(np.concatenate([member.probabilities for member in members], axis=1))
