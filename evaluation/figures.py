"""The evaluation's figures: methods against N, accuracy against compute, risk-coverage curves, reliability
diagrams; each written atomically as a PNG."""

from __future__ import annotations

import numpy as np

from evaluation.metrics import accepted_errors, expected_calibration_error, reliability_curve
from storage.files import atomic_save_figure, pyplot

#: the two references drawn in every panel of the methods figure, and their look everywhere
REFERENCES = {"dfg": dict(color="black", marker="o", linewidth=2.4, markersize=5),
              "voting": dict(color="tab:red", marker="s", linewidth=2.0, linestyle=":", markersize=4)}
#: the colours of a family's other methods: distinct, none of the references' (red, black), none grey
FAMILY_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                  "tab:cyan")


def save_method_comparison(summary_rows, path, title: str = "", families: dict[str, str] | None = None) -> None:
    """Mean accuracy of the methods against the number of versions N, with 95 % intervals of the mean over the
    version sets where the summary has them, in small multiples: a column per family of methods (``families``:
    method → family; one column without), a row per panel of rows (``summary_rows`` is a list of rows, or panels
    of them by name: one per severity of shift). Each panel draws its family's methods in colours used once in
    it, DeepFailGuard (black) and voting (red, dotted) as references, and the upper limit (dashed); the methods
    of a panel are nudged apart along N so that their intervals do not hide one another."""
    plt = pyplot()
    panels = summary_rows if isinstance(summary_rows, dict) else {"": summary_rows}
    methods = list(dict.fromkeys(row["method"] for rows in panels.values() for row in rows))
    families = families or {}
    by_family = {}
    for method in methods:
        by_family.setdefault(families.get(method, ""), []).append(method)
    columns, rows_of_panels = len(by_family), len(panels)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(3.4 * columns + 0.6, 3.0 * rows_of_panels + 1.6),
                                squeeze=False, sharey=True, sharex=True)
    for row_index, (panel, rows) in enumerate(panels.items()):
        for column, (family, members) in enumerate(by_family.items()):
            axis = axes[row_index, column]
            drawn = [m for m in members if m not in REFERENCES] + [m for m in REFERENCES if m in methods]
            _plot_methods(axis, rows, drawn)
            heading = family if row_index == 0 else ""
            axis.set_title(heading, fontsize=9, fontweight="bold" if heading else "normal")
            if column == 0:
                axis.set_ylabel(f"{panel}\nmean accuracy" if panel else "mean accuracy over version sets",
                                fontsize=8)
            if row_index == rows_of_panels - 1:
                axis.set_xlabel("number of versions N", fontsize=8)
                axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    figure.suptitle(title)
    width, height = figure.get_size_inches()  # margins in inches (tight_layout cost a third of the figure's time)
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.1 / width, top=1 - 0.7 / height, bottom=0.5 / height,
                           wspace=0.12, hspace=0.3)
    atomic_save_figure(path, figure)  # its bounding box takes in the legends below the panels


def _plot_methods(axis, summary_rows: list[dict], methods: list[str]) -> None:
    """``methods``' mean accuracy against N on ``axis`` (the family's own first, the references last), each colour
    once; the upper limit dashed."""
    colours = iter(FAMILY_COLOURS)
    width = 0.18  # the span along N over which the panel's methods are nudged apart
    for index, method in enumerate(methods):
        rows = sorted((r for r in summary_rows if r["method"] == method), key=lambda r: r["n_versions"])
        if not rows:
            continue
        style = REFERENCES.get(method) or dict(color=next(colours, None), marker=".", linewidth=1.3)
        if style["color"] is None:  # more methods in one family than colours: dashed lines take them again
            colours = iter(FAMILY_COLOURS)
            style = dict(color=next(colours), marker=".", linewidth=1.3, linestyle="--")
        nudge = (index - (len(methods) - 1) / 2) * width / max(len(methods) - 1, 1)
        sizes = np.array([r["n_versions"] for r in rows], dtype=float) + nudge
        means = np.array([r["accuracy"] for r in rows])
        if all("accuracy_low" in r for r in rows):  # 95 % intervals of the mean over the version sets
            spread = np.nan_to_num(np.abs(np.array([[r["accuracy_low"] for r in rows],
                                                    [r["accuracy_high"] for r in rows]]) - means))
            axis.errorbar(sizes, means, yerr=spread, label=method, capsize=1.5, elinewidth=0.8, **style)
        else:
            axis.plot(sizes, means, label=method, **style)
    upper = dict(sorted((r["n_versions"], r["upper_limit"]) for r in summary_rows))
    axis.plot(list(upper), list(upper.values()), color="grey", linestyle="--", linewidth=1, label="upper limit")
    axis.set_xticks(sorted({r["n_versions"] for r in summary_rows}))
    axis.grid(axis="y", alpha=0.3)


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


