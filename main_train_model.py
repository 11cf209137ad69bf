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
import sys

from tqdm.auto import tqdm

import cli
import ModelManager
from utils import TEST_ONLY_FAULTS, UsageError, version_key


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
    args = parser.parse_args(argv)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be positive and finite, got {args.lr}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    grid, _ = cli.prepare(args, writable=[args.model_root])  # bad requests refused before hours of work
    jobs = [(dataset, model, bug) for dataset in grid.datasets for model, bug in grid.versions(dataset)]
    rows = []
    for dataset, model_name, bug in tqdm(jobs, desc="versions", unit="version", disable=args.quiet):
        key = version_key(model_name, dataset, bug)
        settings = ModelManager.requested_settings(model_name, dataset, epochs=grid.epochs_for(model_name), lr=args.lr,
                                                   batch_size=args.batch_size, seed=args.seed,
                                                   image_size=args.image_size)
        reason = ModelManager.training_status(args.model_root, model_name, dataset, bug, settings)
        if args.mode == "train" and not args.force and reason is None:
            model = ModelManager.create_model(model_name, dataset, "load", bug, device="cpu",
                                              model_root=args.model_root, data_root=args.data_root)
            status = "skipped (up to date)"
        else:
            model = ModelManager.create_model(
                model_name, dataset, args.mode, bug, device=args.device, model_root=args.model_root,
                data_root=args.data_root, epochs=settings["epochs"], lr=settings["lr"],
                batch_size=settings["batch_size"], seed=args.seed, image_size=args.image_size,
                progress=not args.quiet, amp=args.amp)
            status = "evaluated" if args.mode == "evaluate" or bug in TEST_ONLY_FAULTS else "trained"
            if args.mode == "train" and reason not in (None, "missing"):
                status += f" ({reason})"
        rows.append((key, model.metadata.get("epochs", ""), model.val_acc, model.test_acc,
                     model.metadata.get("train_seconds", ""), status))
    print_table(rows)
    return 0


def print_table(rows) -> None:
    print(f"{'version':<28} {'epochs':>6} {'val_acc':>8} {'test_acc':>8} {'train_s':>8}  status")
    for key, epochs, val_acc, test_acc, seconds, status in rows:
        val = f"{val_acc:.4f}" if val_acc is not None else "-"
        test = f"{test_acc:.4f}" if test_acc is not None else "-"
        print(f"{key:<28} {epochs!s:>6} {val:>8} {test:>8} {seconds!s:>8}  {status}")
    sys.stdout.flush()


if __name__ == "__main__":
    cli.run_main(main)
