"""Cascades: run the members cheapest first and stop as soon as one is trusted enough, instead of running (and
attacking) every member on every input.

A score cascade visits the members in order of cost (``VersionRecord.flops``: the attack where the score reads
distances, else the forward pass; the evaluation's preference breaks ties) and answers with the first member
whose score reaches a threshold; an input no member clears has visited them all and gets the full set's answer
(the member with the highest score, as selecting by that score does). The threshold is fitted per set on the
members' validation outputs: the cheapest one whose validation accuracy stays within ``tolerance`` of selecting
by the score over the full set. The agreement cascade (after agreement-based cascading) stops when the two
cheapest members agree and otherwise runs them all and votes.

The threshold is fitted on the scores a member's validation inputs get from a fit that did not see them
(``Score.validation_scores``: DeepFailGuard's KDEs cross-fitted), never on in-sample P(correct).
"""

from __future__ import annotations

import numpy as np

from selection.base import (
    PREFERRED_MEMBER,
    SCORES,
    SMALLEST_CLASS,
    Method,
    majority_vote,
    register_method,
    stacked_labels,
    undefined_for,
)


def validation_scores(name: str, member) -> np.ndarray:
    """The registered score ``name`` of a member's validation inputs, each from a fit that did not see it
    (``Score.validation_scores``), computed once per member."""
    score = SCORES[name]
    return member.learn(f"validation score {name}", lambda version: np.asarray(
        score.validation_scores(version.learn(f"score {name}", score.fit), version), dtype=np.float64))


def cost_order(members, attacks: bool, context) -> list[int]:
    """Member indices cheapest first (FLOPs per input of running, and attacking where ``attacks``, each); ties in
    the evaluation's order of preference."""
    preference = list(context.preference) if context.preference is not None else list(range(len(members)))
    return sorted(range(len(members)), key=lambda i: (members[i].flops(attacks), preference.index(i)))


def walk(scores: np.ndarray, labels: np.ndarray, order: list[int], threshold: float, context):
    """Labels and visited members (members × inputs) of the cascade over ``order`` at ``threshold``: each input is
    answered by the first member whose score reaches it; one answered by none has run every member and gets the
    member with the highest score (the preferred one on ties)."""
    inputs = scores.shape[1]
    answer = np.take_along_axis(labels, context.first_preferred_max(scores)[None, :], axis=0)[0].copy()
    visited = np.zeros(scores.shape, dtype=bool)
    open_ = np.ones(inputs, dtype=bool)
    for member in order[:-1]:
        visited[member, open_] = True
        stop = open_ & (scores[member] >= threshold)
        answer[stop] = labels[member, stop]
        open_ &= ~stop
    visited[:, open_] = True
    return answer, visited


class ScoreCascade(Method):
    """Members cheapest first; stop at the first whose ``score`` reaches a threshold fitted on validation."""

    name = "cascade"
    ties = f"the cheaper member (then {PREFERRED_MEMBER}); the full set's choice where no member stops it"
    #: the registered score the members are trusted by
    score: str = "dfg"
    #: the validation accuracy the threshold may give up against selecting by the score over the full set
    tolerance: float = 0.005
    #: candidate thresholds tried at most (quantiles of the members' validation scores)
    thresholds: int = 200

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("costs", "validation", *SCORES[self.score].needs)))

    @property
    def attacks(self) -> bool:
        return SCORES[self.score].attacks

    def cannot_run(self, members, context) -> str | None:
        return undefined_for(SCORES[self.score], members)

    def validation_scores(self, member) -> np.ndarray:
        return validation_scores(self.score, member)

    def fit(self, members, context):
        """The threshold: the cheapest on validation within ``tolerance`` of the full set's accuracy (the higher,
        so the more cautious, of equally cheap ones)."""
        order = cost_order(members, self.attacks, context)
        scores = np.stack([self.validation_scores(member) for member in members])
        labels = np.stack([member.validation.labels for member in members])
        truth = members[0].validation.truth
        flops = np.array([member.flops(self.attacks) for member in members])
        pool = scores[order[:-1]].ravel()
        pool = pool[np.isfinite(pool)]  # a cross-fitted score is NaN where validation was too small to split
        candidates = np.unique(np.quantile(pool, np.linspace(0.0, 1.0, self.thresholds))) if pool.size else []
        full_accuracy = float((walk(scores, labels, order, np.inf, context)[0] == truth).mean())
        best = (float(flops.sum()), -full_accuracy, -np.inf, np.inf)
        for threshold in candidates:
            answer, visited = walk(scores, labels, order, float(threshold), context)
            accuracy = float((answer == truth).mean())
            if accuracy >= full_accuracy - self.tolerance - 1e-12:
                cost = float((visited * flops[:, None]).sum(axis=0).mean())
                best = min(best, (cost, -accuracy, -float(threshold), float(threshold)))
        return order, best[3]

    def _walk(self, state, members, context):
        order, threshold = state
        return walk(np.stack([member.score(self.score) for member in members]), stacked_labels(members), order,
                    threshold, context)

    def predict(self, state, members, context):
        return self._walk(state, members, context)[0]

    def visits(self, state, members, context):
        return self._walk(state, members, context)[1]


class AgreementCascade(Method):
    """The two cheapest members answer where they agree; elsewhere every member runs and the majority decides."""

    name = "cascade_agreement"
    needs = ("costs",)
    ties = f"the majority vote's: {SMALLEST_CLASS}"

    def fit(self, members, context):
        return cost_order(members, False, context)[:2]

    def _agree(self, first_two, members):
        labels = stacked_labels(members)
        return labels, labels[first_two[0]] == labels[first_two[1]]

    def predict(self, first_two, members, context):
        labels, agree = self._agree(first_two, members)
        return np.where(agree, labels[first_two[0]], majority_vote(labels, context.num_classes))

    def visits(self, first_two, members, context):
        labels, agree = self._agree(first_two, members)
        visited = np.repeat(~agree[None, :], len(members), axis=0)
        visited[list(first_two)] = True
        return visited


for _score in ("dfg", "max_softmax", "doctor"):
    register_method(ScoreCascade, name=f"cascade_{_score}", score=_score)
register_method(AgreementCascade)
