"""Risk-controlled abstention: answer only where the system is confident enough, with a threshold chosen on
validation by Learn-then-Test (Angelopoulos et al., 2021) so that the selective risk (the error rate among the
inputs answered) is at most ``alpha`` with probability at least ``1 − delta``.

For each set of versions and each selecting score, the system answers as selecting by that score does (the
member with the highest score) and its confidence is that highest score. Candidate thresholds are tested from
the strictest down (fixed-sequence testing): the null hypothesis "the selective risk at this threshold exceeds
``alpha``" is rejected when the binomial tail ``P(X <= errors | answered, alpha)`` of the answered validation
inputs is at most ``delta`` (exact, SciPy's ``binom``); the first threshold not rejected stops the sequence, and
the last rejected one is certified. None rejected: no threshold is certified, and the row says so (coverage 0, and
``risk_held`` empty: nothing answered holds or breaks a risk); where the validation inputs are fewer than any
certificate needs, ``note`` says so and one warning line per dataset and shift too.
The sequence starts at the strictest threshold that answers enough inputs to be certified at all
(:func:`least_answered`: 45 at the defaults); stricter ones could never be, and would stop it at once.

The validation scores are those of a fit that did not see the input (``Score.validation_scores``: DeepFailGuard's
KDEs cross-fitted): the guarantee needs calibration data the score was not fitted on. The candidate grid is made
of quantiles of the validation confidences (never of their correctness): fixed-sequence testing strictly wants
a grid fixed in advance, and this common relaxation is named here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binom

from selection import SCORES, undefined_for, unmet_needs
from selection.cascade import validation_scores
from storage.settings import ALPHA, DELTA
from utils import warn

#: candidate thresholds at most
GRID = 1000
COLUMNS = ["dataset", "n_versions", "models", "bug_ids", "setting", "shift", "score", "alpha", "delta", "certified",
           "threshold", "coverage", "selective_risk", "risk_held", "validation_coverage", "validation_risk",
           "n_validation", "note"]


@dataclass
class Abstention:
    """The levels asked for (``--alpha``, ``--delta``) and the rows of ``selective.csv`` gathered set by set."""

    alpha: float = ALPHA
    delta: float = DELTA
    rows: list = field(default_factory=list)
    #: the (dataset, shift) pairs already warned of (once each, not once per set)
    warned: set = field(default_factory=set)

    def add(self, common: dict, members, truth: np.ndarray, context) -> None:
        rows = selective_rows(common, members, truth, context, self.alpha, self.delta)
        noted = next((row["note"] for row in rows if row["note"]), "")
        if noted and (common["dataset"], common.get("shift")) not in self.warned:
            self.warned.add((common["dataset"], common.get("shift")))
            warn(f"{common['dataset']}: selective.csv: {noted}")
        self.rows.extend(rows)


def ltt_threshold(confidence: np.ndarray, wrong: np.ndarray, alpha: float, delta: float,
                  grid: int = GRID) -> float | None:
    """The lowest threshold certified by fixed-sequence testing (answer where ``confidence >= threshold``), or
    None where even the strictest candidate is not."""
    confidence, wrong = np.asarray(confidence, dtype=np.float64), np.asarray(wrong, dtype=bool)
    kept = np.isfinite(confidence)  # NaN: validation too small to cross-fit the score
    confidence, wrong = confidence[kept], wrong[kept]
    fewest = least_answered(alpha, delta)
    if len(confidence) < fewest:
        return None
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence, sorted_errors = confidence[order], np.cumsum(wrong[order])
    # thresholds answering fewer than `fewest` inputs could not be certified even without an error: the sequence
    # starts at the first that can (a count of confidences, not of their correctness)
    loosest_start = sorted_confidence[fewest - 1]
    pool = confidence[confidence <= loosest_start]
    candidates = np.unique(np.quantile(pool, np.linspace(0.0, 1.0, grid)))[::-1]
    answered = np.searchsorted(-sorted_confidence, -candidates, side="right")  # every candidate at once
    errors = sorted_errors[np.maximum(answered, 1) - 1]
    rejected = binom.cdf(errors, answered, alpha) <= delta
    failed = np.flatnonzero(~rejected)
    last = (failed[0] if len(failed) else len(candidates)) - 1  # the sequence stops at its first failure
    return float(candidates[last]) if last >= 0 else None


def least_answered(alpha: float, delta: float) -> int:
    """The fewest answered inputs that can certify risk ``alpha`` at level ``delta``: with no error among them,
    the binomial tail ``(1 − alpha)^n`` must reach ``delta``."""
    return max(1, int(np.ceil(np.log(delta) / np.log1p(-alpha))))


def system_confidence(scores: np.ndarray, labels: np.ndarray, context) -> tuple[np.ndarray, np.ndarray]:
    """Per input, the answer of the member with the highest score (the preferred one on ties) and that score."""
    chosen = context.first_preferred_max(scores)
    return (np.take_along_axis(labels, chosen[None, :], axis=0)[0],
            np.take_along_axis(scores, chosen[None, :], axis=0)[0])


def selective_rows(common: dict, members, truth: np.ndarray, context, alpha: float = ALPHA,
                   delta: float = DELTA) -> list[dict]:
    """One row per selecting score the members can all compute and that is defined for each (``Score.undefined``),
    where they have validation outputs: the certified threshold and what it gives on test. ``common`` holds the
    set's identifying columns."""
    if any(member.validation is None for member in members):
        return []
    rows = []
    validation_truth = members[0].validation.truth
    fewest = least_answered(alpha, delta)
    note = "" if len(validation_truth) >= fewest else \
        (f"{len(validation_truth)} validation inputs cannot certify risk {alpha:g} at delta {delta:g}: that takes at "
         f"least {fewest} answered (without an error); no threshold is certified and nothing is answered "
         "(more inputs: --max-inputs, or a larger --alpha or --delta)")
    validation_labels = np.stack([member.validation.labels for member in members])
    test_labels = np.stack([member.labels for member in members])
    for name, score in SCORES.items():
        if not score.selects or unmet_needs(score.needs, members, context) or undefined_for(score, members):
            continue
        answer, confidence = system_confidence(np.stack([validation_scores(name, m) for m in members]),
                                               validation_labels, context)
        threshold = ltt_threshold(confidence, answer != validation_truth, alpha, delta)
        test_answer, test_confidence = system_confidence(np.stack([m.score(name) for m in members]), test_labels,
                                                         context)
        row = dict(common, score=name, alpha=alpha, delta=delta, certified=threshold is not None,
                   threshold=threshold, coverage=0.0, selective_risk=None, risk_held=None,
                   validation_coverage=0.0, validation_risk=None, n_validation=len(validation_truth), note=note)
        if threshold is not None:
            answered, validation_answered = test_confidence >= threshold, confidence >= threshold
            risk = float((test_answer[answered] != truth[answered]).mean()) if answered.any() else None
            row.update(coverage=float(answered.mean()), selective_risk=risk,
                       risk_held=None if risk is None else risk <= alpha,
                       validation_coverage=float(validation_answered.mean()),
                       validation_risk=float((answer != validation_truth)[validation_answered].mean()))
        rows.append(row)
    return rows


def from_args(args) -> Abstention:
    return Abstention(args.alpha, args.delta)
