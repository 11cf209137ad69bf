"""Scores read from a version's softmax or logits alone: the field's failure predictors.

- ``max_softmax``: the top probability (Hendrycks & Gimpel's baseline).
- ``softmax_margin``: top probability minus the second.
- ``doctor``: DOCTOR's Gini impurity 1 − Σp², negated (Σp² − 1).
- ``entropy``: the softmax entropy, negated.
- ``energy``: logsumexp of the logits (the negated free energy).
- ``rel_u``: REL-U's relative uncertainty pᵀDp, negated, with D learned from the validation outputs.
"""

from __future__ import annotations

import numpy as np

from selection.base import Score, register_score


def _probabilities(answers) -> np.ndarray:
    return np.asarray(answers.probabilities, dtype=np.float64)


@register_score
class MaxSoftmax(Score):
    name = "max_softmax"
    needs = ("probabilities",)
    probability = True

    def compute(self, state, answers, version):
        return _probabilities(answers).max(axis=1)


@register_score
class SoftmaxMargin(Score):
    name = "softmax_margin"
    needs = ("probabilities",)

    def compute(self, state, answers, version):
        top_two = np.sort(_probabilities(answers), axis=1)[:, -2:]
        return top_two[:, 1] - top_two[:, 0]


@register_score
class Doctor(Score):
    name = "doctor"
    needs = ("probabilities",)

    def compute(self, state, answers, version):
        return np.square(_probabilities(answers)).sum(axis=1) - 1.0


@register_score
class NegatedEntropy(Score):
    name = "entropy"
    needs = ("probabilities",)

    def compute(self, state, answers, version):
        from scipy.special import entr

        return -entr(_probabilities(answers)).sum(axis=1)


@register_score
class Energy(Score):
    name = "energy"
    needs = ("logits",)

    def compute(self, state, answers, version):
        from scipy.special import logsumexp

        return logsumexp(np.asarray(answers.logits, dtype=np.float64), axis=1)


@register_score
class RelativeUncertainty(Score):
    """REL-U (Dadalto et al., ICLR 2024): the uncertainty pᵀDp, where D rewards probability mass shared between
    the pairs of classes that wrong validation answers spread it over and right ones do not.

    D = ReLU(λ·E_wrong[ppᵀ] − (1 − λ)·E_right[ppᵀ]) with its diagonal zeroed, divided by its Frobenius norm;
    when no entry is positive, D is the all-ones matrix without diagonal (pᵀDp is then the Gini impurity).
    Temperature 1 (the softmax as cached). Fitted on the whole validation split: it is not the test set here,
    so nothing needs to be held out of it.
    """

    name = "rel_u"
    needs = ("probabilities", "validation")
    #: λ, the weight of the wrong answers' outer products against the right ones' (its authors' default)
    weight: float = 0.5

    def fit(self, version):
        probabilities = _probabilities(version.validation)
        correct = version.validation.correct
        d = self.weight * _mean_outer(probabilities[~correct]) \
            - (1 - self.weight) * _mean_outer(probabilities[correct])
        np.fill_diagonal(d, 0.0)
        d = np.maximum(d, 0.0)
        if not (d > 0).any():
            d = np.ones_like(d)
            np.fill_diagonal(d, 0.0)
        return d / np.linalg.norm(d)

    def compute(self, d, answers, version):
        probabilities = _probabilities(answers)
        return -((probabilities @ d) * probabilities).sum(axis=1)


def _mean_outer(probabilities: np.ndarray) -> np.ndarray:
    """E[ppᵀ] over the rows; zeros for no rows (a version that is never wrong on validation)."""
    if not len(probabilities):
        return np.zeros((probabilities.shape[1],) * 2)
    return probabilities.T @ probabilities / len(probabilities)
