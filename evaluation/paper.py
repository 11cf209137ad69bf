"""Reproducing the paper: its published configurations, its arithmetic, and how our figures compare.

- ``--configurations paper`` (implied by ``--preset paper``) evaluates exactly the configurations listed
  in ``mymodel/paper_results.csv`` (members in their published order) and writes
  ``{output}/paper_comparison.csv``: the paper's DFG (or ablation), voting and upper-limit accuracy
  beside ours, the differences (ours − paper), and on how many inputs our default posterior and the
  paper's choose different versions.
- ``--posterior paper`` scores distances with the paper's arithmetic (:func:`paper_assessment`) instead
  of the log-space posterior, so that DeepFailGuard's decisions are the paper code's, digit for digit.

The paper's arithmetic, per input ``d`` of a version with validation accuracy ``a``: ``c = f_c(d)·a``,
``w = f_w(d)·(1 − a)`` with SciPy's ``gaussian_kde`` densities evaluated one input per call; where
``c + w == 0`` (both densities underflow, far from every validation distance) ``c = log(1 + d)·a`` and
``w = 1 − c``; the score is ``c / (c + w)`` (so in the fallback ``log(1 + d)·a``, which exceeds 1 for
``d > e^(1/a) − 1`` and then beats every ordinary score); the version with the highest score wins, the
first on ties. Its "distance only" ablation scores ``f_c(d) − f_w(d)``. Two details decide the last
digit: SciPy rounds a one-point call differently from a batched one (a single query is whitened by a
division, a batch by a multiplication with the reciprocal), and ``exp(logpdf)`` is not SciPy's ``pdf``
(it agrees to ~1e-13 but underflows differently: SciPy sums terms that each underflow to 0 before its
normalisation is applied). So the densities here come from SciPy itself, one call per distinct distance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import gaussian_kde

import evaluation
from DatasetManager import paper_datasets
from DeepFailGuard import Assessment, DeepFailGuard
from storage import layout
from storage.caches import check_distances
from storage.files import atomic_write_table
from utils import UsageError

#: the published table's predictor -> the method of ours it reports
PREDICTOR_METHODS = {"full": "dfg", "Distance_Only": "distance_only", "Val_Acc_Only": "val_acc_only"}
PUBLISHED_COLUMNS = ("predictor", "dataset", "n_versions", "models", "bug_ids", "dfg_acc", "voting_acc", "upper_limit")
#: the paper prints four decimals: a figure agrees when it rounds to the published one
AGREEMENT = 5e-5
NOT_IN_CACHE = "not in cache"
COMPARISON_COLUMNS = ("predictor", "method", "dataset", "n_versions", "models", "bug_ids", "status", "missing",
                      "posterior", "paper_accuracy", "our_accuracy", "accuracy_diff", "paper_voting", "our_voting",
                      "voting_diff", "paper_upper_limit", "our_upper_limit", "upper_limit_diff",
                      "decisions_differing")
#: (label, our column, the paper's column, difference) of the three figures compared
FIGURES = (("method", "our_accuracy", "paper_accuracy", "accuracy_diff"),
           ("voting", "our_voting", "paper_voting", "voting_diff"),
           ("upper", "our_upper_limit", "paper_upper_limit", "upper_limit_diff"))


# ---------------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------------

def configurations_mode(args) -> str:
    """``grid`` or ``paper``: ``--preset paper`` means the published configurations unless told otherwise."""
    return args.configurations or ("paper" if args.preset == "paper" else "grid")


def posterior_rule(name: str):
    """The ``DeepFailGuardModule.posterior_rule`` a ``--posterior`` choice stands for."""
    return {"log": None, "paper": paper_assessment}[name]


# ---------------------------------------------------------------------------------------------
# the paper's arithmetic
# ---------------------------------------------------------------------------------------------

def scipy_kde(kde):
    """The ``scipy.stats.gaussian_kde`` a :class:`kde.GaussianKDE` stands for (None for the empty density).

    Built from the same state a pickle restores, with SciPy's own kernel width (``cho_cov``) where the KDE
    came from the paper's pickle: ``sqrt(covariance)`` differs from it in the last bit about one time in four.
    """
    if kde.n == 0:
        return None
    width = getattr(kde, "scipy_cho_cov", kde.bandwidth)
    reference = gaussian_kde.__new__(gaussian_kde)
    reference.d, reference.n = 1, kde.n
    reference.dataset = kde.points[None, :].copy()
    reference._weights = kde.weights.copy()
    reference._neff = 1.0 / float(np.sum(kde.weights ** 2))
    reference.cho_cov = np.array([[width]], dtype=np.float64)
    reference.covariance = reference.cho_cov ** 2
    return reference


def paper_densities(kde, distances: np.ndarray) -> np.ndarray:
    """SciPy's density at every distance, one call per distinct distance as the paper's loop makes them."""
    reference = scipy_kde(kde)
    if reference is None:
        return np.zeros(len(distances))
    values, inverse = np.unique(distances, return_inverse=True)
    densities = np.array([reference(value)[0] for value in values], dtype=np.float64)
    return densities[inverse.reshape(-1)]


def paper_posterior(correct_density: np.ndarray, wrong_density: np.ndarray, distances: np.ndarray,
                    val_acc: float) -> np.ndarray:
    """The paper's score ``c / (c + w)`` from the densities, with its fallback where ``c + w == 0``."""
    val_acc = float(val_acc)
    correct = correct_density * val_acc
    wrong = wrong_density * (1 - val_acc)
    for i in np.flatnonzero(correct + wrong == 0):  # scalar arithmetic, as the paper's
        c, w = correct[i], wrong[i]
        if c == 0:
            c = np.log(1 + distances[i]) * val_acc
        if w == 0:
            w = 1 - c
        correct[i], wrong[i] = c, w
    return correct / (correct + wrong)


