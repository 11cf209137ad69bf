"""What a cheaper distance costs in fault tolerance: DeepFailGuard's accuracy and its failure prediction per
distance mode, next to the paper's DeepFool, from the evaluations of one grid in each mode.

Each ``MODE=FOLDER`` names a mode and the ``--output`` folder of ``main_test_DeepFailGuard_from_cached.py
--distance MODE`` on the same versions (the first is the reference, normally ``deepfool``). Prints, per N, the
mean accuracy of ``--method`` (default ``dfg``) in each mode, its difference from the reference, and the sign
test over the version sets (wins/losses of the mode against the reference, set by set); then per version the
AUROC of the mode's ``dfg`` and ``distance`` scores for telling its right test answers from its wrong ones.

    python benchmarks/distance_tradeoff.py deepfool=out first-order=out_fo deepfool:2=out_df2
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
from utils import UsageError  # noqa: E402

SET_KEYS = ["dataset", "n_versions", "models", "bug_ids", "setting"]


def mode_folder(text: str) -> tuple[str, Path]:
    mode, equals, folder = text.partition("=")
    if not equals or not mode or not folder:
        raise argparse.ArgumentTypeError(f"expected MODE=FOLDER, got {text!r}")
    return mode, Path(folder)


def read(folder: Path, name: str) -> pd.DataFrame:
    path = layout.result_path(folder, name)
    if not path.is_file():
        raise UsageError(f"missing {path}: run main_test_DeepFailGuard_from_cached.py --output {folder} first")
    return pd.read_csv(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modes", nargs="+", type=mode_folder, metavar="MODE=FOLDER")
    parser.add_argument("--method", default="dfg")
    args = parser.parse_args(argv)
    reference = args.modes[0][0]
    rows = {mode: read(folder, layout.RESULTS_CSV) for mode, folder in args.modes}
    chosen = {mode: table[table.method == args.method].set_index(SET_KEYS)["accuracy"] for mode, table in rows.items()}
    base = chosen[reference]
    print(f"{args.method}: mean accuracy (%) per N; against {reference}: difference, set wins/losses, sign test p")
    print(f"{'mode':<16}" + "".join(f"{f'N={n}':>34}" for n in sorted(base.index.unique('n_versions'))))
    for mode, accuracy in chosen.items():
        if not accuracy.index.equals(base.index):
            raise UsageError(f"{mode}: its evaluation covers other version sets than {reference}'s (another grid?)")
        cells = []
        for n in sorted(base.index.unique("n_versions")):
            ours, theirs = accuracy.xs(n, level="n_versions"), base.xs(n, level="n_versions")
            wins, losses = int((ours > theirs).sum()), int((ours < theirs).sum())
            cells.append(f"{100 * ours.mean():>8.2f} {100 * (ours.mean() - theirs.mean()):>+7.3f} "
                         f"{wins:>4}/{losses:<4} p={sign_test(wins, losses):<6.2g}")
        print(f"{mode:<16}" + "".join(f"{cell:>34}" for cell in cells))
    failure = {mode: read(folder, layout.FAILURE_PREDICTION_CSV).set_index(["dataset", "model", "bug_id"])
               for mode, folder in args.modes}
    print("\nfailure-prediction AUROC per version, dfg / distance, per mode")
    print(f"{'version':<22}" + "".join(f"{mode:>18}" for mode, _ in args.modes))
    for key in failure[reference].index:
        cells = "".join(f"{failure[m].at[key, 'auroc_dfg']:>8.3f} / {failure[m].at[key, 'auroc_distance']:<7.3f}"
                        if key in failure[m].index else f"{'':>18}" for m, _ in args.modes)
        print(f"{key[1] + ' bug ' + str(key[2]):<22}{cells}")
    means = "".join(f"{failure[m]['auroc_dfg'].mean():>8.3f} / {failure[m]['auroc_distance'].mean():<7.3f}"
                    for m, _ in args.modes)
    print(f"{'mean':<22}{means}")
    return 0


if __name__ == "__main__":
    flags.run_main(main)
