"""Fault-tolerance evaluation: every selection method on every set of versions, as tidy rows.

A version contributes its test labels, DeepFool distances (and softmax probabilities where cached)
and its failure model. P(correct) and the ablation score are computed once per version and reused
by every set it belongs to; a set's methods are array operations over (versions × inputs).

Version sets: every combination of 2-5 distinct architectures, for each fault i: "all" versions
carry fault i (i = 0 is the healthy set), and "one" version carries fault i while the others are
healthy (each member in turn; not for 11 and 12, whose shifted test set is the whole system's).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import combinations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import FaultInjector
import layout
from DeepFailGuard import Assessment, DeepFailGuard, DeepFailGuardModule
from metrics import (
    accuracy,
    auroc,
    brier_score,
    error_breakdown,
    expected_calibration_error,
    improvements,
    lower_limit,
    majority_vote,
    mcnemar_exact,
    mean_interval,
    paired_difference_interval,
    sign_test,
    upper_limit,
)
from storage import atomic_write_table
from utils import UsageError

METHODS = ("dfg", "distance_only", "val_acc_only", "voting", "soft_voting", "max_softmax")
MAX_VERSIONS = 5
RESULT_COLUMNS = (["dataset", "n_versions", "models", "bug_ids", "setting", "method", "accuracy", "voting_accuracy",
                   "upper_limit", "lower_limit", "abs_improvement", "rel_improvement", "version_accuracies"]
                  + [f"e{k}" for k in range(MAX_VERSIONS + 1)] + [f"acc_e{k}" for k in range(MAX_VERSIONS + 1)]
                  + ["mcnemar_p", "abs_improvement_low", "abs_improvement_high"])
#: a configuration's difference from voting counts as significant below this McNemar p-value
SIGNIFICANCE = 0.05


@dataclass
class VersionRecord:
    """What one version answered on a test set, and its failure model."""

    dataset: str
    model: str
    bug: int
    labels: np.ndarray
    distances: np.ndarray
    module: DeepFailGuardModule
    test_set: str  # which ground truth the labels answer ("" or "bug11"/"bug12")
    probabilities: np.ndarray | None = None

    @cached_property
    def assessment(self) -> Assessment:
        """P(correct) and the ablation score of every test input: computed once, reused by every set."""
        return self.module.assess(self.distances)

    @property
    def confidence(self) -> np.ndarray:
        return self.assessment.confidence

    @property
    def margin(self) -> np.ndarray:
        return self.assessment.margin

    @property
    def val_acc(self) -> float:
        return self.module.val_acc

    def for_calibration(self) -> "VersionRecord":
        """This version with its score read as a probability. The paper's score (``--posterior paper``)
        exceeds 1 in its fallback (``log(1 + d)·a``): failure prediction and calibration see it clipped to
        [0, 1], decisions the raw score."""
        if ((self.confidence >= 0) & (self.confidence <= 1)).all():
            return self
        clipped = replace(self)
        clipped.__dict__["assessment"] = Assessment(np.clip(self.confidence, 0.0, 1.0), self.margin)
        return clipped


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


def evaluate_set(dataset: str, setting: str, members: list[VersionRecord], truth: np.ndarray) -> list[dict]:
    """One row per method for one set of versions."""
    labels = np.stack([m.labels for m in members])
    num_classes = int(max(labels.max(), truth.max())) + 1
    predictions = {
        "dfg": DeepFailGuard.select(np.stack([m.confidence for m in members]), labels)[0],
        "distance_only": DeepFailGuard.select(np.stack([m.margin for m in members]), labels)[0],
        "val_acc_only": labels[int(np.argmax([m.val_acc for m in members]))],
        "voting": majority_vote(labels, num_classes),
    }
    if all(m.probabilities is not None for m in members):
        probabilities = np.stack([m.probabilities for m in members])
        predictions["soft_voting"] = probabilities.mean(axis=0).argmax(axis=1)
        predictions["max_softmax"] = DeepFailGuard.select(probabilities.max(axis=2), labels)[0]
    voting = accuracy(predictions["voting"], truth)
    voting_right = predictions["voting"] == truth
    upper = upper_limit(labels, truth)
    common = {
        "dataset": dataset, "n_versions": len(members), "models": "-".join(m.model for m in members),
        "bug_ids": "-".join(str(m.bug) for m in members), "setting": setting, "voting_accuracy": voting,
        "upper_limit": upper, "lower_limit": lower_limit(labels, truth),
        "version_accuracies": "-".join(f"{accuracy(m.labels, truth):.4f}" for m in members),
    }
    rows = []
    for method in METHODS:
        if method not in predictions:
            continue
        method_accuracy = accuracy(predictions[method], truth)
        absolute, relative = improvements(method_accuracy, voting, upper)
        right = predictions[method] == truth
        low, high = paired_difference_interval(right, voting_right)
        row = dict(common, method=method, accuracy=method_accuracy, abs_improvement=absolute,
                   rel_improvement=relative, mcnemar_p=mcnemar_exact(right, voting_right),
                   abs_improvement_low=low, abs_improvement_high=high)
        for k, (share, right) in enumerate(error_breakdown(labels, truth, predictions[method])):
            row[f"e{k}"], row[f"acc_e{k}"] = share, right
        rows.append(row)
    return rows


def evaluate_grid(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray],
                  models: list[str], bugs: list[int], progress: bool = False) -> list[dict]:
    """Rows for every set whose versions are all available (the others are left out)."""
    return evaluate_sets(dataset, records, truths, version_sets(models, bugs), progress)


def evaluate_sets(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray],
                  sets, progress: bool = False) -> list[dict]:
    """Rows for each ``(setting, ((model, bug), ...))`` whose versions are all available, members in the
    order given (the grid's sets, or the paper's published configurations); the others are left out."""
    rows = []
    for setting, members in tqdm(sets, desc=f"{dataset} version sets", unit="set", disable=not progress,
                                 leave=False):
        if not all(member in records for member in members):
            continue
        chosen = [records[member] for member in members]
        test_sets = {r.test_set for r in chosen}
        if len(test_sets) != 1:
            raise UsageError(f"{dataset}: versions {members} answer different test sets {sorted(test_sets)}")
        rows.extend(evaluate_set(dataset, setting, chosen, truths[test_sets.pop()]))
    return rows


def failure_prediction_rows(records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> list[dict]:
    """How well each version's P(correct) predicts its own test failures (AUROC), against max softmax."""
    rows = []
    for (model, bug), record in sorted(records.items(), key=lambda item: (item[0][1], item[0][0])):
        correct = record.labels == truths[record.test_set]
        top_softmax = None if record.probabilities is None else record.probabilities.max(axis=1)
        rows.append({"dataset": record.dataset, "model": model, "bug_id": bug, "n_test": len(correct),
                     "test_accuracy": float(correct.mean()), "val_acc": record.val_acc,
                     "auroc_dfg": auroc(record.confidence, correct),
                     "auroc_distance": auroc(record.distances, correct),
                     "auroc_max_softmax": None if top_softmax is None else auroc(top_softmax, correct),
                     "ece_dfg": expected_calibration_error(record.confidence, correct),
                     "brier_dfg": brier_score(record.confidence, correct),
                     "ece_max_softmax": None if top_softmax is None else expected_calibration_error(top_softmax,
                                                                                                     correct),
                     "brier_max_softmax": None if top_softmax is None else brier_score(top_softmax, correct)})
    return rows


