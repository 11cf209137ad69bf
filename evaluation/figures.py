"""The evaluation's figures: methods against N, accuracy against compute, risk-coverage curves, reliability
diagrams; each written atomically as a PNG."""

from __future__ import annotations

import numpy as np

from evaluation.metrics import accepted_errors, expected_calibration_error, reliability_curve
from storage.files import atomic_save_figure, pyplot


def save_method_comparison(summary_rows, path, title: str = "") -> None:
    """Mean accuracy of every method (and the upper limit) against the number of versions, with 95 % intervals
    of the mean over the version sets where the summary has them; ``summary_rows`` is a list of rows, or panels
    of them by name (one per severity of shift). DeepFailGuard and voting stand out; the legend sits beside the
    axes, in the methods' order, so that twenty lines stay readable."""
    plt = pyplot()
    panels = summary_rows if isinstance(summary_rows, dict) else {"": summary_rows}
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 3.3, 4.8), squeeze=False, sharey=True)
    for axis, (name, rows) in zip(axes.flat, panels.items()):
        methods = _plot_methods(axis, rows)
        axis.set_title(name, fontsize=9)
    axes.flat[0].set_ylabel("mean accuracy over version sets")
    axes.flat[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                         ncol=1 if len(methods) < 16 else 2)
    figure.suptitle(title)
    figure.tight_layout()
    atomic_save_figure(path, figure)


def _plot_methods(axis, summary_rows: list[dict]) -> list[str]:
    methods = list(dict.fromkeys(row["method"] for row in summary_rows))
    palette = pyplot().get_cmap("tab20")
    for index, method in enumerate(methods):
        rows = sorted((r for r in summary_rows if r["method"] == method), key=lambda r: r["n_versions"])
        styles = {"dfg": dict(linewidth=2.8, marker="o", color="black"),
                  "voting": dict(linewidth=2.2, marker="s", color="tab:red", linestyle=":")}
        style = styles.get(method, dict(marker=".", linewidth=1.2, color=palette(index % 20)))
        means = np.array([r["accuracy"] for r in rows])
        if all("accuracy_low" in r for r in rows):  # 95 % intervals of the mean over the version sets
            spread = np.nan_to_num(np.abs(np.array([[r["accuracy_low"] for r in rows],
                                                    [r["accuracy_high"] for r in rows]]) - means))
            axis.errorbar([r["n_versions"] for r in rows], means, yerr=spread, label=method, capsize=2, **style)
        else:
            axis.plot([r["n_versions"] for r in rows], means, label=method, **style)
    upper = sorted({(r["n_versions"], r["upper_limit"]) for r in summary_rows if r["method"] == methods[0]})
    axis.plot([n for n, _ in upper], [u for _, u in upper], "k--", label="upper limit")
    axis.set_xlabel("number of versions N")
    axis.set_xticks(sorted({r["n_versions"] for r in summary_rows}))
    return methods


def save_risk_coverage(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], path, title: str,
                       points: int = 101) -> None:
    """Selective risk (error rate among the accepted inputs) against coverage for each failure score (``curves``:
    score → one ``(scores, correct)`` per version), averaged over the versions at each coverage; ties count as
    their expected value over orderings (``metrics.accepted_errors``). Lower is better; at full coverage every
    score has the versions' mean error."""
    plt = pyplot()
    coverage = np.linspace(0.0, 1.0, points)[1:]
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for index, (name, versions) in enumerate(curves.items()):
        risks = []
        for scores, correct in versions:
            errors = accepted_errors(scores, correct)
            if errors is None:
                continue
            accepted = np.arange(1, errors.size + 1)
            risks.append(np.interp(coverage, accepted / errors.size, errors / accepted))
        if risks:
            style = dict(linewidth=2.4, color="black") if name == "dfg" else dict(linewidth=1.3, color=f"C{index % 10}")
            axis.plot(coverage, np.mean(risks, axis=0), label=name, **style)
    axis.set_xlabel("coverage (share of inputs answered)")
    axis.set_ylabel("selective risk (error among answered)")
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    atomic_save_figure(path, figure)


def save_accuracy_compute(summary_rows: list[dict], path, title: str = "") -> None:
    """Mean accuracy against mean FLOPs per input (log scale), one panel per number of versions N, one point per
    method: what each answer costs. Cascades stand out (open markers), DeepFailGuard and voting as elsewhere."""
    plt = pyplot()
    sizes = sorted({r["n_versions"] for r in summary_rows})
    figure, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes) + 1.5, 3.6), squeeze=False, sharey=True)
    for axis, size in zip(axes.flat, sizes):
        for row in (r for r in summary_rows
                    if r["n_versions"] == size and np.isfinite(r.get("flops_per_input", np.nan))):
            method = row["method"]
            style = ({"marker": "o", "color": "black", "s": 40} if method == "dfg" else
                     {"marker": "s", "color": "tab:red", "s": 30} if method == "voting" else
                     {"marker": "D", "facecolors": "none", "edgecolors": "tab:blue", "s": 30}
                     if method.startswith("cascade") else {"marker": ".", "color": "grey", "s": 20})
            axis.scatter(row["flops_per_input"], row["accuracy"], **style)
            if method in ("dfg", "voting") or method.startswith("cascade"):
                axis.annotate(method, (row["flops_per_input"], row["accuracy"]), fontsize=6, xytext=(3, 2),
                              textcoords="offset points")
        axis.set_xscale("log")
        axis.set_title(f"N={size}", fontsize=9)
        axis.set_xlabel("FLOPs per input")
    axes.flat[0].set_ylabel("mean accuracy over version sets")
    figure.suptitle(title)
    figure.tight_layout()
    atomic_save_figure(path, figure)


def save_reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str,
                             bins: int = 15) -> None:
    """Accuracy against mean P(correct) per confidence bin for each version (``curves``: label → (confidence,
    correct)); points below the dashed diagonal are over-confident. Up to 6 versions share one panel, more get
    one small panel each so that 20 lines do not hide one another."""
    plt = pyplot()
    labels = list(curves)
    shared = len(labels) <= 6
    columns = 1 if shared else min(5, len(labels))
    rows = 1 if shared else -(-len(labels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5, 5) if shared else (2.6 * columns, 2.5 * rows + 0.4),
                                sharex=True, sharey=True, squeeze=False)
    for index, label in enumerate(labels):
        confidence, correct = curves[label]
        table = reliability_curve(confidence, correct, bins=bins)
        ece = expected_calibration_error(confidence, correct, bins=bins)
        axis = axes.flat[0 if shared else index]
        colour = f"C{index % 10}" if shared else "tab:blue"  # one version per small panel: no colour to decode
        axis.plot(table["mean_confidence"], table["accuracy"], marker="o", markersize=4, color=colour,
                  label=f"{label} (ECE {ece:.3f})")
    for index, axis in enumerate(axes.flat):
        if index >= (1 if shared else len(labels)):
            axis.set_visible(False)
            continue
        axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="_perfect calibration")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_aspect("equal")
        axis.legend(fontsize=8 if shared else 7, loc="upper left")
    figure.supxlabel("mean predicted P(correct) in bin")
    figure.supylabel("accuracy in bin")
    figure.suptitle(title)
    figure.tight_layout()
    atomic_save_figure(path, figure)
