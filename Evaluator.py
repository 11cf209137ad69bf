"""Fault-tolerance evaluation: every selection method on every set of versions, as tidy rows.

A version contributes its test labels, DeepFool distances (and softmax probabilities where cached)
and its failure model. P(correct) and the ablation score are computed once per version and reused
by every set it belongs to; a set's methods are array operations over (versions × inputs).

Version sets: every combination of 2-5 distinct architectures, for each fault i: "all" versions
carry fault i (i = 0 is the healthy set), and "one" version carries fault i while the others are
healthy (each member in turn; not for 11 and 12, whose shifted test set is the whole system's).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path

import numpy as np

from DeepFailGuard import DeepFailGuard, DeepFailGuardModule, check_distances, density_margin, posterior
from utils import (
    UsageError,
    accuracy,
    atomic_write_csv,
    auroc,
    cache_path,
    error_breakdown,
    find_kde_files,
    ground_truth_path,
    improvements,
    lower_limit,
    majority_vote,
    metadata_path,
    read_json,
    upper_limit,
    version_key,
)

METHODS = ("dfg", "distance_only", "val_acc_only", "voting", "soft_voting", "max_softmax")
MAX_VERSIONS = 5
SHIFTED_TEST_FAULTS = (11, 12)
RESULT_COLUMNS = (["dataset", "n_versions", "models", "bug_ids", "setting", "method", "accuracy", "voting_accuracy",
                   "upper_limit", "lower_limit", "abs_improvement", "rel_improvement", "version_accuracies"]
                  + [f"e{k}" for k in range(MAX_VERSIONS + 1)] + [f"acc_e{k}" for k in range(MAX_VERSIONS + 1)])


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
    def log_densities(self) -> tuple[np.ndarray, np.ndarray]:
        """log f_c(d), log f_w(d) of every test input: the one expensive step, done once per version."""
        return self.module.log_densities(self.distances)

    @cached_property
    def confidence(self) -> np.ndarray:
        return posterior(*self.log_densities, self.val_acc)

    @cached_property
    def margin(self) -> np.ndarray:
        return density_margin(*self.log_densities)

    @property
    def val_acc(self) -> float:
        return self.module.val_acc


def test_set_of(bug: int) -> str:
    return f"bug{bug}" if bug in SHIFTED_TEST_FAULTS else ""


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
                if bug not in SHIFTED_TEST_FAULTS:
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
        row = dict(common, method=method, accuracy=method_accuracy, abs_improvement=absolute,
                   rel_improvement=relative)
        for k, (share, right) in enumerate(error_breakdown(labels, truth, predictions[method])):
            row[f"e{k}"], row[f"acc_e{k}"] = share, right
        rows.append(row)
    return rows


def evaluate_grid(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray],
                  models: list[str], bugs: list[int]) -> tuple[list[dict], int]:
    """Rows for every set whose versions are all available; also the number of sets skipped."""
    rows, skipped = [], 0
    for setting, members in version_sets(models, bugs):
        if not all(member in records for member in members):
            skipped += 1
            continue
        chosen = [records[member] for member in members]
        test_sets = {r.test_set for r in chosen}
        if len(test_sets) != 1:
            raise UsageError(f"{dataset}: versions {members} answer different test sets {sorted(test_sets)}")
        rows.extend(evaluate_set(dataset, setting, chosen, truths[test_sets.pop()]))
    return rows, skipped


def failure_prediction_rows(records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> list[dict]:
    """How well each version's P(correct) predicts its own test failures (AUROC), against max softmax."""
    rows = []
    for (model, bug), record in sorted(records.items(), key=lambda item: (item[0][1], item[0][0])):
        correct = record.labels == truths[record.test_set]
        softmax = None if record.probabilities is None else auroc(record.probabilities.max(axis=1), correct)
        rows.append({"dataset": record.dataset, "model": model, "bug_id": bug, "n_test": len(correct),
                     "test_accuracy": float(correct.mean()), "val_acc": record.val_acc,
                     "auroc_dfg": auroc(record.confidence, correct),
                     "auroc_distance": auroc(record.distances, correct), "auroc_max_softmax": softmax})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Means per (dataset, number of versions, method), with how often the method beats voting."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["n_versions"], row["method"]), []).append(row)
    summary = []
    for (dataset, n_versions, method), members in sorted(groups.items(),
                                                         key=lambda g: (g[0][0], g[0][1], METHODS.index(g[0][2]))):
        summary.append({
            "dataset": dataset, "n_versions": n_versions, "method": method, "configurations": len(members),
            "accuracy": float(np.mean([r["accuracy"] for r in members])),
            "voting_accuracy": float(np.mean([r["voting_accuracy"] for r in members])),
            "upper_limit": float(np.mean([r["upper_limit"] for r in members])),
            "abs_improvement": float(np.mean([r["abs_improvement"] for r in members])),
            "wins_over_voting": sum(r["accuracy"] > r["voting_accuracy"] for r in members),
            "losses_to_voting": sum(r["accuracy"] < r["voting_accuracy"] for r in members),
        })
    return summary


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

def validation_accuracy(model_root, dataset: str, model: str, bug: int) -> float:
    """From the version's metadata file, else the paper's published figure for its released versions."""
    from ModelManager import paper_accuracy

    path = metadata_path(model_root, model, dataset, bug)
    if not path.is_file():
        value = paper_accuracy(dataset, model, bug)["val_acc"]
        if value is None:
            raise UsageError(f"no validation accuracy for {version_key(model, dataset, bug)}: no {path} and not one of "
                             "the paper's released versions; train it with main_train_model.py")
        return float(value)
    value = read_json(path).get("val_acc")
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"{path}: val_acc {value!r} is not a fraction in [0, 1]; measure it again with "
                         f"main_train_model.py --mode evaluate --datasets {dataset} --models {model} --bugs {bug}")
    return fraction