def paper_assessment(module, distances) -> Assessment:
    """A ``DeepFailGuardModule.posterior_rule``: the paper's score and its distance-only margin."""
    distances = check_distances(distances, module.name)
    correct_density = paper_densities(module.correct_kde, distances)
    wrong_density = paper_densities(module.wrong_kde, distances)
    return Assessment(paper_posterior(correct_density, wrong_density, distances, module.val_acc),
                      correct_density - wrong_density)


# ---------------------------------------------------------------------------------------------
# the published configurations
# ---------------------------------------------------------------------------------------------

def read_published(path=None) -> pd.DataFrame:
    """The published table, checked, with a ``members`` column: ``((model, bug), ...)`` in version order."""
    path = Path(path or layout.PAPER_RESULTS)
    if not path.is_file():
        raise UsageError(f"missing published table {path}")
    try:
        table = pd.read_csv(path, dtype={"predictor": str, "dataset": str, "models": str, "bug_ids": str})
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read the published table {path} ({exc})") from exc
    missing = [column for column in PUBLISHED_COLUMNS if column not in table]
    if missing:
        raise UsageError(f"{path} is not in paper_results.csv's format: no column(s) {', '.join(missing)}")
    unknown = sorted(set(table["predictor"]) - set(PREDICTOR_METHODS))
    if unknown:
        raise UsageError(f"{path}: unknown predictor(s) {unknown}; expected {', '.join(PREDICTOR_METHODS)}")
    members = []
    for number, row in enumerate(table.itertuples(index=False), start=2):
        try:
            models = [m.lower() for m in str(row.models).split("-")]
            bugs = [int(b) for b in str(row.bug_ids).split("-")]
            if len(models) != len(bugs) or len(models) != int(row.n_versions) or len(models) < 2:
                raise ValueError("models, bug_ids and n_versions disagree")
            for column in ("dfg_acc", "voting_acc", "upper_limit"):
                float(getattr(row, column))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path}, line {number}: {exc}") from exc
        members.append(tuple(zip(models, bugs)))
    table = table.assign(dataset=table["dataset"].str.upper(), members=members)
    return table.astype({"dfg_acc": float, "voting_acc": float, "upper_limit": float}).reset_index(drop=True)


def select_published(table: pd.DataFrame, grid) -> pd.DataFrame:
    """The published rows within the command line's datasets, architectures and faults."""
    models, bugs = set(grid.models), set(grid.bugs)
    keep = table["dataset"].isin(grid.datasets) & table["members"].map(
        lambda members: all(model in models and bug in bugs for model, bug in members))
    selected = table[keep].reset_index(drop=True)
    if selected.empty:
        raise UsageError(f"no published configuration among datasets {', '.join(grid.datasets)} with the chosen "
                         f"--models/--bugs (the paper's are {', '.join(sorted(paper_datasets()))}: try --preset paper)")
    return selected


