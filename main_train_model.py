"""Step 1: train the versions (architecture × dataset × fault) and record what they measure.

Examples:
    python main_train_model.py                                  # the DIGITS grid, CPU-friendly
    python main_train_model.py --models resnet --bugs 0 1 2     # a few versions
    python main_train_model.py --preset paper --device cuda     # the paper's grid
    python main_train_model.py --mode evaluate                  # re-measure saved versions
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import FaultInjector
import launchers
from pipeline import cli, flags
from pipeline.jobs import step_of
from storage.settings import TrainSettings


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
    launch = launchers.launch_settings(args)
    grid, _ = cli.prepare(args, writable=[args.model_root])  # bad requests refused before hours of work
    versions = [(dataset, model, bug) for dataset in grid.datasets for model, bug in grid.versions(dataset)]
    if args.mode == "train":
        versions = with_healthy_versions(versions)
    training = TrainSettings(lr=args.lr, batch_size=args.batch_size, seed=args.seed, image_size=args.image_size,
                             amp=args.amp)
    jobs = []
    for dataset, model, bug in versions:
        settings = cli.job_settings(args, mode=args.mode, training=replace(training, epochs=grid.epochs_for(model)))
        jobs += cli.make_jobs(step_of(bug) if args.mode == "train" else "train", [(dataset, model, bug)], args,
                              settings)
    return launchers.launch_and_report(jobs, launch)


def with_healthy_versions(versions: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The versions, each derived one (faults 10-12) preceded by the healthy version it is derived from."""
    wanted = []
    for dataset, model, bug in versions:
        if FaultInjector.is_test_data_only(bug):
            wanted.append((dataset, model, FaultInjector.HEALTHY))
        wanted.append((dataset, model, bug))
    datasets = list(dict.fromkeys(dataset for dataset, _, _ in versions))
    return sorted(dict.fromkeys(wanted), key=lambda v: (datasets.index(v[0]), v[2] != FaultInjector.HEALTHY))


if __name__ == "__main__":
    cli.run_main(main)
