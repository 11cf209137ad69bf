"""The whole DeepFailGuard pipeline on DIGITS, written only with the paper repository's classes and calls.

    python examples/paper_style_pipeline.py [--quick] [--workdir DIR] [--device cpu]

Two versions (a healthy SqueezeNet and one carrying fault 5, a third of the epochs) are trained with
``ModelManager.create_model``, their failure models fitted with ``DeepFailGuardTrainer.train``, their test
distances cached with ``Attacker.cal_all_distance`` and ``np.save`` under the paper's file names (as its
``main_cache_test_distances.py`` does), and DeepFailGuard is evaluated from that cache with
``batch_infer_cached`` against majority voting, then on the first inputs in real time with ``batch_infer``.

The only keywords beyond the paper's are where files go (``model_root``, ``info_root``: everything is
written under ``--workdir``, a fresh temporary folder by default, never the repository's own folders)
and the training budget (``epochs``). ``--quick`` trains three epochs (so one for the fault-5 version)
and uses 32 inputs per split (about a minute on two idle CPU cores); the default takes about two. A run
in an existing ``--workdir`` reuses its trained versions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from Attacker import Attacker
from DatasetManager import DatasetManager
from DeepFailGuard import DeepFailGuard, DeepFailGuardModule, DeepFailGuardTrainer
from ModelManager import ModelManager
from selection.base import majority_vote  # the paper's utils.nvp_results (ties: the smallest label)

DATASET = "DIGITS"
BATCH_SIZE = 32
#: (model name as the paper spells it, fault, epochs before the fault; fault 5 trains a third of them)
VERSIONS = (("SqueezeNet", 0, 6), ("SqueezeNet", 5, 6))
DEFAULT_INPUTS, QUICK_INPUTS, QUICK_EPOCHS = 96, 32, 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs, {QUICK_INPUTS} inputs per split")
    parser.add_argument("--workdir", type=Path, help="where every file goes (default: a fresh temporary folder)")
    parser.add_argument("--inputs", type=int, help=f"validation and test inputs used (default {DEFAULT_INPUTS})")
    parser.add_argument("--device", default=0, help="an int as in the paper (that CUDA device, or the CPU), or cpu")
    args = parser.parse_args(argv)
    if isinstance(args.device, str) and args.device.isdigit():
        args.device = int(args.device)
    args.inputs = args.inputs or (QUICK_INPUTS if args.quick else DEFAULT_INPUTS)
    return args


def first_inputs(loader, count: int) -> list:
    """The first batches of a loader holding ``count`` inputs (rounded up to whole batches)."""
    return list(islice(loader, -(-count // BATCH_SIZE)))


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dfg_paper_style_"))
    model_root, info_root = workdir / "mymodel" / "model", workdir / "input_information"
    started = time.perf_counter()
    print(f"workdir: {workdir}")

    datasets, modules = [], []
    for model_name, bug_id, epochs in VERSIONS:
        key = f"{model_name.lower()}_{DATASET}_bug{bug_id}" if bug_id else f"{model_name.lower()}_{DATASET}"
        dataset = DatasetManager.create_dataset(DATASET, bug_id=bug_id, batch_size=BATCH_SIZE)
        # step 1: train the version (its fault injected), or load it from an earlier run in this workdir
        mode = "load" if (model_root / f"{key}.pth").is_file() else "train"
        clock = time.perf_counter()
        model = ModelManager.create_model(model_name=model_name, dataset=dataset, mode=mode, bug_id=bug_id,
                                          device=args.device, model_root=model_root,
                                          epochs=QUICK_EPOCHS if args.quick else epochs, progress=False)
        print(f"{key:22s} {mode:5s} val acc {model.val_acc:.4f}  test acc {model.test_acc:.4f}  "
              f"({time.perf_counter() - clock:.0f} s)")
        # step 2: fit its failure model on the validation inputs
        clock = time.perf_counter()
        correct_kde_path = info_root / "kde_results" / f"{key}_correct.npz"
        wrong_kde_path = info_root / "kde_results" / f"{key}_wrong.npz"
        DeepFailGuardTrainer.train(pytorch_model=model.model_structure,
                                   val_dataloader=first_inputs(dataset.val_loader, args.inputs),
                                   correct_kde_path=correct_kde_path, wrong_kde_path=wrong_kde_path,
                                   device=args.device)
        # step 3: cache its test distances and labels, in the paper's file names
        distances, dnn_labels = Attacker(model.model_structure, device=args.device).cal_all_distance(
            first_inputs(dataset.test_loader, args.inputs))
        cache = info_root / "test_information_cached"
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"{DATASET}_{model.model_name}_bug{bug_id}_distances.npy", np.array(distances))
        np.save(cache / f"{DATASET}_{model.model_name}_bug{bug_id}_dnn_labels.npy", np.array(dnn_labels))
        print(f"{'':22s} failure model fitted, {len(distances)} test distances cached "
              f"({time.perf_counter() - clock:.0f} s)")
        datasets.append(dataset)
        modules.append(DeepFailGuardModule(model=model, correct_kde_path=correct_kde_path,
                                           wrong_kde_path=wrong_kde_path, val_acc=model.val_acc, device=args.device))

    test_batches = first_inputs(datasets[0].test_loader, args.inputs)
    ground_truth = np.concatenate([labels.numpy() for _, labels in test_batches])
    np.save(info_root / "test_information_cached" / f"{DATASET}_ground_truth.npy", ground_truth)

    # step 4a: evaluate from the cache
    dfg = DeepFailGuard(modules)
    dfg_labels, all_model_labels = dfg.batch_infer_cached(datasets, info_root=info_root)
    voting_labels = majority_vote(all_model_labels)
    upper = np.mean(np.any(np.asarray(all_model_labels) == ground_truth, axis=0))
    print(f"\naccuracy on {len(ground_truth)} test inputs, from the cache:")
    rows = [(f"{name} (fault {bug_id})", np.mean(labels == ground_truth))
            for (name, bug_id, _), labels in zip(VERSIONS, all_model_labels)]
    rows += [("DeepFailGuard", np.mean(dfg_labels == ground_truth)),
             ("majority voting", np.mean(voting_labels == ground_truth)), ("upper limit (any version right)", upper)]
    for name, value in rows:
        print(f"  {name:32s} {value:.4f}")

    # step 4b: the first batch again, in real time (every version attacked anew)
    clock = time.perf_counter()
    realtime_labels, _ = dfg.batch_infer([test_batches[:1]] * len(modules))
    agree = int(np.sum(realtime_labels == dfg_labels[:len(realtime_labels)]))
    print(f"real time: same answer as the cache on {agree}/{len(realtime_labels)} inputs "
          f"({time.perf_counter() - clock:.0f} s); total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
