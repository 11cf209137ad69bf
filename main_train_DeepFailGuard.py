"""Step 2: fit each version's failure model (KDEs of validation DeepFool distances, correct vs wrong).

Writes ``{info-root}/kde_results/{key}_{correct,wrong}.npz`` and a figure per version in
``{output}/figures/``. Versions with test-data faults (10-12) share the healthy version's KDEs.
``--fit-shifts`` fits them on the validation inputs clean and under those corruptions (a failure model of its
own, ``{key}_{mode}+{shifts}_{correct,wrong}.npz``, used only by evaluations given the same ``--fit-shifts``).

Examples:
    python main_train_DeepFailGuard.py                       # every trained DIGITS version
    python main_train_DeepFailGuard.py --models resnet --bugs 0 8 --device cuda
    python main_train_DeepFailGuard.py --distance feature --fit-shifts noise:3 blur:3
"""

from __future__ import annotations

import argparse

import launchers
from pipeline import flags


def build_parser() -> argparse.ArgumentParser:
    parser = flags.attack_step_parser(__doc__)
    flags.add_shift_flags(parser, evaluation=False)
    flags.add_run_flags(parser)
    flags.add_root_flags(parser, "data", "model", "info", "output",
                       output_help="folder of the failure models' figures (figures/) and the launchers' logs")
    launchers.add_launcher_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from commands import fit  # deferred: the pipeline loads torch; --help and usage errors answer before it

    return fit.run(args)


if __name__ == "__main__":
    flags.run_main(main)
