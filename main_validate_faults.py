"""Validate the faults: train the healthy recipe and each fault over several seeds, and test whether the fault
changes accuracy by more than a reseed does (``evaluation/fault_validation.py`` says how it decides).

Writes ``{output}/fault_validation.csv`` (and, with ``--search``, ``fault_search.csv``). The first seed's
versions are the pipeline's own, in ``--model-root``; the other seeds' in ``{model-root}/fault_validation/``.
Every training is an ordinary job on the chosen launcher; finished seeds are skipped, ``--force`` redoes them.

Examples:
    python main_validate_faults.py --models squeezenet                        # every fault, 10 seeds
    python main_validate_faults.py --models resnet --epochs 2 --seeds 5       # the demo's brief ResNet
    python main_validate_faults.py --models squeezenet --bugs 14 18 --seeds 5 --search
    python main_validate_faults.py --models squeezenet --launcher slurm       # the trainings as Slurm jobs
"""

from __future__ import annotations

import argparse

import launchers
from pipeline import flags
from storage.settings import FAULT_VALIDATION_SEEDS


def build_parser() -> argparse.ArgumentParser:
    parser = flags.new_parser(__doc__)
    flags.add_grid_flags(parser)
    parser.set_defaults(preset="all-faults")
    parser.add_argument("--seeds", type=flags.positive_int, default=FAULT_VALIDATION_SEEDS,
                        help="training seeds per version, from --seed up (at least 4 for a fault to be killable)")
    parser.add_argument("--search", nargs="*", default=None, metavar="BUG",
                        help="also bisect each parametric fault's parameter (these ids; none named: every "
                             "parametric fault of the grid) for the weakest value still killed")
    parser.add_argument("--search-steps", type=flags.positive_int, default=3,
                        help="bisection steps per searched fault (each trains --seeds versions)")
    flags.add_training_job_flags(parser, output_help="where the tables (and the launchers' logs) go")
    launchers.add_launcher_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from commands import validate  # deferred: the pipeline loads torch; --help and usage errors answer before it

    return validate.run(args)


if __name__ == "__main__":
    flags.run_main(main)