def setting_of(bugs) -> str:
    """The fault setting of a configuration, as the grid names it."""
    bugs = list(bugs)
    if not any(bugs):
        return "healthy"
    if len(set(bugs)) == 1:
        return "all"
    if bugs[0] and not any(bugs[1:]):
        return "one"
    return "mixed"


def sets_by_dataset(published: pd.DataFrame) -> dict[str, list]:
    """Each dataset's distinct configurations as ``(setting, members)``, in the table's order."""
    sets: dict[str, dict] = {}
    for dataset, members in zip(published["dataset"], published["members"]):
        sets.setdefault(dataset, {})[(setting_of(b for _, b in members), members)] = None
    return {dataset: list(configurations) for dataset, configurations in sets.items()}


def versions_needed(published: pd.DataFrame) -> dict[str, list[tuple[str, int]]]:
    """The ``(model, bug)`` versions each dataset's configurations use."""
    needed: dict[str, dict] = {}
    for dataset, members in zip(published["dataset"], published["members"]):
        needed.setdefault(dataset, {}).update(dict.fromkeys(members))
    return {dataset: list(versions) for dataset, versions in needed.items()}


# ---------------------------------------------------------------------------------------------
# evaluating them and comparing
# ---------------------------------------------------------------------------------------------

def evaluate_and_compare(published: pd.DataFrame, records_by_dataset: dict, truths_by_dataset: dict, output,
                         posterior: str = "log", progress: bool = False) -> pd.DataFrame:
    """Evaluate the published configurations, compare, write every table; print both summaries.

    Everything is computed before anything is written. Returns the comparison.
    """
    if not any(all(member in records_by_dataset.get(dataset, {}) for member in members)
               for dataset, members in zip(published["dataset"], published["members"])):
        raise UsageError(f"none of the {len(published)} published configurations has all its versions in the "
                         "cache (distances and dnn_labels in test_information_cached/, KDEs in kde_results/); "
                         "check --info-root")
    evaluated = evaluation.evaluate_datasets(records_by_dataset, truths_by_dataset, [], {},
                                             sets_by_dataset(published), progress)
    comparison = compare(published, evaluated.rows, records_by_dataset, posterior)
    summary = evaluation.write_evaluation(evaluated, records_by_dataset, truths_by_dataset, output)
    atomic_write_table(layout.result_path(output, layout.PAPER_COMPARISON_CSV), comparison, COMPARISON_COLUMNS)
    print(evaluation.format_summary(summary))
    print(evaluation.format_takeaway(summary))
    print(format_comparison(comparison))
    print(evaluation.format_whereabouts(output, (*layout.RESULT_FILES, layout.PAPER_COMPARISON_CSV)))
    return comparison


def compare(published: pd.DataFrame, rows: list[dict], records_by_dataset: dict,
            posterior: str = "log") -> pd.DataFrame:
    """One row per published row: its figures, ours (from the evaluation's ``rows``), the differences."""
    ours = {(r["dataset"], r["models"], r["bug_ids"], r["method"]): r for r in rows}
    confidences: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    differing: dict[tuple, int] = {}
    out = []
    for row in published.itertuples(index=False):
        method = PREDICTOR_METHODS[row.predictor]
        models = "-".join(model for model, _ in row.members)
        bug_ids = "-".join(str(bug) for _, bug in row.members)
        records = records_by_dataset.get(row.dataset, {})
        base = {"predictor": row.predictor, "method": method, "dataset": row.dataset, "n_versions": len(row.members),
                "models": models, "bug_ids": bug_ids, "posterior": posterior, "paper_accuracy": row.dfg_acc,
                "paper_voting": row.voting_acc, "paper_upper_limit": row.upper_limit}
        mine = ours.get((row.dataset, models, bug_ids, method))
        if mine is None:
            missing = [f"{model}/bug{bug}" for model, bug in row.members if (model, bug) not in records]
            out.append(dict(base, status=NOT_IN_CACHE, missing=" ".join(missing)))
            continue
        key = (row.dataset, row.members)
        if key not in differing:
            differing[key] = decisions_differing([records[member] for member in row.members], confidences)
        out.append(dict(base, status="ok", our_accuracy=mine["accuracy"], our_voting=mine["voting_accuracy"],
                        our_upper_limit=mine["upper_limit"], accuracy_diff=mine["accuracy"] - row.dfg_acc,
                        voting_diff=mine["voting_accuracy"] - row.voting_acc,
                        upper_limit_diff=mine["upper_limit"] - row.upper_limit, decisions_differing=differing[key]))
    table = pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))
    return table.astype({"decisions_differing": "Int64"})  # a count, empty where not evaluated


