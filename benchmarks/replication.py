"""Does the verdict replicate on a second dataset? Markdown tables from evaluations run with ``--shifts``, one
folder per dataset and distance mode (docs/results.md, "Replication").

    python benchmarks/replication.py DIGITS:feature=rep_digits_feat DIGITS:first-order:2=rep_digits_fo2 \\
        DIGITS:deepfool=rep_digits_df MNIST5K:feature=rep_mnist_feat ...

Per dataset:

- **failure prediction**: each score's AUROC and AUGRC (``failure_prediction.csv``), the mean over versions and
  corruptions per severity (0 = the clean test set); the scores that read the boundary distance (``dfg``,
  ``dfg_plus``, ``distance_only``) once per distance mode, the others from the first folder that has them;
- **against max softmax, per family and severity**: in how many versions a score's AUROC beats ``max_softmax``'s,
  with the sign test;
- **selection**: mean accuracy at each N and severity of voting, the best softmax selector, DeepFailGuard (per
  mode) and the likelihood-ratio selectors, each selector's wins and losses over the version sets against voting
  and against the best softmax selector of that cell (the one of highest mean accuracy), with sign tests.

Across datasets: Kendall's τ between the two datasets' rankings of the scores by mean AUROC (and AUGRC), per
severity, on the scores both have.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shift_study import read  # noqa: E402

from evaluation.metrics import sign_test  # noqa: E402
from pipeline import flags  # noqa: E402
from storage import layout  # noqa: E402
from utils import UsageError  # noqa: E402

#: scores computed from the boundary distance: one row per distance mode
MODE_SCORES = ("dfg", "dfg_plus", "distance_only", "distance")
#: the softmax family (failure scores and the selectors that pick by them)
SOFTMAX = ("max_softmax", "softmax_margin", "doctor", "entropy", "energy", "gen", "rel_u", "maxlogit_pnorm")
#: the scores set against max softmax per family and severity, and the selectors of the selection table
CHALLENGERS = ("dfg", "dfg_plus", "gen", "energy", "doctor", "fdbd", "delta_mds", "delta_knn", "delta_mds_rlog",
               "delta_knn_rlog", "dfg_features")
SELECTORS = ("dfg", "dfg_features", "delta_mds", "delta_knn", "delta_mds_rlog", "delta_knn_rlog")
SEVERITIES = (0, 3, 5)
SET_KEYS = ["dataset", "shift", "n_versions", "models", "bug_ids", "setting"]


def parse_folders(items: list[str]) -> dict[str, dict[str, Path]]:
    """``DATASET:MODE=FOLDER`` items as {dataset: {mode: folder}}, in the order given."""
    folders: dict[str, dict[str, Path]] = {}
    for item in items:
        key, sep, folder = item.partition("=")
        dataset, colon, mode = key.partition(":")
        if not (sep and colon and dataset and mode and folder):
            raise UsageError(f"{item!r} is not DATASET:MODE=FOLDER (e.g. MNIST5K:feature=rep_mnist_feat)")
        folders.setdefault(dataset, {})[mode] = Path(folder)
    return folders


def score_rows(dataset: str, folders: dict[str, Path]) -> pd.DataFrame:
    """One row per (score label, version, shift) with its AUROC and AUGRC, severity and family."""
    parts = []
    seen: set[str] = set()
    for mode, folder in folders.items():
        table = read(folder, layout.FAILURE_PREDICTION_CSV)
        table = table[table["dataset"] == dataset]
        for column in table.columns:
            if not column.startswith("auroc_"):
                continue
            score = column[len("auroc_"):]
            label = f"{score} ({mode})" if score in MODE_SCORES else score
            if label in seen or table[column].isna().all():
                continue
            seen.add(label)
            parts.append(pd.DataFrame({"label": label, "score": score, "mode": mode, "model": table["model"],
                                       "bug_id": table["bug_id"], "shift": table["shift"],
                                       "severity": table["severity"], "family": table["family"],
                                       "auroc": table[column], "augrc": table[f"augrc_{score}"]}))
    return pd.concat(parts, ignore_index=True)


def means(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """label × severity: the mean of ``metric`` over versions and corruptions."""
    return rows.pivot_table(index="label", columns="severity", values=metric, aggfunc="mean", sort=False)


def failure_table(rows: pd.DataFrame) -> list[str]:
    auroc, augrc = means(rows, "auroc"), means(rows, "augrc")
    counts = rows.dropna(subset=["auroc"]).groupby("label", sort=False).size()
    lines = ["| score | " + " | ".join(f"AUROC s{s}" for s in SEVERITIES) + " | "
             + " | ".join(f"AUGRC s{s}" for s in SEVERITIES) + " | pairs |", "|---" * 8 + "|"]
    for label in auroc.index:
        cells = [auroc.loc[label].get(s, np.nan) for s in SEVERITIES] + [augrc.loc[label].get(s, np.nan)
                                                                        for s in SEVERITIES]
        lines.append(f"| {label} | " + " | ".join("" if np.isnan(v) else f"{v:.4f}" for v in cells)
                     + f" | {counts.get(label, 0)} |")
    return lines


def against_max_softmax(rows: pd.DataFrame, by=("severity", "family")) -> list[str]:
    """Per challenger and group (``by``: severity and family, the clean test set being family ``none``; or severity
    alone, every corruption pooled): the (version, corruption) pairs where its AUROC beats max softmax's, and the
    sign test (pooled, the pairs share versions: the p-value is a guide, not a test)."""
    keys = ["model", "bug_id", "shift"]
    base = rows[rows["label"] == "max_softmax"].set_index(keys)["auroc"]
    lines = ["| score | " + " | ".join(by) + " | wins | losses | sign p |", "|---" * (len(by) + 4) + "|"]
    for label in rows["label"].unique():
        if label.split(" ")[0] not in CHALLENGERS:
            continue
        mine = rows[rows["label"] == label]
        for group, part in mine.groupby(list(by)):
            diff = part.set_index(keys)["auroc"] - base.reindex(part.set_index(keys).index)
            wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
            lines.append(f"| {label} | " + " | ".join(map(str, group)) + f" | {wins} | {losses} | "
                         f"{sign_test(wins, losses):.3g} |")
    return lines


def selection_rows(dataset: str, folders: dict[str, Path]) -> pd.DataFrame:
    """results.csv rows of the selectors compared, DeepFailGuard's labelled by mode, with severity."""
    parts = []
    for index, (mode, folder) in enumerate(folders.items()):
        table = read(folder, layout.RESULTS_CSV)
        table = table[table["dataset"] == dataset]
        keep = table["method"].isin(MODE_SCORES) if index else table["method"].notna()
        table = table[keep].copy()
        table["label"] = [f"{m} ({mode})" if m in MODE_SCORES else m for m in table["method"]]
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def paired(part: pd.DataFrame, label: str, other: pd.Series) -> tuple[int, int]:
    mine = part[part["label"] == label].set_index(SET_KEYS)["accuracy"]
    diff = mine - other.reindex(mine.index)
    return int((diff > 0).sum()), int((diff < 0).sum())


