"""Dynamic selection as DESlib defines it: OLA, LCA (one member answers), KNORA-E, KNORA-U (a vote).

Each judges the members on the k = 7 validation inputs nearest to the test input (its *region of competence*)
and reads their validation answers there.

Why not DESlib itself: its ``fit`` calls a private scikit-learn method removed in scikit-learn 1.7, and the
fix is unreleased; the four definitions are short, so they are written here with scikit-learn's
``NearestNeighbors`` and array operations over (members × test inputs × neighbours), following DESlib's
definitions (version 0.3.7) — its shortcut of answering directly where all members agree is left out because
it never changes an answer of these four.

Where the neighbours are found: DESlib searches the classifiers' input space. Here the region is found once
per dataset and test set, not once per version set: in the space of the *healthy* versions' softmax outputs
(concatenated, in registry order), on validation and on the test inputs as the system receives them: the
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

from metrics import majority_vote
from selection.base import Method, register_method, stacked_labels, weighted_vote

#: the size of the region of competence (DESlib's default)
NEIGHBOURS = 7


_tokens = itertools.count()


@dataclass
class Region:
    """Per test input, its ``NEIGHBOURS`` nearest validation inputs (nearest first) and the validation truth."""

    neighbours: np.ndarray  # (test inputs × k) indices into the validation split
    validation_truth: np.ndarray
    #: the versions whose outputs span the space, for the notes
    reference: tuple[str, ...] = ()
    #: names this region in the versions' caches of what they computed on it
    token: int = field(default_factory=lambda: next(_tokens))


def competence_region(validation_features: np.ndarray, test_features: np.ndarray, validation_truth: np.ndarray,
                      reference: tuple[str, ...] = (), k: int = NEIGHBOURS) -> Region:
    """The k nearest validation inputs of every test input (Euclidean, as DESlib's default)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(validation_features))
    search = NearestNeighbors(n_neighbors=k).fit(validation_features)
    _, neighbours = search.kneighbors(test_features)
    return Region(neighbours, np.asarray(validation_truth), reference)


def hits(version, region: Region) -> np.ndarray:
    """Whether the version answered each test input's neighbours right: (test inputs × k), once per version."""
    return version.fitted(f"hits on region {region.token}",
                          lambda v: v.validation.correct[region.neighbours])


class DynamicSelection(Method):
    """Competence per member and test input, from the member's hits on the region: each member's is computed
    once (it depends on the member alone) and shared by every set it joins."""

    needs = ("validation", "region")

    def competence(self, version, region: Region) -> np.ndarray:
        raise NotImplementedError

    def fit(self, members, context):
        region = context.region
        return np.stack([member.fitted(f"{self.name} competence on region {region.token}",
                                       lambda v: self.competence(v, region)) for member in members])

    @staticmethod
    def _answer_of_most_competent(competence: np.ndarray, members) -> np.ndarray:
        """DESlib's DCS "best": the most competent member answers (the first one on ties)."""
        labels = stacked_labels(members)
        return np.take_along_axis(labels, np.argmax(competence, axis=0)[None, :], axis=0)[0]


@register_method
class OverallLocalAccuracy(DynamicSelection):
    """OLA (Woods et al., 1997): competence is the member's accuracy on the region."""

    name = "ola"

    def competence(self, version, region):
        return hits(version, region).mean(axis=1)

    def predict(self, competence, members, context):
        return self._answer_of_most_competent(competence, members)


@register_method
class LocalClassAccuracy(DynamicSelection):
    """LCA (Woods et al., 1997): competence is the member's accuracy on the region's inputs whose true class is
    the one it gives the test input; 0 where the region has none of that class."""

    name = "lca"

    def competence(self, version, region):
        same_class = region.validation_truth[region.neighbours] == version.labels[:, None]
        counted = same_class.sum(axis=1)
        right = (hits(version, region) & same_class).sum(axis=1)
        return np.divide(right, counted, out=np.zeros(right.shape), where=counted > 0)

    def predict(self, competence, members, context):
        return self._answer_of_most_competent(competence, members)


@register_method
class KnoraEliminate(DynamicSelection):
    """KNORA-E (Ko et al., 2008): the members right on all k neighbours vote; if none, k shrinks (nearest kept)
    until one is; if none is right even on the nearest, all vote. Equivalently, the members with the longest
    run of hits from the nearest neighbour vote (a plain majority, smallest class on ties)."""

    name = "knora_e"

    def competence(self, version, region):
        return np.cumprod(hits(version, region), axis=1).sum(axis=1)

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

    def competence(self, version, region):
        return hits(version, region).sum(axis=1)

    def predict(self, weights, members, context):
        labels = stacked_labels(members)
        answer = weighted_vote(labels, weights, context.num_classes)
        nobody = weights.sum(axis=0) == 0
        if nobody.any():
            answer[nobody] = majority_vote(labels[:, nobody], context.num_classes)
        return answer
