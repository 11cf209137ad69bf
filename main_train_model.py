"""Step 1: train the versions (architecture × dataset × fault) and record what they measure.

Examples:
    python main_train_model.py                                  # the DIGITS grid, CPU-friendly
    python main_train_model.py --models resnet --bugs 0 1 2     # a few versions
    python main_train_model.py --preset paper --device cuda     # the paper's grid
    python main_train_model.py --mode evaluate                  # re-measure saved versions
"""

from __future__ import annotations

import argparse

import launchers
from pipeline import flags


def build_parser() -> argparse.ArgumentParser:
    parser = flags.new_parser(__doc__)
    flags.add_grid_flags(parser)
    parser.add_argument("--mode", choices=("train", "evaluate"), default="train",
                        help="train missing versions, or re-measure existing ones")
    flags.add_training_job_flags(parser, output_help="folder of the launchers' logs")
    launchers.add_launcher_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from commands import train  # deferred: the pipeline loads torch; --help and usage errors answer before it

    return train.run(args)


if __name__ == "__main__":
    flags.run_main(main)