def decisions_differing(records: list, cache: dict | None = None) -> int:
    """On how many inputs the log-space posterior and the paper's choose different versions."""
    cache = {} if cache is None else cache
    for record in records:
        if id(record) not in cache:
            cache[id(record)] = both_confidences(record)
    labels = np.stack([record.labels for record in records])
    log_choice = DeepFailGuard.select(np.stack([cache[id(r)][0] for r in records]), labels)[1]
    paper_choice = DeepFailGuard.select(np.stack([cache[id(r)][1] for r in records]), labels)[1]
    return int((log_choice != paper_choice).sum())


def both_confidences(record) -> tuple[np.ndarray, np.ndarray]:
    """A version's P(correct) under the log-space posterior and under the paper's (the active one reused)."""
    rule = record.module.posterior_rule
    log = record.confidence if rule is None else record.module.log_assessment(record.distances).confidence
    paper = (record.confidence if rule is paper_assessment
             else paper_assessment(record.module, record.distances).confidence)
    return log, paper


def format_comparison(comparison: pd.DataFrame) -> str:
    """Agreement per predictor (to the paper's four decimals), the largest disagreements, and a note when
    voting or the upper limit (which no failure model affects) disagree."""
    ok = comparison[comparison["status"] == "ok"]
    absent = len(comparison) - len(ok)
    posterior = comparison["posterior"].iloc[0] if len(comparison) else ""
    lines = [f"paper comparison ({posterior} posterior): {len(comparison)} published rows, {len(ok)} evaluated"
             + (f", {absent} {NOT_IN_CACHE}" if absent else ""),
             f"{'predictor':<14} {'method':<14} {'rows':>5} {'method=':>8} {'voting=':>8} {'upper=':>8} "
             f"{'differing':>10}"]
    for predictor, method in PREDICTOR_METHODS.items():
        group = ok[ok["predictor"] == predictor]
        if not len(comparison[comparison["predictor"] == predictor]):
            continue
        agree = [f"{int((group[diff].abs() < AGREEMENT).sum())}/{len(group)}" for _, _, _, diff in FIGURES]
        lines.append(f"{predictor:<14} {method:<14} {len(group):>5} " + " ".join(f"{a:>8}" for a in agree)
                     + f" {int(group['decisions_differing'].sum()):>10}")
    lines.append("(= : agrees to 4 decimals, |ours - paper| < 5e-5; differing: inputs on which the log-space and "
                 "the paper's posterior choose different versions, summed)")
    worst = ok.assign(_gap=ok[[f[3] for f in FIGURES]].abs().max(axis=1))
    worst = worst[worst["_gap"] >= AGREEMENT].sort_values("_gap", ascending=False, kind="stable").head(5)
    lines.append("largest disagreements (ours - paper):" + ("" if len(worst) else " none"))
    for row in worst.itertuples(index=False):
        figures = ", ".join(f"{label} {getattr(row, our):.4f} vs {getattr(row, paper):.4f} ({getattr(row, diff):+.4f})"
                            for label, our, paper, diff in FIGURES)
        lines.append(f"  {row.predictor} {row.dataset} {row.models} {row.bug_ids}: {figures}")
    for label, diff in (("voting", "voting_diff"), ("the upper limit", "upper_limit_diff")):
        disagreeing = len(ok[ok[diff].abs() >= AGREEMENT].drop_duplicates(["dataset", "models", "bug_ids"]))
        if disagreeing:
            lines.append(f"note: {label} disagrees on {disagreeing} configuration(s): a different cache than the "
                         "paper's (no failure model affects it)")
    return "\n".join(lines)


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)
