"""Fault-tolerance evaluation: every registered selection method (``selection``) on every set of versions, as
tidy rows, and every registered score's failure prediction.

A version contributes its test labels, DeepFool distances (softmax probabilities and logits where cached),
its failure model and, where the fit step kept them, its validation outputs. Scores and what a method learns
from one version are computed once per version and reused by every set it belongs to; a set's methods are
array operations over (versions × inputs).

Version sets: every combination of 2-5 distinct architectures, for each fault i: "all" versions
carry fault i (i = 0 is the healthy set), and "one" version carries fault i while the others are
healthy (each member in turn; not for 11 and 12, whose shifted test set is the whole system's).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import FaultInjector
import layout
from DeepFailGuard import Assessment, DeepFailGuardModule
from layout import CachedAnswers
from metrics import (
    accuracy,
    aurc,
    auroc,
    brier_score,
    error_breakdown_of,
    expected_calibration_error,
    improvements,
    lower_limit,
    mcnemar_exact_many,
    mean_interval,
    paired_difference_intervals,
    sign_test,
    upper_limit,
)
from selection import METHODS, NEEDS, SCORES, SetContext, unmet_needs
from settings import DEEPFOOL, DeepFoolSettings
from storage import atomic_write_table
from utils import UsageError

MAX_VERSIONS = 5
RESULT_COLUMNS = (["dataset", "n_versions", "models", "bug_ids", "setting", "method", "accuracy", "voting_accuracy",
                   "upper_limit", "lower_limit", "abs_improvement", "rel_improvement", "version_accuracies"]
                  + [f"e{k}" for k in range(MAX_VERSIONS + 1)] + [f"acc_e{k}" for k in range(MAX_VERSIONS + 1)]
                  + ["mcnemar_p", "abs_improvement_low", "abs_improvement_high", "dfg_accuracy", "mcnemar_p_dfg"])
#: a configuration's difference from voting (or DeepFailGuard) counts as significant below this McNemar p-value
SIGNIFICANCE = 0.05
#: the method every other one is also compared with, beside voting
DEEPFAILGUARD = "dfg"


@dataclass
class VersionRecord:
    """What one version answered on a test set (and, where kept, on validation), and its failure model.

    Scores and what methods learn from the version's validation outputs are computed once and reused by every
    set the version belongs to. The test truth is never here.
    """

    dataset: str
    model: str
    bug: int
    labels: np.ndarray
    distances: np.ndarray
    module: DeepFailGuardModule
    test_set: str  # which ground truth the labels answer ("" or "bug11"/"bug12")
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    #: what the version answered on validation, with the validation truth (None: not kept, as in the paper's release)
    validation: CachedAnswers | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def test(self) -> CachedAnswers:
        return CachedAnswers(self.labels, self.distances, self.probabilities, self.logits)

    @cached_property
    def assessment(self) -> Assessment:
        """P(correct) and the ablation score of every test input: computed once, reused by every set."""
        return self.module.assess(self.distances)

    def assess(self, answers: CachedAnswers) -> Assessment:
        """The failure model's scores of ``answers`` (the test answers' are cached)."""
        return self.assessment if answers is self.test else self.module.assess(answers.distances)

    @property
    def confidence(self) -> np.ndarray:
        return self.assessment.confidence

    @property
    def margin(self) -> np.ndarray:
        return self.assessment.margin

    @property
    def val_acc(self) -> float:
        return self.module.val_acc

    def has(self, need: str) -> bool:
        """Whether this version has an output a score or method needs (``selection.NEEDS``)."""
        return getattr(self, need, None) is not None

    def fitted(self, key: str, fit):
        """``fit(self)``, computed once per version and kept: what a score or method learns from this version."""
        if ("fit", key) not in self._cache:
            self._cache["fit", key] = fit(self)
        return self._cache["fit", key]

    def score(self, name: str) -> np.ndarray:
        """The registered score ``name`` of every test input, fitted on this version's validation outputs."""
        if ("score", name) not in self._cache:
            score = SCORES[name]()
            self._cache["score", name] = score.compute(self.fitted(f"score {name}", score.fit), self.test, self)
        return self._cache["score", name]

    def probability_score(self, name: str) -> np.ndarray:
        """A probability score read for calibration: the paper's P(correct) (``--posterior paper``) exceeds 1 in
        its fallback (``log(1 + d)·a``), so failure prediction and calibration see it clipped to [0, 1],
        decisions the raw score."""
        return np.clip(self.score(name), 0.0, 1.0)