def summarize(rows) -> pd.DataFrame:
    """Per (dataset, number of versions, method): means over the configurations, and whether the method's
    difference from voting is more than noise.

    ``wins/losses/ties`` against voting and a two-sided sign test over the configurations (ties dropped);
    the mean accuracy and mean improvement with 95 % t-intervals; how many configurations differ from
    voting significantly (McNemar p < ``SIGNIFICANCE``) in either direction.
    """
    table = pd.DataFrame(rows)
    table = table.assign(wins_over_voting=table["accuracy"] > table["voting_accuracy"],
                         losses_to_voting=table["accuracy"] < table["voting_accuracy"])
    table = table.assign(ties_with_voting=~(table["wins_over_voting"] | table["losses_to_voting"]))
    if "mcnemar_p" in table:
        significant = table["mcnemar_p"] < SIGNIFICANCE
        table = table.assign(significant_wins=significant & table["wins_over_voting"],
                             significant_losses=significant & table["losses_to_voting"])
    groups = table.groupby(["dataset", "n_versions", "method"], sort=False)
    summary = groups.agg(
        configurations=("accuracy", "size"), accuracy=("accuracy", "mean"),
        voting_accuracy=("voting_accuracy", "mean"), upper_limit=("upper_limit", "mean"),
        abs_improvement=("abs_improvement", "mean"), wins_over_voting=("wins_over_voting", "sum"),
        losses_to_voting=("losses_to_voting", "sum"), ties_with_voting=("ties_with_voting", "sum"),
        **({"significant_wins": ("significant_wins", "sum"), "significant_losses": ("significant_losses", "sum")}
           if "mcnemar_p" in table else {})).reset_index()
    intervals = pd.DataFrame([_group_intervals(group) for _, group in groups])  # the order of agg's groups
    summary = pd.concat([summary, intervals], axis=1)
    summary["sign_test_p"] = [sign_test(w, lo) for w, lo in zip(summary["wins_over_voting"],
                                                                summary["losses_to_voting"])]
    order = summary["method"].map(METHODS.index)
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
                        ("probabilities", record.probabilities)):
        if array is not None and len(array) != n:
            raise UsageError(f"{where}: {record.model} bug {record.bug} has {len(array)} {what} but the ground "
                             f"truth has {n} inputs; the cache is inconsistent, "
                             "rerun main_cache_test_distances.py --force")