def load_cached_record(info_root, model_root, dataset: str, model: str, bug: int) -> VersionRecord | None:
    """A version's cached test answers and failure model; None when its cache does not exist."""
    distance_file = cache_path(info_root, dataset, model, bug, "distances")
    label_file = cache_path(info_root, dataset, model, bug, "dnn_labels")
    if not (distance_file.is_file() and label_file.is_file()):
        return None
    probability_file = cache_path(info_root, dataset, model, bug, "probabilities")
    distances = check_distances(load_array(distance_file), str(distance_file))
    if distances.ndim != 1:
        raise UsageError(f"{distance_file}: expected a 1-D array of distances, got shape {distances.shape}; "
                         "rerun main_cache_test_distances.py --force")
    labels = check_labels(load_array(label_file), label_file)
    probabilities = load_array(probability_file) if probability_file.is_file() else None
    if probabilities is not None and (probabilities.ndim != 2 or not np.isfinite(probabilities).all()):
        raise UsageError(f"{probability_file}: expected a finite (inputs × classes) array of softmax probabilities; "
                         "rerun main_cache_test_distances.py --force")
    correct_kde, wrong_kde = find_kde_files(info_root, model, dataset, bug)
    module = DeepFailGuardModule(None, correct_kde, wrong_kde, validation_accuracy(model_root, dataset, model, bug),
                                 name=version_key(model, dataset, bug))
    return VersionRecord(dataset, model, bug, labels, distances, module, test_set_of(bug), probabilities)


def check_labels(labels: np.ndarray, path) -> np.ndarray:
    """Class indices: 1-D, integer, non-negative (a negative one would corrupt the vote counts)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise UsageError(f"{path}: expected a 1-D array of non-negative integer labels, got {labels.dtype} "
                         f"{labels.shape}; rerun main_cache_test_distances.py --force")
    return labels


def load_array(path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"cannot read {path} ({exc}); rerun main_cache_test_distances.py --force") from exc


def load_truth(info_root, dataset: str, test_set: str) -> np.ndarray:
    path = ground_truth_path(info_root, dataset, int(test_set[3:]) if test_set else 0)
    if not path.is_file():
        raise UsageError(f"missing ground truth {path}; run main_cache_test_distances.py first")
    return check_labels(load_array(path), path)


def evaluate_and_report(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                        output) -> None:
    """:func:`run_evaluation`, then the summary table and where the files went, on stdout."""
    summary = run_evaluation(records_by_dataset, truths_by_dataset, models, bugs_by_dataset, output)
    print(format_summary(summary))
    print(f"results in {output}/results.csv, summary.csv, failure_prediction.csv")


def run_evaluation(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                   output) -> list[dict]:
    """Evaluate every dataset's version sets and write results, summary, failure prediction and figures.

    Everything is computed before anything is written, so a failure leaves no partial CSV.
    """
    from plotting import save_method_comparison

    rows, failure_rows = [], []
    for dataset, records in records_by_dataset.items():
        if len(records) < 2:
            raise UsageError(f"{dataset}: {len(records)} version(s) available; DeepFailGuard needs at least two "
                             "(train and cache more versions, or widen --models/--bugs)")
        for record in records.values():
            check_record_lengths(record, truths_by_dataset[dataset][record.test_set], dataset)
        widths = {f"{r.model} bug {r.bug}": r.probabilities.shape[1] for r in records.values()
                  if r.probabilities is not None}
        if len(set(widths.values())) > 1:
            raise UsageError(f"{dataset}: the versions' softmax probabilities have different numbers of classes "
                             f"{widths}; the cache is inconsistent, rerun main_cache_test_distances.py --force")
        dataset_rows, _ = evaluate_grid(dataset, records, truths_by_dataset[dataset], models,
                                        bugs_by_dataset[dataset])
        if not dataset_rows:
            raise UsageError(f"{dataset}: no set of two or more versions with the same faults setting is complete")
        rows.extend(dataset_rows)
        failure_rows.extend(failure_prediction_rows(records, truths_by_dataset[dataset]))
    summary = summarize(rows)
    output = Path(output)
    atomic_write_csv(output / "results.csv", rows, RESULT_COLUMNS)
    atomic_write_csv(output / "summary.csv", summary)
    atomic_write_csv(output / "failure_prediction.csv", failure_rows)
    for dataset in records_by_dataset:
        save_method_comparison([r for r in summary if r["dataset"] == dataset],
                               output / "figures" / f"methods_{dataset}.png", title=dataset)
    return summary


def format_summary(summary: list[dict]) -> str:
    """The summary as a text table: one line per dataset and N, methods side by side."""
    methods = [m for m in METHODS if any(r["method"] == m for r in summary)]
    header = (f"{'dataset':<10} {'N':>2} {'sets':>5} " + " ".join(f"{m:>13}" for m in methods)
              + f" {'upper':>7} {'dfg>vote':>9}")
    lines = [header]
    groups: dict[tuple, dict] = {}
    for row in summary:
        groups.setdefault((row["dataset"], row["n_versions"]), {})[row["method"]] = row
    for (dataset, n_versions), by_method in groups.items():
        first = next(iter(by_method.values()))
        cells = " ".join(f"{by_method[m]['accuracy']:>13.4f}" if m in by_method else f"{'':>13}" for m in methods)
        dfg = by_method.get("dfg")
        wins = f"{dfg['wins_over_voting']}/{dfg['configurations']}" if dfg else ""
        lines.append(f"{dataset:<10} {n_versions:>2} {first['configurations']:>5} {cells} "
                     f"{first['upper_limit']:>7.4f} {wins:>9}")
    return "\n".join(lines)