#: the markers of a family's methods in the compute figure (its colour says the family)
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")


def save_accuracy_compute(summary_rows: list[dict], path, title: str = "",
                          families: dict[str, str] | None = None) -> None:
    """Mean accuracy against mean FLOPs per input (log scale), one panel per number of versions N, one point per
    method: what each answer costs. A method's colour is its family's, its marker its own within the family
    (the legend beside the panels names each); DeepFailGuard, voting and the most accurate method are labelled
    beside each panel, the labels spread so that none overprints another, each joined to its point."""
    plt = pyplot()
    families = families or {}
    sizes = sorted({r["n_versions"] for r in summary_rows})
    methods = list(dict.fromkeys(r["method"] for r in summary_rows if np.isfinite(r.get("flops_per_input", np.nan))))
    looks, colours, counts = {}, {}, {}
    for method in methods:
        family = families.get(method, "")
        colours.setdefault(family, FAMILY_COLOURS[len(colours) % len(FAMILY_COLOURS)])  # never a reference's
        counts[family] = counts.get(family, -1) + 1
        looks[method] = dict(color=colours[family], marker=MARKERS[counts[family] % len(MARKERS)])
    looks.update({method: dict(color=style["color"], marker=style["marker"]) for method, style in REFERENCES.items()
                  if method in looks})
    columns = 3 if len(methods) > 8 else 2
    legend_rows = -(-len(methods) // columns)
    legend_height = 0.16 * legend_rows + 0.5  # inches: the legend goes below the panels, across the figure
    figure, axes = plt.subplots(1, len(sizes), figsize=(max(4.6 * len(sizes), 10.0), 4.2 + legend_height),
                                squeeze=False, sharey=True)
    labels = []
    for axis, size in zip(axes.flat, sizes):
        rows = [r for r in summary_rows if r["n_versions"] == size and r["method"] in looks]
        for row in rows:
            big = row["method"] in REFERENCES
            axis.scatter(row["flops_per_input"], row["accuracy"], s=46 if big else 22, label=row["method"],
                         edgecolors="white" if big else "none", linewidths=0.5, zorder=3 if big else 2,
                         **looks[row["method"]])
        best = max(rows, key=lambda r: r["accuracy"], default=None)
        labels.append((axis, [r for r in rows if r["method"] in REFERENCES or r is best]))
        axis.set_xscale("log")
        axis.margins(x=0.12, y=0.06)  # no point cut at the panel's edge
        axis.set_title(f"N={size}", fontsize=9)
        axis.set_xlabel("FLOPs per input (log)")
        axis.grid(alpha=0.3)
    axes.flat[0].set_ylabel("mean accuracy over version sets")
    for axis, labelled in labels:  # once every panel is drawn: the shared heights are final
        _label_beside(axis, labelled)
    handles = [pyplot().Line2D([], [], linestyle="none", markersize=6, **looks[method],
                               label=method if method in REFERENCES
                               else f"{method} ({families.get(method) or 'other'})") for method in methods]
    figure.legend(handles=handles, fontsize=7, loc="lower center", frameon=False, ncol=columns)
    figure.suptitle(title)
    width, height = figure.get_size_inches()  # margins in inches, the labels' column right of each panel
    figure.subplots_adjust(left=0.8 / width, right=1 - 1.1 / width, top=1 - 0.65 / height,
                           bottom=(legend_height + 0.6) / height, wspace=0.4)
    atomic_save_figure(path, figure)


def _label_beside(axis, rows: list[dict], gap: float = 0.085) -> None:
    """Label ``rows``' points in a column just right of the panel, at their heights where they do not crowd,
    spread apart by at least ``gap`` (of the panel's height) where they do, each joined to its point."""
    if not rows:
        return
    low, high = axis.get_ylim()
    order = sorted(rows, key=lambda r: r["accuracy"])
    heights = [(r["accuracy"] - low) / (high - low) if high > low else 0.5 for r in order]
    for i in range(1, len(heights)):  # up: each at least a gap above the one below
        heights[i] = max(heights[i], heights[i - 1] + gap)
    heights[-1] = min(heights[-1], 1.0)
    for i in range(len(heights) - 2, -1, -1):  # then down from the top, where the column ran over it
        heights[i] = min(heights[i], heights[i + 1] - gap)
    for row, height in zip(order, heights):
        axis.annotate(row["method"], (row["flops_per_input"], row["accuracy"]), xytext=(1.04, height),
                      textcoords="axes fraction", fontsize=6.5, va="center", annotation_clip=False,
                      arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.5, shrinkA=0, shrinkB=3))


