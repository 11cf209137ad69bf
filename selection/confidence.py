"""Scores read from a version's softmax or logits alone: the field's failure predictors.

- ``max_softmax``: the top probability (Hendrycks & Gimpel's baseline).
- ``softmax_margin``: top probability minus the second.
- ``doctor``: DOCTOR's Gini impurity 1 − Σp², negated (Σp² − 1).
- ``entropy``: the softmax entropy, negated.
- ``energy``: logsumexp of the logits (the negated free energy).
- ``rel_u``: REL-U's relative uncertainty pᵀDp, negated, with D learned from the validation outputs.
- ``maxlogit_pnorm``: the largest centred logit over the logits' p-norm, p chosen on the validation outputs.
- ``gen``: GEN's generalized entropy of the largest probabilities, negated.
"""

from __future__ import annotations

import numpy as np
from scipy.special import entr, logsumexp
from sklearn.metrics import roc_auc_score

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
        return -entr(_probabilities(answers)).sum(axis=1)


@register_score
class Energy(Score):
    name = "energy"
    needs = ("logits",)

    def compute(self, state, answers, version):
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


@register_score
class MaxLogitPNorm(Score):
    """MaxLogit-pNorm (Cattelan & Silva, 2024): the logits centred on their mean, the largest of them divided by
    their p-norm, so that a confident answer is one whose top logit stands out from the rest whatever the logits'
    scale. p is the candidate whose score best tells the version's right validation answers from its wrong ones
    (AUROC; ties to the smaller p); a version never wrong on validation gives no such evidence and keeps
    ``fallback``."""

    name = "maxlogit_pnorm"
    needs = ("logits", "validation")
    #: the p tried on validation (the authors' grid is of this kind: small whole numbers)
    candidates: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    #: p where validation cannot choose (every answer right, or every one wrong)
    fallback: float = 2.0

    def fit(self, version):
        logits, correct = version.validation.logits, version.validation.correct
        if correct.all() or not correct.any():  # no right (or no wrong) answer: AUROC cannot choose
            return self.fallback
        quality = [roc_auc_score(correct, pnorm_max_logit(logits, p)) for p in self.candidates]
        return self.candidates[int(np.argmax(quality))]

    def compute(self, p, answers, version):
        return pnorm_max_logit(answers.logits, p)


@register_score
class GeneralizedEntropy(Score):
    """GEN (Liu et al., CVPR 2023): the generalized entropy Σ_j p_j^γ (1 − p_j)^γ of the M largest probabilities,
    negated: higher = more confident. With γ = 0.1 even a probability of 10⁻⁶ adds 0.25 to the sum, so among many
    classes the tail of small probabilities would swamp it: only the M largest count."""

    name = "gen"
    needs = ("probabilities",)
    #: γ, the authors' default
    gamma: float = 0.1
    #: M, the classes summed over: the authors' 100 (of ImageNet's 1,000); every class where there are fewer
    M: int = 100

    def compute(self, state, answers, version):
        largest = np.sort(_probabilities(answers), axis=1)[:, -self.M:]
        return -(largest ** self.gamma * (1.0 - largest) ** self.gamma).sum(axis=1)


def pnorm_max_logit(logits, p: float) -> np.ndarray:
    """max_k z_k / ‖z‖_p of each row's centred logits z (0 where every logit is equal: no class stands out)."""
    centred = np.asarray(logits, dtype=np.float64)
    centred = centred - centred.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, ord=p, axis=1)
    return np.divide(centred.max(axis=1), norm, out=np.zeros(len(centred)), where=norm > 0)


def _mean_outer(probabilities: np.ndarray) -> np.ndarray:
    """E[ppᵀ] over the rows; zeros for no rows (a version that is never wrong on validation)."""
    if not len(probabilities):
        return np.zeros((probabilities.shape[1],) * 2)
    return probabilities.T @ probabilities / len(probabilities)
