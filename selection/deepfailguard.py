"""DeepFailGuard's scores: its P(correct), the paper's ablations, and DeepFailGuard+ (distance and softmax).

Each is selected like DeepFailGuard: per input, the member with the highest score answers.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from DeepFailGuard import Assessment
from failure_model.kde import GaussianKDE
from selection.base import Score, register_score, validation_folds


def cross_fitted_assessment(version):
    """The failure model's scores of the version's validation inputs, each from KDEs fitted (as the fit step
    fits them) on the other folds' distances (``selection.base.validation_folds``): the fitted KDEs have seen
    every validation distance, and score their own points as far more certain than new ones. The prior stays
    the validation accuracy."""
    def fit() -> Assessment:
        distances = np.asarray(version.validation.distances, dtype=np.float64)
        correct = version.validation.correct
        confidence, margin = np.full(len(distances), np.nan), np.full(len(distances), np.nan)
        for train, held in validation_folds(version):
            module = copy.copy(version.module)
            spread = float(np.std(distances[train], ddof=1)) if len(train) > 1 else None
            module.correct_kde = GaussianKDE.fit(distances[train][correct[train]], fallback_scale=spread)
            module.wrong_kde = GaussianKDE.fit(distances[train][~correct[train]], fallback_scale=spread)
            assessment = module.assess(distances[held])
            confidence[held], margin[held] = assessment.confidence, assessment.margin
        return Assessment(confidence, margin)

    return version.learn("cross-fitted assessment", lambda _: fit())


@register_score
class PCorrect(Score):
    """DeepFailGuard: P(correct | d) from the version's two KDEs and its validation accuracy."""

    name = "dfg"
    attacks = True
    probability = True
    failure_model = True

    def compute(self, state, answers, version):
        return version.assess(answers).confidence

    def validation_scores(self, state, version):
        return cross_fitted_assessment(version).confidence


@register_score
class DensityMargin(Score):
    """The paper's "distance only" ablation: f_c(d) − f_w(d), no prior."""

    name = "distance_only"
    attacks = True
    failure_model = True

    def compute(self, state, answers, version):
        return version.assess(answers).margin

    def validation_scores(self, state, version):
        return cross_fitted_assessment(version).margin


@register_score
class Distance(Score):
    """The raw DeepFool distance: the farther from its decision boundary, the more likely right."""

    name = "distance"
    attacks = True

    def compute(self, state, answers, version):
        return np.asarray(answers.distances, dtype=np.float64)


#: a distance of 0 (an input on its boundary) keeps a finite logarithm
DISTANCE_FLOOR = 1e-6
#: float32 softmax saturates at 1: the logit of the top probability stays finite
PROBABILITY_FLOOR = 1e-7
#: DeepFailGuard+'s candidate models, simplest first, chosen per version by cross-validated validation AUROC
FORMS = ("distance", "softmax", "linear", "logit", "logit_interaction")


def _features(answers, form: str) -> np.ndarray:
    """DeepFailGuard+'s inputs: log distance alone, the logit of the top softmax probability alone, or both (the
    probability raw or as its logit, the latter also with the product of the two)."""
    log_distance = np.log(np.asarray(answers.distances, dtype=np.float64) + DISTANCE_FLOOR)
    top = np.clip(np.asarray(answers.probabilities, dtype=np.float64).max(axis=1), PROBABILITY_FLOOR,
                  1.0 - PROBABILITY_FLOOR)
    logit = np.log(top) - np.log1p(-top)
    columns = {"distance": [log_distance], "softmax": [logit], "linear": [log_distance, top],
               "logit": [log_distance, logit], "logit_interaction": [log_distance, logit, log_distance * logit]}
    return np.column_stack(columns[form])


@register_score
class DeepFailGuardPlus(Score):
    """DeepFailGuard+: P(correct) from the distance *and* the softmax, one logistic model per version.

    DeepFailGuard reads only the distance; the top softmax probability carries other evidence (an input far
    from a boundary the network is unsure about, or the reverse). A logistic regression on log distance and
    the top softmax is fitted on the version's validation outputs; of ``forms`` (either feature alone, both
    with the softmax raw or as its logit, and with an interaction term) the one with the best ``folds``-fold
    cross-validated AUROC on validation is kept (the simplest on ties), refitted on all of it. Either way its
    output is a calibrated P(correct), comparable across the members as DeepFailGuard's is. A version with
    fewer right or wrong validation answers than folds keeps DeepFailGuard's P(correct).
    """

    name = "dfg_plus"
    attacks = True
    needs = ("probabilities", "validation")
    probability = True
    failure_model = True  # with too few wrong validation answers it is DeepFailGuard's P(correct)
    #: the candidate models, simplest first (of :data:`FORMS`)
    forms: tuple[str, ...] = FORMS
    folds: int = 3

    def fit(self, version):
        correct = version.validation.correct
        if min(int(correct.sum()), int((~correct).sum())) < self.folds:
            return None
        folds = StratifiedKFold(self.folds, shuffle=True, random_state=0)
        quality = {form: cross_val_score(LogisticRegression(), _features(version.validation, form), correct,
                                         cv=folds, scoring="roc_auc").mean() for form in self.forms}
        form = max(self.forms, key=lambda f: (quality[f], -self.forms.index(f)))  # the simpler one on ties
        return form, LogisticRegression().fit(_features(version.validation, form), correct)

    def compute(self, state, answers, version):
        if state is None:
            return version.assess(answers).confidence
        form, model = state
        return model.predict_proba(_features(answers, form))[:, list(model.classes_).index(True)]
