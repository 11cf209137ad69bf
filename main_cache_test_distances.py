"""Step 3: cache every version's test-set DeepFool distances and labels in the paper's layout.

Per version ``{info-root}/test_information_cached/{DATASET}_{model}_bug{id}_{what}.npy`` with
``what`` = ``distances`` and ``dnn_labels`` (the paper's files) plus ``success`` (did DeepFool flip
the label) and ``probabilities`` (softmax, for the soft-voting baselines); per test set
``{DATASET}_ground_truth.npy`` (``{DATASET}_bug{11,12}_ground_truth.npy`` for the shifted sets).

Examples:
    python main_cache_test_distances.py
    python main_cache_test_distances.py --preset paper --device cuda --batch-size 512
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

import cli
import ModelManager
from Attacker import DEFAULT_ATTACK_BATCH, Attacker
from DatasetManager import DatasetCache
from utils import (
    atomic_save_npy,
    cache_path,
    checkpoint_path,
    ground_truth_path,
    is_fresh,
    metadata_path,
    version_key,
)

#: what each version's cache holds; distances last, so its presence means the version is complete
CACHE_FILES = ("dnn_labels", "success", "probabilities", "distances")


def main(argv=None) -> int:
    parser = cli.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    grid, device = cli.prepare(args, writable=[args.info_root])
    versions = cli.trained_versions(grid, args.model_root)
    datasets = DatasetCache(args.data_root)
    rows, checked_truths = [], set()
    for dataset, model_name, bug in tqdm(versions, desc="test caches", unit="version", disable=args.quiet):
        key = version_key(model_name, dataset, bug)
        paths = {what: cache_path(args.info_root, dataset, model_name, bug, what) for what in CACHE_FILES}
        data = datasets.get(dataset, bug, grid.max_inputs)
        truth_path = ground_truth_path(args.info_root, dataset, bug)
        if truth_path not in checked_truths:
            write_ground_truth(truth_path, data.y_test.numpy())
            checked_truths.add(truth_path)
        # up to date: newer than the checkpoint, its metadata and the ground truth it answers
        sources = [checkpoint_path(args.model_root, model_name, dataset, bug),
                   metadata_path(args.model_root, model_name, dataset, bug), truth_path]
        if not args.force and is_fresh(paths.values(), sources):
            rows.append((key, "", "", "", "skipped (up to date)"))
            continue
        model = ModelManager.load_version(model_name, dataset, bug, device, model_root=args.model_root,
                                          data_root=args.data_root)
        batch_size = args.batch_size or DEFAULT_ATTACK_BATCH
        loader = data.at(image_size=model.metadata["image_size"], batch_size=batch_size).test_loader
        result = Attacker(model.model_structure, device=device).attack_loader(loader, progress=not args.quiet,
                                                                              description=key)
        for what in CACHE_FILES:
            atomic_save_npy(paths[what], getattr(result, what if what != "dnn_labels" else "labels"))
        accuracy = float((result.labels == data.y_test.numpy()).mean())
        rows.append((key, len(result.labels), f"{accuracy:.4f}", f"{np.median(result.distances):.4f}", "cached"))
    print(f"{'version':<28} {'n_test':>6} {'test_acc':>8} {'median_d':>9}  status")
    for key, n_test, accuracy, median, status in rows:
        print(f"{key:<28} {n_test!s:>6} {accuracy!s:>8} {median!s:>9}  {status}")
    return 0


def write_ground_truth(path, labels: np.ndarray) -> None:
    """Write a test set's labels unless the file already holds exactly them.

    A changed test set (another --max-inputs, say) rewrites it, which makes every cache that
    answered the old one out of date.
    """
    if path.is_file():
        try:
            if np.array_equal(np.load(path, allow_pickle=False), labels):
                return
        except (ValueError, OSError, EOFError):
            pass  # unreadable: rewritten below
    atomic_save_npy(path, labels.astype(np.int64))


if __name__ == "__main__":
    cli.run_main(main)