# ---------------------------------------------------------------------------------------------
# records from the cache, and writing the results
# ---------------------------------------------------------------------------------------------

def load_cached_record(info_root, model_root, dataset: str, model: str, bug: int,
                       num_classes: int | None = None) -> VersionRecord | None:
    """A version's cached test answers (labels checked against ``num_classes`` where known) and failure model;
    None when its cache does not exist."""
    answers = layout.read_version_cache(info_root, model, dataset, bug, num_classes)
    if answers is None:
        return None
    module = DeepFailGuardModule.of_version(None, info_root, model_root, dataset, model, bug)
    return VersionRecord(dataset, model, bug, answers.labels, answers.distances, module, layout.test_set_of(bug),
                         answers.probabilities)


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
        widths = {f"{r.model} bug {r.bug}": r.probabilities.shape[1] for r in records.values()
                  if r.probabilities is not None}
        if len(set(widths.values())) > 1:
            raise UsageError(f"{dataset}: the versions' softmax probabilities have different numbers of classes "
                             f"{widths}; the cache is inconsistent, rerun main_cache_test_distances.py --force")
        if sets_by_dataset is not None:
            dataset_rows = evaluate_sets(dataset, records, truths_by_dataset[dataset], sets_by_dataset.get(dataset, []),
                                         progress)
        else:
            dataset_rows = evaluate_grid(dataset, records, truths_by_dataset[dataset], models, bugs_by_dataset[dataset],
                                         progress)
        if not dataset_rows:
            skipped[dataset] = f"{dataset}: no set of two or more versions with the same faults setting is complete"
            continue
        rows.extend(dataset_rows)
        failure_rows.extend(failure_prediction_rows({key: r.for_calibration() for key, r in records.items()},
                                                    truths_by_dataset[dataset]))
    if not rows:
        reasons = list(skipped.values()) or ["no dataset to evaluate"]
        more = f" (and {len(reasons) - 1} more dataset(s) with nothing to evaluate)" if len(reasons) > 1 else ""
        raise UsageError(reasons[0] + more)
    for reason in skipped.values():
        print(f"note: skipped {reason}", file=sys.stderr)
    return Evaluation(rows, failure_rows, skipped)


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
        curves = {f"{model} bug {bug}": (record.for_calibration().confidence, record.labels == truths[record.test_set])
                  for (model, bug), record in sorted(records.items(), key=lambda item: (item[0][1], item[0][0]))}
        save_reliability_diagram(curves, layout.reliability_figure_path(output, dataset),
                                 title=f"{dataset}: calibration of DeepFailGuard's P(correct) on the test set")
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a text table: one line per dataset and N, methods side by side."""
    methods = [m for m in METHODS if (summary["method"] == m).any()]
    header = (f"{'dataset':<10} {'N':>2} {'sets':>5} " + " ".join(f"{m:>13}" for m in methods)
              + f" {'upper':>7} {'dfg>vote':>9}")
    lines = [header]
    for (dataset, n_versions), group in summary.groupby(["dataset", "n_versions"], sort=False):
        by_method = group.set_index("method")
        first = group.iloc[0]
        cells = " ".join(f"{by_method.at[m, 'accuracy']:>13.4f}" if m in by_method.index else f"{'':>13}"
                         for m in methods)
        wins = (f"{by_method.at['dfg', 'wins_over_voting']}/{by_method.at['dfg', 'configurations']}"
                if "dfg" in by_method.index else "")
        lines.append(f"{dataset:<10} {n_versions:>2} {first['configurations']:>5} {cells} "
                     f"{first['upper_limit']:>7.4f} {wins:>9}")
    return "\n".join(lines)
