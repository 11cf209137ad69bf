"""Dynamic selection as DESlib defines it: OLA, LCA (one member answers), KNORA-E, KNORA-U (a vote).

Each judges the members on the k (a parameter, DESlib's default 7) validation inputs nearest to the test input (its
*region of competence*) and reads their validation answers there. On a tie between members, OLA and LCA prefer
the member with the higher validation accuracy (``SetContext.preference``) where DESlib takes the first of its pool.

Why not DESlib itself: its ``fit`` calls a private scikit-learn method removed in scikit-learn 1.7, and the
fix is unreleased; the four definitions are short, so they are written here with scikit-learn's
``NearestNeighbors`` and array operations over (members × test inputs × neighbours), following DESlib's
definitions (version 0.3.7) — its shortcut of answering directly where all members agree is left out because
it never changes an answer of these four.

Where the neighbours are found: DESlib searches the classifiers' input space. Here the region is found once
per dataset and test set, not once per version set: in the space of the *healthy* versions' softmax outputs
(concatenated, in canonical order), on validation and on the test inputs as the system receives them: the
dataset's own (fault 10's noise is injected in a faulty version's own input pipeline, after the system
received the input) or the shifted test set of faults 11 and 12, answered by the healthy weights. Pixels
would need the images at evaluation time, which a cached evaluation does not load, and are a poor metric for
images; the members' own outputs would make the region differ per set (1,088 searches on the paper's grid
instead of 7-9) and let a faulty member choose its own judges. The healthy versions' outputs are a learned
representation every set shares, cheap to search (5 × classes dimensions).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from sklearn.neighbors import NearestNeighbors

from selection.base import (
    PREFERRED_MEMBER,
    SMALLEST_CLASS,
    Method,
    answer_of,
    majority_vote,
    register_method,
    stacked_labels,
    weighted_vote,
)

_tokens = itertools.count()


@dataclass
class Region:
    """Where every test input's nearest validation inputs are searched (the validation and test features), and
    the validation truth; :meth:`neighbours` finds the ``k`` nearest once per ``k`` and keeps them."""

    validation_features: np.ndarray
    test_features: np.ndarray
    validation_truth: np.ndarray
    #: the versions whose outputs span the space, for the notes
    reference: tuple[str, ...] = ()
    #: names this region in the versions' caches of what they computed on it
    token: int = field(default_factory=lambda: next(_tokens))
    _found: dict = field(default_factory=dict, repr=False)

    def neighbours(self, k: int) -> np.ndarray:
        """(test inputs × k) indices into the validation split, nearest first (Euclidean, DESlib's default);
        fewer columns where validation has fewer than ``k`` inputs."""
        k = min(k, len(self.validation_features))
        if k not in self._found:
            search = NearestNeighbors(n_neighbors=k).fit(self.validation_features)
            self._found[k] = search.kneighbors(self.test_features, return_distance=False)
        return self._found[k]


def competence_region(validation_features: np.ndarray, test_features: np.ndarray, validation_truth: np.ndarray,
                      reference: tuple[str, ...] = ()) -> Region:
    """The region of competence over these features (the neighbours are found when a method asks for them)."""
    return Region(np.asarray(validation_features), np.asarray(test_features), np.asarray(validation_truth),
                  reference)


class DynamicSelection(Method):
    """Competence per member and test input, from the member's hits on its ``k`` nearest validation inputs: each
    member's is computed once (it depends on the member alone) and shared by every set it joins."""

    needs = ("validation", "region")
    #: the size of the region of competence (DESlib's default)
    k: int = 7

    def competence(self, version, region: Region) -> np.ndarray:
        raise NotImplementedError

    def hits(self, version, region: Region) -> np.ndarray:
        """Whether the version answered each test input's neighbours right: (test inputs × k), once per version."""
        return version.fitted(f"hits on region {region.token} k={self.k}",
                              lambda v: v.validation.correct[region.neighbours(self.k)])

    def fit(self, members, context):
        region = context.region
        return np.stack([member.fitted(f"{self.name} competence on region {region.token}",
                                       lambda v: self.competence(v, region)) for member in members])


class SelectMostCompetent(DynamicSelection):
    """DESlib's DCS "best": the most competent member answers."""

    ties = PREFERRED_MEMBER + "; DESlib: the first member of the pool"

    def predict(self, competence, members, context):
        return answer_of(context.first_preferred_max(competence), members)


@register_method
class OverallLocalAccuracy(SelectMostCompetent):
    """OLA (Woods et al., 1997): competence is the member's accuracy on the region."""

    name = "ola"

    def competence(self, version, region):
        return self.hits(version, region).mean(axis=1)


@register_method
class LocalClassAccuracy(SelectMostCompetent):
    """LCA (Woods et al., 1997): competence is the member's accuracy on the region's inputs whose true class is
    the one it gives the test input; 0 where the region has none of that class."""

    name = "lca"

    def competence(self, version, region):
        same_class = region.validation_truth[region.neighbours(self.k)] == version.labels[:, None]
        counted = same_class.sum(axis=1)
        right = (self.hits(version, region) & same_class).sum(axis=1)
        return np.divide(right, counted, out=np.zeros(right.shape), where=counted > 0)


@register_method
class KnoraEliminate(DynamicSelection):
    """KNORA-E (Ko et al., 2008): the members right on all k neighbours vote; if none, k shrinks (nearest kept)
    until one is; if none is right even on the nearest, all vote. Equivalently, the members with the longest
    run of hits from the nearest neighbour vote (a plain majority)."""

    name = "knora_e"
    ties = SMALLEST_CLASS

    def competence(self, version, region):
        return np.cumprod(self.hits(version, region), axis=1).sum(axis=1)

    def predict(self, run, members, context):
        selected = run == run.max(axis=0, keepdims=True)
        return weighted_vote(stacked_labels(members), selected, context.num_classes)


@register_method
class KnoraUnion(DynamicSelection):
    """KNORA-U (Ko et al., 2008): every member votes with a weight equal to its hits on the region.

    Where no member is right on any neighbour, DESlib divides 0 by 0 and answers class 0; here the members
    vote unweighted instead (a plain majority vote).
    """

    name = "knora_u"
    ties = SMALLEST_CLASS

    def competence(self, version, region):
        return self.hits(version, region).sum(axis=1)

    def predict(self, weights, members, context):
        labels = stacked_labels(members)
        answer = weighted_vote(labels, weights, context.num_classes)
        nobody = weights.sum(axis=0) == 0
        if nobody.any():
            answer[nobody] = majority_vote(labels[:, nobody], context.num_classes)
        return answer
