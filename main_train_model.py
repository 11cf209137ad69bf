"""Step 1: train the versions (architecture × dataset × fault) and record what they measure.

Examples:
    python main_train_model.py                                  # the DIGITS grid, CPU-friendly
    python main_train_model.py --models resnet --bugs 0 1 2     # a few versions
    python main_train_model.py --preset paper --device cuda     # the paper's grid
    python main_train_model.py --mode evaluate                  # re-measure saved versions
"""

from __future__ import annotations

import argparse
import math

import cli
import FaultInjector
from jobs import step_of
from utils import UsageError


def parse_args(argv) -> argparse.Namespace:
    parser = cli.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("train", "evaluate"), default="train",
                        help="train missing versions, or re-measure existing ones")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the dataset's)")
    parser.add_argument("--image-size", type=cli.positive_int, default=None,
                        help="side length the versions see (default: the dataset's, at least the model's minimum)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed-precision (bfloat16) training; a trained version is kept, add --force to retrain "
                             "(default: on with CUDA, off elsewhere)")
    cli.add_launcher_flags(parser)
    args = parser.parse_args(argv)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be positive and finite, got {args.lr}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    grid, _ = cli.prepare(args, writable=[args.model_root])  # bad requests refused before hours of work
    versions = [(dataset, model, bug) for dataset in grid.datasets for model, bug in grid.versions(dataset)]
    if args.mode == "train":
        versions = with_healthy_versions(versions)
    jobs = []
    for dataset, model, bug in versions:
        jobs += cli.make_jobs(step_of(bug) if args.mode == "train" else "train", [(dataset, model, bug)], args,
                              mode=args.mode, epochs=grid.epochs_for(model), lr=args.lr, seed=args.seed,
                              image_size=args.image_size, amp=args.amp, max_inputs=None)
    return cli.launch_and_report(jobs, args)


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
