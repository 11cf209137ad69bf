"""Report: what the evaluation computed, as tables (results, summary with its statistics, failure prediction),
``methods.json`` (what produced them), figures, and the text summary the scripts print."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from evaluation.compute import DEEPFAILGUARD, MAX_VERSIONS, NO_SHIFT, Evaluation
from evaluation.figures import (
    save_accuracy_compute,
    save_method_comparison,
    save_reliability_diagram,
    save_risk_coverage,
)
from evaluation.metrics import mean_interval, sign_test
from evaluation.records import canonical_key
from evaluation.selective import COLUMNS as SELECTIVE_COLUMNS
from selection import METHODS, SCORES, describe, family_of, unmet_needs
from storage import layout
from storage.files import atomic_write_json, atomic_write_table
from storage.shifts import order as shift_order
from storage.shifts import severity

RESULT_COLUMNS = (["dataset", "n_versions", "models", "bug_ids", "setting", "shift", "method", "accuracy",
                   "voting_accuracy",
                   "upper_limit", "lower_limit", "abs_improvement", "rel_improvement", "version_accuracies"]
                  + [f"e{k}" for k in range(MAX_VERSIONS + 1)] + [f"acc_e{k}" for k in range(MAX_VERSIONS + 1)]
                  + ["mcnemar_p", "abs_improvement_low", "abs_improvement_high", "dfg_accuracy", "mcnemar_p_dfg",
                     "compute", "flops_per_input"])
#: a configuration's difference from voting (or DeepFailGuard) counts as significant below this McNemar p-value
SIGNIFICANCE = 0.05


def summarize(rows) -> pd.DataFrame:
    """Per (dataset, number of versions, method): means over the configurations, and whether the method's
    difference from voting, and from DeepFailGuard, is more than noise.

    ``wins/losses/ties`` against voting and a two-sided sign test over the configurations (ties dropped);
    the mean accuracy and mean improvement with 95 % t-intervals; how many configurations differ from
    voting significantly (McNemar p < ``SIGNIFICANCE``) in either direction. The same counts against
    DeepFailGuard carry the suffix ``_dfg`` (``wins_over_dfg``, ``significant_wins_over_dfg``, ``sign_test_p_dfg``).
    """
    table = pd.DataFrame(rows)
    for column, default in (("shift", NO_SHIFT), ("compute", float("nan")), ("flops_per_input", float("nan"))):
        if column not in table:  # rows made by hand, or before these columns
            table[column] = default
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
    groups = table.groupby(["dataset", "shift", "n_versions", "method"], sort=False)
    summary = groups.agg(
        configurations=("accuracy", "size"), accuracy=("accuracy", "mean"),
        voting_accuracy=("voting_accuracy", "mean"), upper_limit=("upper_limit", "mean"),
        abs_improvement=("abs_improvement", "mean"), compute=("compute", "mean"),
        flops_per_input=("flops_per_input", "mean"), **{name: (name, "sum") for name in counts}).reset_index()
    intervals = pd.DataFrame([_group_intervals(group) for _, group in groups])  # the order of agg's groups
    summary = pd.concat([summary, intervals], axis=1)
    for baseline, suffix in (("voting", ""), ("dfg", "_dfg")):
        if f"wins_over_{baseline}" in summary:
            summary[f"sign_test_p{suffix}"] = [sign_test(w, lo) for w, lo in zip(summary[f"wins_over_{baseline}"],
                                                                                  summary[f"losses_to_{baseline}"])]
    order = summary["method"].map(lambda method: list(METHODS).index(method) if method in METHODS else len(METHODS))
    return summary.assign(_order=order, _shift=summary["shift"].map(shift_order)) \
        .sort_values(["dataset", "_shift", "n_versions", "_order"], kind="stable") \
        .drop(columns=["_order", "_shift"]).reset_index(drop=True)


def _group_intervals(group: pd.DataFrame) -> dict:
    """95 % t-intervals of a group's mean accuracy and mean improvement over voting (across configurations)."""
    _, accuracy_low, accuracy_high = mean_interval(group["accuracy"].to_numpy(dtype=float))
    _, improvement_low, improvement_high = mean_interval(group["abs_improvement"].to_numpy(dtype=float))
    return {"accuracy_low": accuracy_low, "accuracy_high": accuracy_high,
            "abs_improvement_low": improvement_low, "abs_improvement_high": improvement_high}


