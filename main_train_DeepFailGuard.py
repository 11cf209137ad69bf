"""Step 2: fit each version's failure model (KDEs of validation DeepFool distances, correct vs wrong).

Writes ``{info-root}/kde_results/{key}_{correct,wrong}.npz`` and a figure per version in
``{output}/figures/``. Versions with test-data faults (10-12) share the healthy version's KDEs.

Examples:
    python main_train_DeepFailGuard.py                       # every trained DIGITS version
    python main_train_DeepFailGuard.py --models resnet --bugs 0 8 --device cuda
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import cli
import ModelManager
import plotting
from Attacker import DEFAULT_ATTACK_BATCH
from DatasetManager import DatasetCache
from DeepFailGuard import DeepFailGuardTrainer
from kde import GaussianKDE
from utils import (
    UsageError,
    checkpoint_bug_id,
    checkpoint_path,
    is_fresh,
    kde_paths,
    metadata_path,
    version_key,
)


def main(argv=None) -> int:
    parser = cli.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    grid, device = cli.prepare(args, writable=[args.info_root, args.output])
    # one failure model per checkpoint: faults 10-12 reuse the healthy one
    trained = cli.trained_versions(grid, args.model_root)
    versions = list(dict.fromkeys((d, m, checkpoint_bug_id(b)) for d, m, b in trained))
    datasets = DatasetCache(args.data_root)
    trainer = DeepFailGuardTrainer(progress=not args.quiet)
    rows = []
    for dataset, model_name, bug in tqdm(versions, desc="failure models", unit="version", disable=args.quiet):
        key = version_key(model_name, dataset, bug)
        correct_path, wrong_path = kde_paths(args.info_root, model_name, dataset, bug)
        figure_path = Path(args.output) / "figures" / f"kde_{key}.png"
        data = datasets.get(dataset, bug, grid.max_inputs)
        sources = [checkpoint_path(args.model_root, model_name, dataset, bug),
                   metadata_path(args.model_root, model_name, dataset, bug)]
        if not args.force and is_fresh([correct_path, wrong_path], sources) and \
                fitted_inputs(correct_path, wrong_path) == len(data.y_val):
            if not figure_path.is_file():  # e.g. a run killed between the KDEs and their figure
                draw_figure_from_kdes(correct_path, wrong_path, figure_path, key)
            rows.append((key, "", "", "", "", "skipped (up to date)"))
            continue
        model = ModelManager.load_version(model_name, dataset, bug, device, model_root=args.model_root,
                                          data_root=args.data_root)
        data = data.at(image_size=model.metadata["image_size"], batch_size=args.batch_size or DEFAULT_ATTACK_BATCH)
        fit = trainer.train(model.model_structure, data.val_loader, correct_path, wrong_path, device=device)
        plotting.save_kde_figure(fit.distances, fit.correct, fit.correct_kde, fit.wrong_kde,
                                 figure_path, title=f"{key}: validation distances")
        rows.append((key, len(fit.correct), int(fit.correct.sum()), int((~fit.correct).sum()),
                     f"{fit.result.success.mean():.3f}", "fitted"))
    print(f"{'version':<28} {'n_val':>6} {'correct':>8} {'wrong':>6} {'flipped':>8}  status")
    for key, n_val, n_correct, n_wrong, flipped, status in rows:
        print(f"{key:<28} {n_val!s:>6} {n_correct!s:>8} {n_wrong!s:>6} {flipped!s:>8}  {status}")
    return 0


def draw_figure_from_kdes(correct_path, wrong_path, figure_path, key: str) -> None:
    """The figure of a fitted failure model, from its KDE files alone: their points are the distances."""
    correct_kde, wrong_kde = GaussianKDE.load(correct_path), GaussianKDE.load(wrong_path)
    distances = np.concatenate([correct_kde.points, wrong_kde.points])
    correct = np.arange(len(distances)) < correct_kde.n
    plotting.save_kde_figure(distances, correct, correct_kde, wrong_kde, figure_path,
                             title=f"{key}: validation distances")


def fitted_inputs(correct_path, wrong_path) -> int | None:
    """How many validation inputs existing KDE files were fitted on (None if unreadable: refit)."""
    try:
        return GaussianKDE.load(correct_path).n + GaussianKDE.load(wrong_path).n
    except UsageError:
        return None


if __name__ == "__main__":
    cli.run_main(main)
