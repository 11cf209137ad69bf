"""Compute: the version sets, every registered method's answers on each set (against voting and against
DeepFailGuard), and every registered score's failure prediction per version. Nothing here reads or writes files.

Version sets: every combination of 2-5 distinct architectures, for each fault i: "all" versions carry fault i
(i = 0 is the healthy set), and "one" version carries fault i while the others are healthy (each member in turn;
not for 11 and 12, whose shifted test set is the whole system's). Members are in the canonical order
(``records.canonical``), and the evaluation's tie rule prefers the member with the higher validation accuracy
(``selection.preference_by_validation_accuracy``); the paper's published configurations keep their own order
and its rule, first listed first.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

import FaultInjector
from evaluation.metrics import (
    accuracy,
    augrc,
    aurc,
    auroc,
    brier_score,
    eaurc,
    error_breakdown_of,
    expected_calibration_error,
    improvements,
    lower_limit,
    mcnemar_exact_many,
    paired_difference_intervals,
    upper_limit,
)
from evaluation.records import VersionRecord, canonical, canonical_key, check_dataset, share_learning
from evaluation.selective import Abstention
from selection import METHODS, NEEDS, SCORES, SetContext, preference_by_validation_accuracy, unmet_needs
from selection.dynamic import competence_region
from storage.shifts import NO_SHIFT
from utils import UsageError

MAX_VERSIONS = 5
#: the method every other one is also compared with, beside voting
DEEPFAILGUARD = "dfg"


def version_sets(models: list[str], bugs: list[int]) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    """``(setting, ((model, bug), ...))`` for every combination and fault setting, members in canonical order;
    the same list whatever order ``models`` and ``bugs`` come in."""
    models = [model for model, _ in canonical((model, 0) for model in dict.fromkeys(models))]
    sets = []
    for bug in sorted(set(bugs)):
        for size in range(2, min(MAX_VERSIONS, len(models)) + 1):
            for combo in combinations(models, size):
                if bug == 0:
                    sets.append(("healthy", tuple((m, 0) for m in combo)))
                    continue
                sets.append(("all", tuple((m, bug) for m in combo)))
                if not FaultInjector.replaces_test_set(bug):
                    for faulty in combo:
                        sets.append(("one", tuple((m, bug if m == faulty else 0) for m in combo)))
    return sets


@dataclass
class MethodLog:
    """What the methods could not run for want of which outputs (for the notes), and the seconds each took to
    fit and predict (for the benchmark), over the sets of a dataset."""

    unmet: dict[str, set] = field(default_factory=dict)
    #: methods whose needs were met but that said they cannot run (``Method.cannot_run``), and why
    cannot: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def predict_set(members: list[VersionRecord], context: SetContext,
                log: MethodLog | None = None) -> dict[str, np.ndarray]:
    """Every registered method's labels for one set, fitted on the members' validation outputs only; a method
    whose needs a member (or the context) cannot meet is left out, and logged."""
    return {name: labels for name, (labels, _) in run_set(members, context, log).items()}


def run_set(members: list[VersionRecord], context: SetContext,
            log: MethodLog | None = None) -> dict[str, tuple[np.ndarray, dict]]:
    """Every registered method's labels for one set and what they cost (:func:`spending`), as
    :func:`predict_set` runs them."""
    log = log if log is not None else MethodLog()
    predictions = {}
    for name, method in METHODS.items():
        missing = unmet_needs(method.needs, members, context)
        if missing:
            log.unmet.setdefault(name, set()).update(missing)
            continue
        reason = method.cannot_run(members, context)
        if reason:
            log.cannot.setdefault(name, reason)
            continue
        started = time.perf_counter()
        state = method.fit(members, context)
        labels = np.asarray(method.predict(state, members, context))
        log.seconds[name] = log.seconds.get(name, 0.0) + time.perf_counter() - started
        predictions[name] = labels, spending(method, members, method.visits(state, members, context))
    return predictions


def spending(method, members: list[VersionRecord], visits: np.ndarray | None) -> dict:
    """What a method spent on a set: ``flops_per_input``, the mean FLOPs per input of the members it ran (their
    attacks where it ``attacks``), and ``compute``, that as a fraction of running (and attacking) all of them,
    1.0 for a method that always runs every member; NaN (an empty cell) where a member's costs are not recorded."""
    per_member = np.array([member.flops(method.attacks) for member in members])
    if visits is None:
        return {"compute": 1.0, "flops_per_input": float(per_member.sum())}  # NaN where a cost is unknown
    if np.isnan(per_member).any():
        return {"compute": float("nan"), "flops_per_input": float("nan")}
    spent = float((np.asarray(visits, dtype=bool) * per_member[:, None]).sum(axis=0).mean())
    return {"compute": spent / float(per_member.sum()), "flops_per_input": spent}