def provenance(evaluation: Evaluation) -> dict:
    """``methods.json``: for every method and score that ran, its class, parameters, needs and tie rule."""
    return {"methods": {name: describe(METHODS[name]) for name in evaluation.methods if name in METHODS},
            "scores": {name: describe(SCORES[name]) for name in evaluation.scores}}


def write_evaluation(evaluation: Evaluation, records_by_dataset: dict, truths_by_dataset: dict, output,
                     by_shift: dict | None = None) -> pd.DataFrame:
    """Results, summary, failure prediction, ``methods.json`` and figures of an :class:`Evaluation`; returns the
    summary. ``by_shift`` (shift → ``(records_by_dataset, truths_by_dataset)``) replaces the two dicts where the
    test sets were evaluated under shifts."""
    summary = summarize(evaluation.rows)
    atomic_write_table(layout.result_path(output, layout.RESULTS_CSV), pd.DataFrame(evaluation.rows), RESULT_COLUMNS)
    atomic_write_table(layout.result_path(output, layout.SUMMARY_CSV), summary)
    atomic_write_table(layout.result_path(output, layout.FAILURE_PREDICTION_CSV), pd.DataFrame(evaluation.failure_rows))
    atomic_write_table(layout.result_path(output, layout.SELECTIVE_CSV), pd.DataFrame(evaluation.selective_rows),
                       SELECTIVE_COLUMNS)
    atomic_write_json(layout.result_path(output, layout.METHODS_JSON), provenance(evaluation))
    write_figures(summary, by_shift or {NO_SHIFT: (records_by_dataset, truths_by_dataset)}, output)
    return summary


def write_figures(summary: pd.DataFrame, by_shift: dict, output) -> None:
    """Per dataset: the methods against N (a panel per severity: the clean set, then each severity's mean over its
    corruptions) and accuracy against FLOPs (clean set); per dataset and shift: the reliability of DeepFailGuard's
    P(correct) and the risk-coverage curves of the failure scores."""
    for dataset, rows in summary.groupby("dataset", sort=False):
        families = {method: family_of(method) if method in METHODS else "other" for method in rows["method"]}
        save_method_comparison(severity_panels(rows), layout.methods_figure_path(output, dataset),
                               title=f"{dataset}: mean accuracy of each method against the number of versions",
                               families=families)
        clean = rows[rows["shift"] == NO_SHIFT]
        if clean["flops_per_input"].notna().any():
            save_accuracy_compute(clean.to_dict("records"), layout.compute_figure_path(output, dataset),
                                  title=f"{dataset}: accuracy against what an answer costs", families=families)
    evaluated = {(row["dataset"], row["shift"]) for row in summary[["dataset", "shift"]].to_dict("records")}
    for shift, (records_by_dataset, truths_by_dataset) in by_shift.items():
        under = "" if shift == NO_SHIFT else f" under {shift} (severity {severity(shift)})"
        for dataset, records in records_by_dataset.items():
            if (dataset, shift) not in evaluated:
                continue
            ordered = sorted(records.items(), key=lambda item: (item[0][1], canonical_key(item[0])))
            truths = truths_by_dataset[dataset]
            correct = {f"{model} bug {bug}": record.labels == truths[record.test_set]
                       for (model, bug), record in ordered}
            save_reliability_diagram({name: (record.probability_score(DEEPFAILGUARD), correct[name])
                                      for name, (_, record) in zip(correct, ordered)},
                                     layout.reliability_figure_path(output, dataset, shift),
                                     title=f"{dataset}{under}: calibration of DeepFailGuard's P(correct)")
            available = [name for name in RISK_COVERAGE_SCORES
                         if all(not unmet_needs(SCORES[name].needs, [r]) for _, r in ordered)]
            save_risk_coverage({name: [(record.score(name), correct[key]) for key, (_, record) in
                                       zip(correct, ordered)] for name in available},
                               layout.risk_coverage_figure_path(output, dataset, shift),
                               title=f"{dataset}{under}: selective risk of each failure score (mean over versions)")


#: the scores the risk-coverage figures draw (those a version has)
RISK_COVERAGE_SCORES = ("dfg", "dfg_plus", "distance", "max_softmax", "doctor", "energy", "maxlogit_pnorm", "fdbd")


