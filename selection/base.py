"""What a failure score and a selection method are, and the two registries they enter.

A **score** gives, per version and input, how likely the version is to be right (higher = more likely); it
may learn from the version's validation outputs (``fit``), never from its test answers. Registering a score
also registers the selection method of the same name: per input, the member with the highest score answers
(the first such member on ties), as DeepFailGuard does with its P(correct).

A **method** turns a set's members into one label per test input. It may learn from the members' validation
outputs (``fit``, once per set), never from the test truth, which it is never given.

Both declare the outputs they need (:data:`NEEDS`); where a member lacks one, the evaluation skips the method
for that set and says so once per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils import Registry

#: what a score or method may need beyond a version's test labels, distances and failure model, with the step
#: that writes it
NEEDS = {
    "probabilities": ("test softmax probabilities", "main_cache_test_distances.py"),
    "logits": ("test logits", "main_cache_test_distances.py"),
    "validation": ("validation outputs", "main_train_DeepFailGuard.py"),
    "region": ("the healthy versions' validation and test softmax (the region of competence)",
               "main_train_DeepFailGuard.py and main_cache_test_distances.py for the healthy versions"),
}

SCORES = Registry("failure score", str.lower)
METHODS = Registry("selection method", str.lower)


class Score:
    """A per-version, per-input failure score. Subclasses set ``name``, ``needs``, ``probability`` and
    implement :meth:`compute` (and :meth:`fit` when the score learns from validation outputs)."""

    name = ""
    #: keys of :data:`NEEDS`
    needs: tuple[str, ...] = ()
    #: the score estimates P(correct): calibration (ECE, Brier) is reported for it
    probability = False
    #: False for a score that is only a failure predictor, not a selector
    selects = True

    def fit(self, version):
        """What the score learns from ``version.validation`` (and its failure model); None: nothing."""
        return None

    def compute(self, state, answers, version) -> np.ndarray:
        """One score per input of ``answers`` (a ``layout.CachedAnswers``), given what :meth:`fit` returned."""
        raise NotImplementedError


class Method:
    """A per-input selection method over a set of versions. Subclasses set ``name``, ``needs`` and implement
    :meth:`predict` (and :meth:`fit` when the method learns from the members' validation outputs)."""

    name = ""
    needs: tuple[str, ...] = ()

    def fit(self, members, context: "SetContext"):
        """What the method learns for this set from its members' validation outputs; None: nothing."""
        return None

    def predict(self, state, members, context: "SetContext") -> np.ndarray:
        """One label per test input."""
        raise NotImplementedError


@dataclass
class SetContext:
    """What a method may know beyond its members: the number of classes and, for dynamic selection, the
    dataset's region of competence (never the test truth)."""

    num_classes: int
    region: object | None = None


def stacked_labels(members) -> np.ndarray:
    """The members' test labels as one (members × inputs) array."""
    return np.stack([member.labels for member in members])


class SelectBy(Method):
    """Per input, the member whose score is highest answers (the first such member on ties)."""

    score = ""

    def predict(self, state, members, context) -> np.ndarray:
        scores = np.stack([member.score(self.score) for member in members])
        labels = stacked_labels(members)
        chosen = np.argmax(scores, axis=0)
        return np.take_along_axis(labels, chosen[None, :], axis=0)[0]


def register_method(cls: type) -> type:
    """Class decorator: enter a :class:`Method` in :data:`METHODS` by its ``name``."""
    return METHODS.register(cls)


def register_score(cls: type) -> type:
    """Class decorator: enter a :class:`Score` in :data:`SCORES` and, unless ``selects`` is False, the method
    that selects by it in :data:`METHODS`, under the same name."""
    SCORES.register(cls)
    if cls.selects:
        METHODS.register(type(f"SelectBy_{cls.name}", (SelectBy,),
                              {"name": cls.name, "score": cls.name, "needs": cls.needs,
                               "__doc__": f"Selection by the {cls.name} score."}))
    return cls


def unmet_needs(needs, members, context: SetContext | None = None) -> list[str]:
    """The needs some member (or the context) cannot meet."""
    unmet = []
    for need in needs:
        if need == "region":
            if context is None or context.region is None:
                unmet.append(need)
        elif not all(member.has(need) for member in members):
            unmet.append(need)
    return unmet


def weighted_vote(labels: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Per input, the class with the largest summed weight of the members voting for it (smallest class on
    ties); ``labels`` and ``weights`` are (members × inputs)."""
    labels = np.asarray(labels)
    totals = np.zeros((labels.shape[1], num_classes))
    rows = np.arange(labels.shape[1])
    for member_labels, member_weights in zip(labels, np.asarray(weights, dtype=np.float64)):
        totals[rows, member_labels] += member_weights  # one cell per input and member: no repeated index
    return totals.argmax(axis=1)
