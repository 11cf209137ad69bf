"""Weighted majority voting: each member votes with the log-odds of its validation accuracy."""

from __future__ import annotations

import numpy as np

from selection.base import SMALLEST_CLASS, Method, register_method, stacked_labels, weighted_vote


@register_method
class AccuracyWeightedVoting(Method):
    """The optimal weighted vote for independent members (Nitzan & Paroush, 1982; its K-class form): a member of
    validation accuracy a votes with log((K − 1)·a / (1 − a)), so one reliable member outvotes two weak ones."""

    name = "weighted_voting"
    ties = SMALLEST_CLASS
    #: keeps the log-odds of a version that is always (or never) right on validation finite
    accuracy_clip: float = 1e-3

    def predict(self, state, members, context):
        accuracy = np.clip([member.val_acc for member in members], self.accuracy_clip, 1 - self.accuracy_clip)
        weights = np.log((context.num_classes - 1) * accuracy / (1 - accuracy))
        labels = stacked_labels(members)
        return weighted_vote(labels, np.repeat(weights[:, None], labels.shape[1], axis=1), context.num_classes)