def version_sets(models: list[str], bugs: list[int]) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    """``(setting, ((model, bug), ...))`` for every combination and fault setting, in a stable order."""
    sets = []
    for bug in sorted(bugs):
        for size in range(2, min(MAX_VERSIONS, len(models)) + 1):
            for combo in combinations(models, size):
                if bug == 0:
                    sets.append(("healthy", tuple((m, 0) for m in combo)))
                    continue
                sets.append(("all", tuple((m, bug) for m in combo)))
                if not FaultInjector.replaces_test_set(bug):
                    for faulty in combo:
                        sets.append(("one", ((faulty, bug),) + tuple((m, 0) for m in combo if m != faulty)))
    return sets


@dataclass
class MethodLog:
    """What the methods could not run for want of which outputs (for the notes), and the seconds each took
    to fit and predict (for the benchmark), over the sets of a dataset."""

    unmet: dict[str, set] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def predict_set(members: list[VersionRecord], context: SetContext,
                log: MethodLog | None = None) -> dict[str, np.ndarray]:
    """Every registered method's labels for one set, fitted on the members' validation outputs only; a method
    whose needs a member (or the context) cannot meet is left out, and logged."""
    log = log if log is not None else MethodLog()
    predictions = {}
    for name, method_class in METHODS.items():
        method = method_class()
        missing = unmet_needs(method.needs, members, context)
        if missing:
            log.unmet.setdefault(name, set()).update(missing)
            continue
        started = time.perf_counter()
        predictions[name] = np.asarray(method.predict(method.fit(members, context), members, context))
        log.seconds[name] = log.seconds.get(name, 0.0) + time.perf_counter() - started
    return predictions


def evaluate_set(dataset: str, setting: str, members: list[VersionRecord], truth: np.ndarray,
                 context: SetContext | None = None, log: MethodLog | None = None, workers: int = 1) -> list[dict]:
    """One row per method for one set of versions: its accuracy, against voting and against DeepFailGuard
    (bootstrap intervals drawn on ``workers`` threads; they do not depend on it)."""
    labels = np.stack([m.labels for m in members])
    context = context or SetContext(int(max(labels.max(), truth.max())) + 1)
    predictions = predict_set(members, context, log)
    voting_right = predictions["voting"] == truth
    dfg_right = predictions[DEEPFAILGUARD] == truth
    voting, dfg = accuracy(predictions["voting"], truth), accuracy(predictions[DEEPFAILGUARD], truth)
    upper = upper_limit(labels, truth)
    common = {
        "dataset": dataset, "n_versions": len(members), "models": "-".join(m.model for m in members),
        "bug_ids": "-".join(str(m.bug) for m in members), "setting": setting, "voting_accuracy": voting,
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
                   abs_improvement_high=high, mcnemar_p_dfg=float(p_dfg[index]))
        for k, (share, right_share) in enumerate(error_breakdown_of(wrong_versions, right, len(members))):
            row[f"e{k}"], row[f"acc_e{k}"] = share, right_share
        rows.append(row)
    return rows


def evaluate_grid(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray],
                  models: list[str], bugs: list[int], progress: bool = False,
                  log: MethodLog | None = None) -> list[dict]:
    """Rows for every set whose versions are all available (the others are left out)."""
    return evaluate_sets(dataset, records, truths, version_sets(models, bugs), progress, log)


