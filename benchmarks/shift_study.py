"""How DeepFailGuard holds up under distribution shift, from evaluations run with ``--shifts`` (markdown tables).

``scores MODE=FOLDER …``: per severity (0 = the clean test set), the mean over versions and corruptions of each
failure score's AUROC and AUGRC (DeepFailGuard's ``dfg`` and ``dfg_plus`` per distance mode, the softmax scores
and ``fdbd`` from the folders that have them), on the corruptions every folder shares; then per family, in how
many (version, corruption) pairs ``dfg`` beats ``max_softmax`` (AUROC; sign test).

``selection MODE=FOLDER …``: per severity and N, the mean accuracy of ``dfg`` (per mode), voting, soft voting,
``max_softmax`` and the best dynamic selector, with DeepFailGuard's wins and losses against voting over every
(version set, corruption) and their sign test, and how many of those differ significantly (McNemar p < 0.05).

``fitted CLEAN=FOLDER SHIFTED=FOLDER``: DeepFailGuard fitted on clean validation inputs against fitted with
``--fit-shifts`` (SHIFTED, evaluated on corruptions of families it was not fitted on; CLEAN evaluated on at least
those): AUROC and AUGRC per severity, accuracy per severity and N, each with its sign test over the pairs.

    python benchmarks/shift_study.py scores feature=sh_feat first-order:2=sh_fo2 deepfool=sh_df
    python benchmarks/shift_study.py fitted clean=sh_feat noise+blur=fs_feat_nb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.metrics import sign_test  # noqa: E402
from pipeline import flags  # noqa: E402
from storage import layout  # noqa: E402
from storage.shifts import family, severity  # noqa: E402

SCORES = ("dfg", "dfg_plus", "max_softmax", "doctor", "energy", "maxlogit_pnorm", "fdbd")
#: DeepFailGuard's scores, which depend on the distance mode (the rest are the same in every folder)
MODE_SCORES = ("dfg", "dfg_plus")
DYNAMIC = ("ola", "lca", "knora_e", "knora_u")
SET_KEYS = ["dataset", "shift", "n_versions", "models", "bug_ids", "setting"]


def read(folder, name: str) -> pd.DataFrame:
    table = pd.read_csv(layout.result_path(folder, name))
    return table.assign(severity=table["shift"].map(severity), family=table["shift"].map(family))


def scores_report(folders: dict[str, Path]) -> str:
    tables = {mode: read(folder, layout.FAILURE_PREDICTION_CSV) for mode, folder in folders.items()}
    shared = set.intersection(*(set(t["shift"]) for t in tables.values()))
    lines = [f"Corruptions shared by every folder: {len(shared - {'none'})} per severity pair "
             f"({', '.join(sorted(shared - {'none'}))})", "",
             "| score | " + " | ".join(f"AUROC s{s}" for s in (0, 3, 5)) + " | "
             + " | ".join(f"AUGRC s{s}" for s in (0, 3, 5)) + " |", "|---" * 7 + "|"]
    rows = {}
    for mode, table in tables.items():
        table = table[table["shift"].isin(shared)]
        for score in SCORES:
            if f"auroc_{score}" not in table or table[f"auroc_{score}"].isna().all():
                continue
            name = f"{score} ({mode})" if score in MODE_SCORES or score == "fdbd" else score
            if name in rows:
                continue
            by = table.groupby("severity")
            rows[name] = [by[f"auroc_{score}"].mean().get(s, float("nan")) for s in (0, 3, 5)] + \
                [by[f"augrc_{score}"].mean().get(s, float("nan")) for s in (0, 3, 5)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    lines += ["", "Per family: pairs (version, corruption) where `dfg` beats `max_softmax` in AUROC (sign test)", "",
              "| mode | family | severity | wins | losses | p |", "|---|---|---|---|---|---|"]
    for mode, table in tables.items():
        table = table[table["shift"].isin(shared)]
        for (group, level), part in table[table["severity"] > 0].groupby(["family", "severity"]):
            wins = int((part["auroc_dfg"] > part["auroc_max_softmax"]).sum())
            losses = int((part["auroc_dfg"] < part["auroc_max_softmax"]).sum())
            lines.append(f"| {mode} | {group} | {level} | {wins} | {losses} | {sign_test(wins, losses):.3g} |")
    return "\n".join(lines)


def selection_report(folders: dict[str, Path]) -> str:
    tables = {mode: read(folder, layout.RESULTS_CSV) for mode, folder in folders.items()}
    shared = set.intersection(*(set(t["shift"]) for t in tables.values()))
    first = next(iter(tables.values()))
    first = first[first["shift"].isin(shared)]
    lines = ["| severity | N | " + " | ".join(f"dfg ({m})" for m in tables) +
             " | voting | soft voting | max_softmax | best dynamic | dfg > voting (first mode): wins/losses, p, "
             "significant +/- |", "|---" * (8 + len(tables)) + "|"]
    for (level, size), part in first.groupby(["severity", "n_versions"]):
        means = part.groupby("method")["accuracy"].mean()
        dfg = []
        for table in tables.values():
            other = table[table["shift"].isin(shared) & (table["severity"] == level) & (table["n_versions"] == size)]
            dfg.append(other.loc[other["method"] == "dfg", "accuracy"].mean())
        best = max(DYNAMIC, key=lambda name: means.get(name, float("-inf")))
        rows = part[part["method"] == "dfg"]
        wins = int((rows["accuracy"] > rows["voting_accuracy"]).sum())
        losses = int((rows["accuracy"] < rows["voting_accuracy"]).sum())
        significant = rows["mcnemar_p"] < 0.05
        plus = int((significant & (rows["accuracy"] > rows["voting_accuracy"])).sum())
        minus = int((significant & (rows["accuracy"] < rows["voting_accuracy"])).sum())
        lines.append(f"| {level} | {size} | " + " | ".join(f"{v:.4f}" for v in dfg) +
                     f" | {means['voting']:.4f} | {means['soft_voting']:.4f} | {means['max_softmax']:.4f} | "
                     f"{best} {means[best]:.4f} | {wins}/{losses}, {sign_test(wins, losses):.3g}, +{plus}/-{minus} |")
    return "\n".join(lines)


def fitted_report(clean_folder: Path, shifted_folder: Path) -> str:
    clean_f, shifted_f = (read(f, layout.FAILURE_PREDICTION_CSV) for f in (clean_folder, shifted_folder))
    keys = ["shift", "model", "bug_id"]
    paired = shifted_f.merge(clean_f, on=keys, suffixes=("_fit", "_clean"))
    lines = [f"Held-out corruptions: {paired['shift'].nunique()} ({', '.join(sorted(set(paired['family_fit'])))})",
             "", "| severity | metric | fitted clean | fitted under shift | max_softmax | fitted under shift better: "
             "wins/losses, p |", "|---|---|---|---|---|---|"]
    for level, part in paired.groupby("severity_fit"):
        for metric, better in (("auroc", 1), ("augrc", -1)):
            for score in MODE_SCORES:
                fit, clean = part[f"{metric}_{score}_fit"], part[f"{metric}_{score}_clean"]
                wins, losses = int((better * (fit - clean) > 0).sum()), int((better * (fit - clean) < 0).sum())
                lines.append(f"| {level} | {metric} {score} | {clean.mean():.4f} | {fit.mean():.4f} | "
                             f"{part[f'{metric}_max_softmax_clean'].mean():.4f} | {wins}/{losses}, "
                             f"{sign_test(wins, losses):.3g} |")
    clean_r, shifted_r = (read(f, layout.RESULTS_CSV) for f in (clean_folder, shifted_folder))
    rows = shifted_r.merge(clean_r, on=[*SET_KEYS, "method"], suffixes=("_fit", "_clean"))
    rows = rows[rows["method"] == "dfg"]
    lines += ["", "| severity | N | dfg fitted clean | dfg fitted under shift | voting | wins/losses, p |",
              "|---|---|---|---|---|---|"]
    for (level, size), part in rows.groupby(["severity_fit", "n_versions"]):
        wins = int((part["accuracy_fit"] > part["accuracy_clean"]).sum())
        losses = int((part["accuracy_fit"] < part["accuracy_clean"]).sum())
        lines.append(f"| {level} | {size} | {part['accuracy_clean'].mean():.4f} | {part['accuracy_fit'].mean():.4f} | "
                     f"{part['voting_accuracy_fit'].mean():.4f} | {wins}/{losses}, {sign_test(wins, losses):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", choices=("scores", "selection", "fitted"))
    parser.add_argument("folders", nargs="+", metavar="NAME=FOLDER")
    args = parser.parse_args(argv)
    folders = dict(item.split("=", 1) for item in args.folders)
    folders = {name: Path(folder) for name, folder in folders.items()}
    if args.report == "scores":
        print(scores_report(folders))
    elif args.report == "selection":
        print(selection_report(folders))
    else:
        clean, shifted = folders.values()
        print(fitted_report(clean, shifted))
    return 0


if __name__ == "__main__":
    flags.run_main(main)