def selection_cells(rows: pd.DataFrame):
    """Per severity, N and selector: the sets, voting's and the best softmax selector's (the one of highest mean
    accuracy in that severity and N) mean accuracy, the selector's, and its wins and losses over the sets against
    voting and against that best softmax selector."""
    for (level, size), part in rows.groupby(["severity", "n_versions"]):
        by = part.groupby("label")["accuracy"].mean()
        voting = part.drop_duplicates(SET_KEYS).set_index(SET_KEYS)["voting_accuracy"]
        softmax = [name for name in SOFTMAX if name in by]
        best = max(softmax, key=by.get) if softmax else None
        best_acc = part[part["label"] == best].set_index(SET_KEYS)["accuracy"] if best else None
        for label in by.index:
            if label.split(" ")[0] not in SELECTORS:
                continue
            yield dict(severity=level, n=size, sets=len(voting), voting=voting.mean(), best=best,
                       best_accuracy=by[best] if best else np.nan, label=label, accuracy=by[label],
                       vs_voting=paired(part, label, voting),
                       vs_best=paired(part, label, best_acc) if best else (0, 0))


def selection_table(cells: list[dict]) -> list[str]:
    """:func:`selection_cells`, a row each."""
    lines = ["| severity | N | sets | voting | best softmax selector | selector | accuracy | vs voting: W/L, p | "
             "vs best softmax: W/L, p |", "|---" * 9 + "|"]
    for c in cells:
        lines.append(f"| {c['severity']} | {c['n']} | {c['sets']} | {c['voting']:.4f} | {c['best']} "
                     f"{c['best_accuracy']:.4f} | {c['label']} | {c['accuracy']:.4f} | "
                     + " | ".join(f"{w}/{l_}, {sign_test(w, l_):.3g}" for w, l_ in (c["vs_voting"], c["vs_best"]))
                     + " |")
    return lines