def set_columns(dataset: str, setting: str, members: list[VersionRecord]) -> dict:
    """The columns that name a set in every table: dataset, N, members, their faults, the setting, the shift."""
    return {"dataset": dataset, "n_versions": len(members), "models": "-".join(m.model for m in members),
            "bug_ids": "-".join(str(m.bug) for m in members), "setting": setting,
            "shift": getattr(members[0], "shift", NO_SHIFT)}


def evaluate_set(dataset: str, setting: str, members: list[VersionRecord], truth: np.ndarray,
                 context: SetContext | None = None, log: MethodLog | None = None, workers: int = 1) -> list[dict]:
    """One row per method for one set of versions: its accuracy, against voting and against DeepFailGuard
    (bootstrap intervals drawn on ``workers`` threads; they do not depend on it)."""
    labels = np.stack([m.labels for m in members])
    context = context or SetContext(int(max(labels.max(), truth.max())) + 1)
    ran = run_set(members, context, log)
    predictions = {name: predicted for name, (predicted, _) in ran.items()}
    voting_right = predictions["voting"] == truth
    dfg_right = predictions[DEEPFAILGUARD] == truth
    voting, dfg = accuracy(predictions["voting"], truth), accuracy(predictions[DEEPFAILGUARD], truth)
    upper = upper_limit(labels, truth)
    common = {
        **set_columns(dataset, setting, members), "voting_accuracy": voting,
        "upper_limit": upper, "lower_limit": lower_limit(labels, truth),
        "version_accuracies": "-".join(f"{accuracy(m.labels, truth):.4f}" for m in members), "dfg_accuracy": dfg,
    }
    wrong_versions = (labels != truth).sum(axis=0)
    rights = np.stack([predicted == truth for predicted in predictions.values()])
    p_voting, p_dfg = mcnemar_exact_many(rights, voting_right), mcnemar_exact_many(rights, dfg_right)
    intervals = paired_difference_intervals(rights, voting_right, workers)
    rows = []
    for index, (method, predicted) in enumerate(predictions.items()):
        right = rights[index]
        method_accuracy = accuracy(predicted, truth)
        absolute, relative = improvements(method_accuracy, voting, upper)
        low, high = intervals[index]
        row = dict(common, method=method, accuracy=method_accuracy, abs_improvement=absolute,
                   rel_improvement=relative, mcnemar_p=float(p_voting[index]), abs_improvement_low=low,
                   abs_improvement_high=high, mcnemar_p_dfg=float(p_dfg[index]), **ran[method][1])
        for k, (share, right_share) in enumerate(error_breakdown_of(wrong_versions, right, len(members))):
            row[f"e{k}"], row[f"acc_e{k}"] = share, right_share
        rows.append(row)
    return rows


def evaluate_sets(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray],
                  sets, progress: bool = False, log: MethodLog | None = None, keep_order: bool = False,
                  abstention: Abstention | None = None) -> list[dict]:
    """Rows for each ``(setting, ((model, bug), ...))`` whose versions are all available (the others are left
    out): members in canonical order and ties to the higher validation accuracy, or, with ``keep_order`` (the
    paper's published configurations), in the order given and ties to the first.

    What the methods may know of the dataset (its number of classes, the region of competence of each test
    set) is computed once here; the methods a set cannot run are logged in ``log``; with ``abstention``, each
    set's rows of ``selective.csv`` are gathered there."""
    num_classes = dataset_classes(records, truths)
    workers = torch.get_num_threads()  # the job's --threads
    regions = {}
    rows = []
    # BLAS and OpenMP on one thread: the methods' fits then give the same numbers whatever --threads is, and
    # their idle threads do not spin on the cores the bootstrap intervals are drawn on (measured on 150 sets of
    # the synthetic grid, 2 cores: 7.3 s with both on two threads, 5.7 s like this)
    with threadpool_limits(limits=1):
        for setting, members in tqdm(sets, desc=f"{dataset} version sets", unit="set", disable=not progress,
                                     leave=False):
            if not all(member in records for member in members):
                continue
            chosen = [records[member] for member in (members if keep_order else canonical(members))]
            test_sets = {r.test_set for r in chosen}
            if len(test_sets) != 1:
                raise UsageError(f"{dataset}: versions {members} answer different test sets {sorted(test_sets)}")
            test_set = test_sets.pop()
            if test_set not in regions:
                regions[test_set] = region_of(records, test_set)
            preference = None if keep_order else preference_by_validation_accuracy(chosen)
            context = SetContext(num_classes, regions[test_set], preference)
            rows.extend(evaluate_set(dataset, setting, chosen, truths[test_set], context, log, workers))
            if abstention is not None:
                abstention.add(set_columns(dataset, setting, chosen), chosen, truths[test_set], context)
    return rows