def severity_panels(rows: pd.DataFrame) -> dict[str, list[dict]]:
    """A dataset's summary rows per severity: the clean set's as they are, each severity's averaged over its
    corruptions (per method and N); one panel per severity present."""
    levels = rows["shift"].map(severity)
    panels = {}
    for level in sorted(levels.unique()):
        part = rows[levels == level]
        if level:
            part = part.groupby(["n_versions", "method"], sort=False).agg(
                accuracy=("accuracy", "mean"), upper_limit=("upper_limit", "mean")).reset_index()
        count = rows.loc[levels == level, "shift"].nunique()
        name = "clean test set" if level == 0 else f"severity {level} (mean over {count} corruption(s))"
        panels[name] = part.to_dict("records")
    return panels


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a text table per dataset: one line per method, its mean accuracy per N and in how many
    version sets it beats voting; the number of sets in the header, the upper limit in the footer."""
    width = 20
    name_width = max(16, *(len(str(method)) + 1 for method in summary["method"]),
                     *(len(f"{dataset} {shift}") + 1 for dataset, shift in zip(summary["dataset"], summary["shift"])))
    blocks = []
    for (dataset, shift), by_dataset in summary.groupby(["dataset", "shift"], sort=False):
        dataset = dataset if shift == NO_SHIFT else f"{dataset} {shift}"
        per_size = by_dataset.drop_duplicates("n_versions").set_index("n_versions")
        sizes = list(per_size.index)
        titles = [f"N={n} ({per_size.at[n, 'configurations']} sets)" for n in sizes]
        header = "".join(f"{title:>{width}}" for title in titles)
        lines = [f"{dataset:<{name_width}}{header}",
                 f"{'method':<{name_width}}" + f"{'accuracy  >voting':>{width}}" * len(sizes)]
        for method, rows in by_dataset.groupby("method", sort=False):
            by_size = rows.set_index("n_versions")
            cells = []
            for n in sizes:
                if n not in by_size.index:
                    cells.append(" " * width)
                    continue
                wins = f"{by_size.at[n, 'wins_over_voting']}/{by_size.at[n, 'configurations']}"
                cells.append(f"{by_size.at[n, 'accuracy']:>{width - 8}.4f}{wins:>8}")
            lines.append(f"{method:<{name_width}}" + "".join(cells))
        lines.append(f"{'upper limit':<{name_width}}"
                     + "".join(f"{per_size.at[n, 'upper_limit']:>{width - 8}.4f}{'':>8}" for n in sizes))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_takeaway(summary: pd.DataFrame) -> str:
    """What the table says, per dataset and shift: the best method at each N (ties named together), and
    DeepFailGuard against voting at each N (mean accuracies, wins and losses over the sets, the sign test's
    p-value)."""
    lines = []
    for (dataset, shift), rows in summary.groupby(["dataset", "shift"], sort=False):
        where = dataset if shift == NO_SHIFT else f"{dataset} {shift}"
        best = []
        for n, at_n in rows.groupby("n_versions", sort=False):
            top = at_n["accuracy"].max()
            leaders = at_n.loc[at_n["accuracy"] >= top - 1e-12, "method"]
            best.append(f"N={n} {', '.join(leaders)} {top:.4f}")
        lines.append(f"{where}: best method per N: {'; '.join(best)}")
        dfg = rows[rows["method"] == DEEPFAILGUARD]
        if len(dfg) and "sign_test_p" in dfg:
            against = [f"N={row.n_versions} {row.accuracy:.4f} against {row.voting_accuracy:.4f}, better in "
                       f"{row.wins_over_voting} and worse in {row.losses_to_voting} of {row.configurations} sets "
                       f"(sign test p = {row.sign_test_p:.3g})" for row in dfg.itertuples()]
            lines.append(f"{where}: DeepFailGuard against voting: {'; '.join(against)}")
    return "\n".join(lines)


def format_whereabouts(output, files=layout.RESULT_FILES) -> str:
    """Where the run's tables and figures are, in two lines (the figures by kind, those the folder holds)."""
    figures = Path(layout.figure_path(output, ""))
    kinds = [kind for kind in ("methods", "compute", "reliability", "risk_coverage", "kde")
             if figures.is_dir() and any(figures.glob(f"{kind}_*.png"))]
    return (f"results in {output}/{', '.join(files)} (columns: docs/outputs.md)\n"
            f"figures in {figures}/ ({', '.join(f'{kind}_*' for kind in kinds) or 'none'})")
