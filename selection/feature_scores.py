"""Scores read from the penultimate features, kept by the ``feature`` distance mode's caches
(``distances/feature.py``).

- ``fdbd``: fDBD (Liu & Qin, ICML 2024), training-free: the mean feature-space distance from the input's features
  to the decision boundary of every other class, divided by the features' distance to their mean over the
  version's training inputs. Far from every boundary and close to where training put its features = likely right.
"""

from __future__ import annotations

from distances.feature import fdbd
from selection.base import Score, register_score


@register_score
class FeatureBoundaryDistance(Score):
    name = "fdbd"
    needs = ("feature_deviations",)

    def compute(self, state, answers, version):
        return fdbd(answers.outputs["feature_margins"], answers.outputs["feature_deviations"])