def save_reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str,
                             bins: int = 15) -> None:
    """Accuracy against mean P(correct) per confidence bin, a small panel per version (``curves``: label →
    (confidence, correct)): points below the dashed diagonal are over-confident. Every point is drawn whole (the
    axes reach a little past 0 and 1), each with its bin's input count beside it, and grey bars along the bottom
    show how the inputs spread over the bins (their height: the bin's share of the version's inputs)."""
    plt = pyplot()
    labels = list(curves)
    columns = min(4, max(len(labels), 1))
    rows = -(-max(len(labels), 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.9 * columns + 0.6, 2.9 * rows + 0.9), sharex=True,
                                sharey=True, squeeze=False)
    for axis, label in zip(axes.flat, labels):
        confidence, correct = curves[label]
        table = reliability_curve(confidence, correct, bins=bins)
        ece = expected_calibration_error(confidence, correct, bins=bins)
        share = table["count"] / max(int(table["count"].sum()), 1)
        axis.bar(table["bin_low"], share * 0.3, width=table["bin_high"] - table["bin_low"], align="edge",
                 color="lightgrey", edgecolor="white", linewidth=0.5, zorder=1)
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8, zorder=2)
        axis.plot(table["mean_confidence"], table["accuracy"], marker="o", markersize=4, color="tab:blue",
                  clip_on=False, zorder=3)
        for x, y, count in zip(table["mean_confidence"], table["accuracy"], table["count"]):
            axis.annotate(str(int(count)), (x, y), xytext=(0, -9 if y > 0.85 else 5), textcoords="offset points",
                          fontsize=6, ha="center", color="tab:blue", annotation_clip=False)
        axis.set_title(f"{label}  ECE {ece:.3f}  n={len(np.asarray(correct))}", fontsize=8)
        axis.set_xlim(-0.04, 1.04)
        axis.set_ylim(-0.04, 1.06)
        axis.set_aspect("equal")
    for axis in list(axes.flat)[len(labels):]:
        axis.set_visible(False)
    figure.supxlabel("mean predicted P(correct) in bin (grey bars: share of the inputs in the bin, x 0.3)", fontsize=9)
    figure.supylabel("accuracy in bin (numbers: inputs in the bin)", fontsize=9)
    figure.suptitle(title, fontsize=10)
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=0.65 / width, right=1 - 0.1 / width, top=1 - 0.8 / height, bottom=0.55 / height,
                           wspace=0.12, hspace=0.25)
    atomic_save_figure(path, figure)