def dataset_classes(records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> int:
    """The number of classes the dataset's files show: labels, truths and the softmax's width."""
    widths = [r.probabilities.shape[1] for r in records.values() if r.probabilities is not None]
    largest = [int(a.max()) for a in [*(r.labels for r in records.values()), *truths.values()] if a.size]
    return max([*widths, *(x + 1 for x in largest), 1])


def reference_bug(test_set: str) -> int:
    """The healthy weights' version on a test set: the healthy version, or the one answering a shifted test set."""
    return int(test_set[3:]) if test_set else FaultInjector.HEALTHY


def region_of(records: dict[tuple[str, int], VersionRecord], test_set: str):
    """The region of competence of ``test_set`` (``selection.dynamic``): the healthy weights' validation and test
    softmax outputs of every architecture that has both, in canonical order; None where none has."""
    reference = [r for key, r in sorted(records.items(), key=lambda item: canonical_key(item[0]))
                 if key[1] == reference_bug(test_set) and r.has("validation") and r.has("probabilities")]
    if not reference:
        return None
    return competence_region(np.concatenate([r.validation.probabilities for r in reference], axis=1),
                             np.concatenate([r.probabilities for r in reference], axis=1),
                             reference[0].validation.truth, tuple(r.model for r in reference))


def failure_prediction_rows(records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> list[dict]:
    """How well each registered score predicts its version's own test failures: AUROC, the area under the
    risk-coverage curve (AURC), its excess over a perfect ranking's (e-AURC) and the generalized one (AUGRC), all
    three as FD-Shifts computes them (``metrics.aurc``), for every score, ECE and Brier score for those that are
    probabilities (empty where the version lacks what the score needs, or where the score reads a failure model
    fitted without a wrong or a correct input, or is otherwise undefined for the version (``Score.undefined``: a
    likelihood ratio with no wrong validation input): it cannot predict a failure, and a measured-looking 0.5 would
    say otherwise). ``warnings`` holds what was warned of the version's files."""
    rows = []
    for (model, bug), record in sorted(records.items(), key=lambda item: (item[0][1], canonical_key(item[0]))):
        correct = record.labels == truths[record.test_set]
        row = {"dataset": record.dataset, "shift": record.shift, "model": model, "bug_id": bug, "n_test": len(correct),
               "test_accuracy": float(correct.mean()), "val_acc": record.val_acc,
               "warnings": " | ".join(record.warnings)}
        available = [name for name, score in SCORES.items() if not unmet_needs(score.needs, [record])
                     and not (score.failure_model and record.module.degenerate) and not score.undefined(record)]
        for metric, function in (("auroc", auroc), ("aurc", aurc), ("eaurc", eaurc), ("augrc", augrc)):
            row.update({f"{metric}_{name}": function(record.score(name), correct) if name in available else None
                        for name in SCORES})
        probabilities = [name for name, score in SCORES.items() if score.probability]
        for metric, function in (("ece", expected_calibration_error), ("brier", brier_score)):
            row.update({f"{metric}_{name}": function(record.probability_score(name), correct) if name in available
                        else None for name in probabilities})
        rows.append(row)
    return rows


@dataclass
class Evaluation:
    """Rows of every evaluated set, failure-prediction rows, the datasets skipped (with why), and the names of
    the methods and scores that ran."""

    rows: list[dict]
    failure_rows: list[dict]
    skipped: dict[str, str]
    #: the rows of ``selective.csv``
    selective_rows: list[dict] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(row["method"] for row in self.rows))

    @property
    def scores(self) -> list[str]:
        return [name for name in SCORES if any(row.get(f"auroc_{name}") is not None or
                                               row.get(f"aurc_{name}") is not None for row in self.failure_rows)]


def evaluate_datasets(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                      sets_by_dataset: dict | None = None, progress: bool = False,
                      abstention: Abstention | None = None) -> Evaluation:
    """Every dataset's rows, nothing written: the grid of ``models`` × ``bugs_by_dataset``, or the explicit
    ``(setting, members)`` of ``sets_by_dataset`` (the paper's configurations, in their order).

    A dataset that cannot be evaluated (fewer than two versions, no complete set) is skipped with a note
    on stderr (a partial release); only when no dataset can be evaluated is it an error. Abstention's
    thresholds are certified at ``abstention``'s levels (default ``--alpha 0.05 --delta 0.1``).
    """
    return evaluate_shifts({NO_SHIFT: (records_by_dataset, truths_by_dataset)}, models, bugs_by_dataset,
                           sets_by_dataset, progress, abstention)


def evaluate_shifts(by_shift: dict, models: list[str], bugs_by_dataset: dict, sets_by_dataset: dict | None = None,
                    progress: bool = False, abstention: Abstention | None = None) -> Evaluation:
    """:func:`evaluate_datasets` of the test sets under each shift (``by_shift``: shift → ``(records_by_dataset,
    truths_by_dataset)``, the records carrying their shift), every row with its ``shift``, one Evaluation. A version's
    records share what was learned from its validation outputs with its record under the first shift: fitted once."""
    rows, failure_rows, skipped = [], [], {}
    abstention = abstention or Abstention()
    first_shift = next(iter(by_shift.values()), ({}, {}))[0]
    for shift, (records_by_dataset, truths_by_dataset) in by_shift.items():
        where = "" if shift == NO_SHIFT else f" under {shift}"
        for dataset, records in records_by_dataset.items():
            if len(records) < 2:
                skipped[f"{dataset}{where}"] = (
                    f"{dataset}{where}: {len(records)} version(s) available; DeepFailGuard needs at least two "
                    "(train and cache more versions, or widen --models/--bugs)")
                continue
            check_dataset(dataset, records, truths_by_dataset[dataset])
            share_learning(records, first_shift.get(dataset, {}))  # fitted on validation once, for every shift
            log = MethodLog()
            if sets_by_dataset is not None:
                sets, keep_order = sets_by_dataset.get(dataset, []), True
            else:
                sets, keep_order = version_sets(models, bugs_by_dataset[dataset]), False
            dataset_rows = evaluate_sets(dataset, records, truths_by_dataset[dataset], sets, progress, log,
                                         keep_order, abstention)
            if not dataset_rows:
                skipped[f"{dataset}{where}"] = \
                    f"{dataset}{where}: no set of two or more versions with the same faults setting is complete"
                continue
            if log.unmet:
                print(f"note: {unmet_note(dataset, log.unmet)}", file=sys.stderr)
            if log.cannot:
                print(f"note: {dataset}: skipped where they cannot run: "
                      + "; ".join(f"{name} ({reason})" for name, reason in log.cannot.items()), file=sys.stderr)
            rows.extend(dataset_rows)
            failure_rows.extend(failure_prediction_rows(records, truths_by_dataset[dataset]))
    if not rows:
        reasons = list(skipped.values()) or ["no dataset to evaluate"]
        more = f" (and {len(reasons) - 1} more dataset(s) with nothing to evaluate)" if len(reasons) > 1 else ""
        raise UsageError(reasons[0] + more)
    for reason in skipped.values():
        print(f"note: skipped {reason}", file=sys.stderr)
    return Evaluation(rows, failure_rows, skipped, abstention.rows)


def unmet_note(dataset: str, unmet: dict[str, set]) -> str:
    """One line: which methods some sets could not run, for want of what, and which step writes it."""
    parts = []
    for need, (what, step) in NEEDS.items():
        methods = [name for name, needs in unmet.items() if need in needs]
        if methods:
            parts.append(f"{', '.join(methods)} need {what} ({step} writes them)")
    return f"{dataset}: skipped where missing: " + "; ".join(parts)