def evaluate_sets(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray],
                  sets, progress: bool = False, log: MethodLog | None = None) -> list[dict]:
    """Rows for each ``(setting, ((model, bug), ...))`` whose versions are all available, members in the
    order given (the grid's sets, or the paper's published configurations); the others are left out.

    What the methods may know of the dataset (its number of classes, the region of competence of each test
    set) is computed once here; the methods a set cannot run are logged in ``log``."""
    import torch
    from threadpoolctl import threadpool_limits

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
            chosen = [records[member] for member in members]
            test_sets = {r.test_set for r in chosen}
            if len(test_sets) != 1:
                raise UsageError(f"{dataset}: versions {members} answer different test sets {sorted(test_sets)}")
            test_set = test_sets.pop()
            if test_set not in regions:
                regions[test_set] = region_of(dataset, records, test_set)
            rows.extend(evaluate_set(dataset, setting, chosen, truths[test_set],
                                     SetContext(num_classes, regions[test_set]), log, workers))
    return rows


def dataset_classes(records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> int:
    """The number of classes the dataset's files show: labels, truths and the softmax's width."""
    widths = [r.probabilities.shape[1] for r in records.values() if r.probabilities is not None]
    largest = [int(a.max()) for a in [*(r.labels for r in records.values()), *truths.values()] if a.size]
    return max([*widths, *(x + 1 for x in largest), 1])


def reference_bug(test_set: str) -> int:
    """The healthy weights' version on a test set: the healthy version, or the one answering a shifted test set."""
    return int(test_set[3:]) if test_set else FaultInjector.HEALTHY


def region_of(dataset: str, records: dict[tuple[str, int], VersionRecord], test_set: str):
    """The region of competence of ``test_set`` (``selection.dynamic``): the healthy weights' validation and test
    softmax outputs of every architecture that has both; None where none has."""
    from selection.dynamic import competence_region

    reference = [r for (_, bug), r in records.items() if bug == reference_bug(test_set)
                 and r.has("validation") and r.has("probabilities")]
    if not reference:
        return None
    return competence_region(np.concatenate([r.validation.probabilities for r in reference], axis=1),
                             np.concatenate([r.probabilities for r in reference], axis=1),
                             reference[0].validation.truth, tuple(r.model for r in reference))


def failure_prediction_rows(records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> list[dict]:
    """How well each registered score predicts its version's own test failures: AUROC and the area under the
    risk-coverage curve for every score, ECE and Brier score for those that are probabilities (empty where the
    version lacks what the score needs)."""
    rows = []
    for (model, bug), record in sorted(records.items(), key=lambda item: (item[0][1], item[0][0])):
        correct = record.labels == truths[record.test_set]
        row = {"dataset": record.dataset, "model": model, "bug_id": bug, "n_test": len(correct),
               "test_accuracy": float(correct.mean()), "val_acc": record.val_acc}
        available = [name for name, score in SCORES.items() if not unmet_needs(score.needs, [record])]
        for metric, function in (("auroc", auroc), ("aurc", aurc)):
            row.update({f"{metric}_{name}": function(record.score(name), correct) if name in available else None
                        for name in SCORES})
        probabilities = [name for name, score in SCORES.items() if score.probability]
        for metric, function in (("ece", expected_calibration_error), ("brier", brier_score)):
            row.update({f"{metric}_{name}": function(record.probability_score(name), correct) if name in available
                        else None for name in probabilities})
        rows.append(row)
    return rows


def summarize(rows) -> pd.DataFrame:
    """Per (dataset, number of versions, method): means over the configurations, and whether the method's
    difference from voting, and from DeepFailGuard, is more than noise.

    ``wins/losses/ties`` against voting and a two-sided sign test over the configurations (ties dropped);
    the mean accuracy and mean improvement with 95 % t-intervals; how many configurations differ from
    voting significantly (McNemar p < ``SIGNIFICANCE``) in either direction. The same counts against
    DeepFailGuard carry the suffix ``_dfg`` (``wins_over_dfg``, ``significant_wins_over_dfg``, ``sign_test_p_dfg``).
    """
    table = pd.DataFrame(rows)
    comparisons = [("voting", "voting_accuracy", "mcnemar_p", "", "")]
    if "dfg_accuracy" in table:
        comparisons.append(("dfg", "dfg_accuracy", "mcnemar_p_dfg", "_over_dfg", "_to_dfg"))
    counts = {}
    for baseline, column, p_column, over, to in comparisons:
        wins, losses = table["accuracy"] > table[column], table["accuracy"] < table[column]
        counts.update({f"wins_over_{baseline}": wins, f"losses_to_{baseline}": losses,
                       f"ties_with_{baseline}": ~(wins | losses)})
        if p_column in table:
            significant = table[p_column] < SIGNIFICANCE
            counts.update({f"significant_wins{over}": significant & wins,
                           f"significant_losses{to}": significant & losses})
    table = table.assign(**counts)
    groups = table.groupby(["dataset", "n_versions", "method"], sort=False)
    summary = groups.agg(
        configurations=("accuracy", "size"), accuracy=("accuracy", "mean"),
        voting_accuracy=("voting_accuracy", "mean"), upper_limit=("upper_limit", "mean"),
        abs_improvement=("abs_improvement", "mean"), **{name: (name, "sum") for name in counts}).reset_index()
    intervals = pd.DataFrame([_group_intervals(group) for _, group in groups])  # the order of agg's groups
    summary = pd.concat([summary, intervals], axis=1)
    for baseline, suffix in (("voting", ""), ("dfg", "_dfg")):
        if f"wins_over_{baseline}" in summary:
            summary[f"sign_test_p{suffix}"] = [sign_test(w, lo) for w, lo in zip(summary[f"wins_over_{baseline}"],
                                                                                  summary[f"losses_to_{baseline}"])]
    order = summary["method"].map(lambda method: list(METHODS).index(method) if method in METHODS else len(METHODS))
    return summary.assign(_order=order).sort_values(["dataset", "n_versions", "_order"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def _group_intervals(group: pd.DataFrame) -> dict:
    """95 % t-intervals of a group's mean accuracy and mean improvement over voting (across configurations)."""
    _, accuracy_low, accuracy_high = mean_interval(group["accuracy"].to_numpy(dtype=float))
    _, improvement_low, improvement_high = mean_interval(group["abs_improvement"].to_numpy(dtype=float))
    return {"accuracy_low": accuracy_low, "accuracy_high": accuracy_high,
            "abs_improvement_low": improvement_low, "abs_improvement_high": improvement_high}


def check_record_lengths(record: VersionRecord, truth: np.ndarray, where: str) -> None:
    n = len(truth)
    for what, array in (("labels", record.labels), ("distances", record.distances),
                        ("probabilities", record.probabilities), ("logits", record.logits)):
        if array is not None and len(array) != n:
            raise UsageError(f"{where}: {record.model} bug {record.bug} has {len(array)} {what} but the ground "
                             f"truth has {n} inputs; the cache is inconsistent, "
                             "rerun main_cache_test_distances.py --force")


# ---------------------------------------------------------------------------------------------
# records from the cache, and writing the results
# ---------------------------------------------------------------------------------------------

def load_cached_record(info_root, model_root, dataset: str, model: str, bug: int, num_classes: int | None = None,
                       deepfool: DeepFoolSettings = DEEPFOOL) -> VersionRecord | None:
    """A version's cached test answers (labels checked against ``num_classes`` where known) and failure model, in
    ``deepfool``'s distance mode; None when its cache does not exist."""
    answers = layout.read_version_cache(info_root, model, dataset, bug, num_classes, deepfool.mode)
    if answers is None:
        return None
    module = DeepFailGuardModule.of_version(None, info_root, model_root, dataset, model, bug, deepfool=deepfool)
    return VersionRecord(dataset, model, bug, answers.labels, answers.distances, module, layout.test_set_of(bug),
                         answers.probabilities, answers.logits,
                         layout.read_validation_outputs(info_root, model, dataset, bug, num_classes, deepfool.mode))


def evaluate_and_report(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                        output, progress: bool = False) -> None:
    """:func:`run_evaluation`, then the summary table and where the files went, on stdout."""
    summary = run_evaluation(records_by_dataset, truths_by_dataset, models, bugs_by_dataset, output,
                             progress=progress)
    print(format_summary(summary))
    print(f"results in {output}/{', '.join(layout.RESULT_FILES)}")


def run_evaluation(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                   output, sets_by_dataset: dict | None = None, progress: bool = False) -> pd.DataFrame:
    """Evaluate every dataset's version sets and write results, summary, failure prediction and figures.

    ``sets_by_dataset``: explicit ``(setting, members)`` per dataset (the paper's configurations) instead
    of the grid of ``models`` × ``bugs_by_dataset``. Everything is computed before anything is written,
    so a failure leaves no partial CSV.
    """
    evaluation = evaluate_datasets(records_by_dataset, truths_by_dataset, models, bugs_by_dataset, sets_by_dataset,
                                   progress)
    return write_evaluation(evaluation, records_by_dataset, truths_by_dataset, output)


@dataclass
class Evaluation:
    """Rows of every evaluated set, failure-prediction rows, and the datasets skipped (with why)."""

    rows: list[dict]
    failure_rows: list[dict]
    skipped: dict[str, str]


def evaluate_datasets(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                      sets_by_dataset: dict | None = None, progress: bool = False) -> Evaluation:
    """The rows of :func:`run_evaluation`, nothing written.

    A dataset that cannot be evaluated (fewer than two versions, no complete set) is skipped with a note
    on stderr (a partial release); only when no dataset can be evaluated is it an error.
    """
    rows, failure_rows, skipped = [], [], {}
    for dataset, records in records_by_dataset.items():
        if len(records) < 2:
            skipped[dataset] = (f"{dataset}: {len(records)} version(s) available; DeepFailGuard needs at least two "
                                "(train and cache more versions, or widen --models/--bugs)")
            continue
        for record in records.values():
            check_record_lengths(record, truths_by_dataset[dataset][record.test_set], dataset)
        widths = {f"{r.model} bug {r.bug}{where}": array.shape[1] for r in records.values()
                  for where, array in (("", r.probabilities), (" logits", r.logits)) if array is not None}
        if len(set(widths.values())) > 1:
            raise UsageError(f"{dataset}: the versions' softmax probabilities (and logits) have different numbers of "
                             f"classes {widths}; the cache is inconsistent, rerun main_cache_test_distances.py --force")
        check_validation_splits(dataset, records)
        log = MethodLog()
        if sets_by_dataset is not None:
            dataset_rows = evaluate_sets(dataset, records, truths_by_dataset[dataset], sets_by_dataset.get(dataset, []),
                                         progress, log)
        else:
            dataset_rows = evaluate_grid(dataset, records, truths_by_dataset[dataset], models, bugs_by_dataset[dataset],
                                         progress, log)
        if not dataset_rows:
            skipped[dataset] = f"{dataset}: no set of two or more versions with the same faults setting is complete"
            continue
        if log.unmet:
            print(f"note: {unmet_note(dataset, log.unmet)}", file=sys.stderr)
        rows.extend(dataset_rows)
        failure_rows.extend(failure_prediction_rows(records, truths_by_dataset[dataset]))
    if not rows:
        reasons = list(skipped.values()) or ["no dataset to evaluate"]
        more = f" (and {len(reasons) - 1} more dataset(s) with nothing to evaluate)" if len(reasons) > 1 else ""
        raise UsageError(reasons[0] + more)
    for reason in skipped.values():
        print(f"note: skipped {reason}", file=sys.stderr)
    return Evaluation(rows, failure_rows, skipped)


def check_validation_splits(dataset: str, records: dict[tuple[str, int], VersionRecord]) -> None:
    """The versions' kept validation outputs must answer one validation split, or no method can compare them."""
    kept = {f"{r.model} bug {r.bug}": r.validation.truth for r in records.values() if r.validation is not None}
    if not kept:
        return
    first_name, first = next(iter(kept.items()))
    for name, truth in kept.items():
        if not np.array_equal(truth, first):
            raise UsageError(f"{dataset}: the validation outputs of {name} and {first_name} answer different "
                             "validation splits (another --max-inputs?); rerun main_train_DeepFailGuard.py --force")


def unmet_note(dataset: str, unmet: dict[str, set]) -> str:
    """One line: which methods some sets could not run, for want of what, and which step writes it."""
    parts = []
    for need, (what, step) in NEEDS.items():
        methods = [name for name, needs in unmet.items() if need in needs]
        if methods:
            parts.append(f"{', '.join(methods)} need {what} ({step} writes them)")
    return f"{dataset}: skipped where missing: " + "; ".join(parts)


def write_evaluation(evaluation: Evaluation, records_by_dataset: dict, truths_by_dataset: dict, output) -> pd.DataFrame:
    """Results, summary, failure prediction and figures of an :class:`Evaluation`; returns the summary."""
    from plotting import save_method_comparison, save_reliability_diagram

    summary = summarize(evaluation.rows)
    atomic_write_table(layout.result_path(output, layout.RESULTS_CSV), pd.DataFrame(evaluation.rows), RESULT_COLUMNS)
    atomic_write_table(layout.result_path(output, layout.SUMMARY_CSV), summary)
    atomic_write_table(layout.result_path(output, layout.FAILURE_PREDICTION_CSV), pd.DataFrame(evaluation.failure_rows))
    for dataset, records in records_by_dataset.items():
        if dataset in evaluation.skipped:
            continue
        save_method_comparison(summary[summary["dataset"] == dataset].to_dict("records"),
                               layout.methods_figure_path(output, dataset), title=dataset)
        truths = truths_by_dataset[dataset]
        curves = {f"{model} bug {bug}": (record.probability_score(DEEPFAILGUARD),
                                         record.labels == truths[record.test_set])
                  for (model, bug), record in sorted(records.items(), key=lambda item: (item[0][1], item[0][0]))}
        save_reliability_diagram(curves, layout.reliability_figure_path(output, dataset),
                                 title=f"{dataset}: calibration of DeepFailGuard's P(correct) on the test set")
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a text table per dataset: one line per method, its mean accuracy per N and in how many
    version sets it beats voting; the number of sets in the header, the upper limit in the footer."""
    width = 20
    blocks = []
    for dataset, by_dataset in summary.groupby("dataset", sort=False):
        per_size = by_dataset.drop_duplicates("n_versions").set_index("n_versions")
        sizes = list(per_size.index)
        titles = [f"N={n} ({per_size.at[n, 'configurations']} sets)" for n in sizes]
        header = "".join(f"{title:>{width}}" for title in titles)
        lines = [f"{dataset:<16}{header}", f"{'method':<16}" + f"{'accuracy  >voting':>{width}}" * len(sizes)]
        for method, rows in by_dataset.groupby("method", sort=False):
            by_size = rows.set_index("n_versions")
            cells = []
            for n in sizes:
                if n not in by_size.index:
                    cells.append(" " * width)
                    continue
                wins = f"{by_size.at[n, 'wins_over_voting']}/{by_size.at[n, 'configurations']}"
                cells.append(f"{by_size.at[n, 'accuracy']:>{width - 8}.4f}{wins:>8}")
            lines.append(f"{method:<16}" + "".join(cells))
        lines.append(f"{'upper limit':<16}" + "".join(f"{per_size.at[n, 'upper_limit']:>{width - 8}.4f}{'':>8}"
                                                       for n in sizes))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