def pooled_selection_table(cells: list[dict]) -> list[str]:
    """:func:`selection_cells` pooled over N (2-5) per severity: mean accuracies weighted by sets, summed wins and
    losses (the sets share versions: the sign test's p-value is a guide, not a test)."""
    cells = pd.DataFrame(cells)
    lines = ["| severity | selector | sets | voting | best softmax (per N) | selector | vs voting: W/L, p | "
             "vs best softmax: W/L, p |", "|---" * 8 + "|"]
    for (level, label), part in cells.groupby(["severity", "label"], sort=True):
        weights = part["sets"]
        pairs = [tuple(map(sum, zip(*part[column]))) for column in ("vs_voting", "vs_best")]
        lines.append(f"| {level} | {label} | {weights.sum()} | {np.average(part['voting'], weights=weights):.4f} | "
                     f"{np.average(part['best_accuracy'], weights=weights):.4f} | "
                     f"{np.average(part['accuracy'], weights=weights):.4f} | "
                     + " | ".join(f"{w}/{l_}, {sign_test(w, l_):.3g}" for w, l_ in pairs) + " |")
    return lines


def kendall_table(scores: dict[str, pd.DataFrame]) -> list[str]:
    """Kendall's τ between every two datasets' orderings of the scores they share, per severity and metric."""
    names = list(scores)
    lines = ["| datasets | metric | severity | scores | Kendall's τ | p |", "|---|---|---|---|---|---|"]
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for metric in ("auroc", "augrc"):
                a, b = means(scores[first], metric), means(scores[second], metric)
                for level in SEVERITIES:
                    if level not in a or level not in b:
                        continue
                    both = pd.concat([a[level], b[level]], axis=1, join="inner").dropna()
                    if len(both) < 3:
                        continue
                    tau, p = kendalltau(both.iloc[:, 0], both.iloc[:, 1])
                    lines.append(f"| {first} vs {second} | {metric.upper()} | {level} | {len(both)} | "
                                 f"{tau:.3f} | {p:.3g} |")
    return lines


def report(folders: dict[str, dict[str, Path]]) -> str:
    lines: list[str] = []
    scores = {}
    for dataset, modes in folders.items():
        scores[dataset] = score_rows(dataset, modes)
        cells = list(selection_cells(selection_rows(dataset, modes)))
        lines += [f"### {dataset}", "", "Failure prediction, mean over versions (and corruptions):", "",
                  *failure_table(scores[dataset]), "", "AUROC against max softmax, per severity and family "
                  "(versions where the score is higher / lower):", "", *against_max_softmax(scores[dataset]), "",
                  "The same, every corruption of a severity pooled:", "",
                  *against_max_softmax(scores[dataset], ("severity",)), "",
                  "Selection:", "", *selection_table(cells), "",
                  "Selection, N = 2-5 and every corruption of a severity pooled:", "", *pooled_selection_table(cells),
                  ""]
    if len(scores) > 1:
        lines += ["### Across datasets", "", *kendall_table(scores), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="DATASET:MODE=FOLDER")
    args = parser.parse_args(argv)
    print(report(parse_folders(args.folders)))
    return 0


if __name__ == "__main__":
    flags.run_main(main)
