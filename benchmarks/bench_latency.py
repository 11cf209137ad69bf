"""Deployment latency of real-time DeepFailGuard against majority voting, per input and per distance mode.

Three versions (default: the demo's SqueezeNet, DenseNet-121, ResNet-50 on DIGITS): loaded from
``--model-root`` where a healthy checkpoint is there, else trained for ``--train-epochs`` epochs
(0: freshly initialised; a trained network's DeepFool takes more steps, so prefer trained ones).
Each gets a ``DeepFailGuardModule`` with KDEs fitted on ``--kde-points`` synthetic distances
(the posterior's cost depends only on their number) and a validation accuracy of 0.95.

Timed in the same process, on the same DIGITS test images at ``--image-size``, each a median of
``--repeats`` runs, closed by a device synchronisation:

  dfg    ``DeepFailGuard.infer(image)`` at batch 1; ``DeepFailGuard.batch_infer`` at ``--batch``
         (each version's DeepFool attack, then the posterior and the selection)
  vote   majority voting: the three networks' forward passes under ``torch.no_grad`` and the vote,
         in the attacker's numerics (full float32, cuDNN autotuner), labels copied to the host

``dfg_features`` (``--dfg-features``): each version's one forward pass to its penultimate features (the ``feature``
mode's), the right and wrong validation groups' class-conditional Gaussian densities of them (fitted on the version's
validation features, as ``selection/likelihood_ratio.py`` does), the posterior's log-odds (the score) and the
choice, at both batch sizes.

and prints, for each distance mode of ``--distances`` (``storage.settings.distance_mode``: the paper's ``deepfool``,
``deepfool:K``, ``first-order[:K]``, ``feature[:K]``), milliseconds per input, the ratio dfg/vote, and each
version's attack alone at the batch size. Voting is timed once per batch size; every mode is compared with it.

    python benchmarks/bench_latency.py --device cuda [--model-root DIR] [--image-size 128] [--batch 64]
    python benchmarks/bench_latency.py --device cpu --image-size 32 --distances deepfool deepfool:2 first-order
    python benchmarks/bench_latency.py --device cpu --image-size 32 --batch 4 --repeats 2 --train-epochs 0  # dry
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bf16_diagnosis import subset  # noqa: E402

import ModelManager  # noqa: E402
from Attacker import full_float32_convolutions  # noqa: E402
from DatasetManager import create_dataset  # noqa: E402
from DeepFailGuard import DeepFailGuard, DeepFailGuardModule  # noqa: E402
from distances.feature import FeatureDistance, feature_vectors  # noqa: E402
from failure_model.kde import GaussianKDE  # noqa: E402
from mydataset.base import resize_batch  # noqa: E402
from pipeline import flags  # noqa: E402
from selection import SCORES  # noqa: E402
from selection.likelihood_ratio import fit_groups  # noqa: E402
from storage.settings import (  # noqa: E402
    Roots,  # noqa: E402
    TrainSettings,
    distance_mode,
)
from utils import choose_device, seed_everything  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function, argument, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function(argument)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def get_version(model_name: str, data, device, args, scratch: Path):
    if args.model_root and ModelManager.is_trained(args.model_root, model_name, "DIGITS", 0):
        return ModelManager.load_version(model_name, "DIGITS", 0, device, roots=Roots(model=args.model_root)), "loaded"
    if args.train_epochs:
        with contextlib.redirect_stdout(sys.stderr):
            model = ModelManager.create_model(model_name, subset(data, args.max_train), mode="train", device=device,
                                              settings=TrainSettings(epochs=args.train_epochs,
                                                                     image_size=args.image_size),
                                              roots=Roots(model=scratch), progress=False)
        return model, f"trained {args.train_epochs} epoch(s)"
    seed_everything(0)
    model = ModelManager.build_version(model_name, data.num_classes)
    model.model_structure.to(device).eval()
    model.metadata["image_size"] = model.input_size(data.image_size)
    return model, "freshly initialised"


def synthetic_kdes(scratch: Path, name: str, points: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    paths = scratch / f"{name}_correct.npz", scratch / f"{name}_wrong.npz"
    GaussianKDE.fit(rng.gamma(4.0, 0.5, points)).save(paths[0])
    GaussianKDE.fit(rng.gamma(2.0, 0.3, max(2, points // 10))).save(paths[1])
    return paths


def feature_selector(versions, sizes, data, device):
    """``dfg_features`` at real time: a function from a batch of images to each input's chosen label, with the
    versions' right and wrong groups fitted on their validation features (Ledoit–Wolf, as the score does)."""
    measures, groups, accuracies = [], [], []
    for model, size in zip(versions, sizes):
        measure = FeatureDistance(model.model_structure, device, image_size=size, check_success=False)
        with torch.no_grad():
            logits, z = measure.features(resize_batch(data.x_val.to(device), size))
        labels, truth = logits.argmax(dim=1).cpu().numpy(), data.y_val.numpy()
        validation = SimpleNamespace(correct=labels == truth, truth=truth, outputs={"features": feature_vectors(z)})
        fitted = fit_groups(validation, "ledoit_wolf", 1)
        if fitted is None:
            raise SystemExit(f"{model.model_name}: no wrong (or no right) validation input: no dfg_features to time")
        measures.append(measure)
        groups.append(fitted)
        accuracies.append(float(validation.correct.mean()))

    @torch.no_grad()
    def select(batch: torch.Tensor) -> np.ndarray:
        chances, labels = [], []
        for measure, (right, wrong), accuracy, size in zip(measures, groups, accuracies, sizes):
            logits, z = measure.features(resize_batch(batch.to(device), size))
            features = feature_vectors(z).astype(np.float64)
            chances.append(SCORES["dfg_features"].from_groups(right, wrong, features,
                                                              SimpleNamespace(val_acc=accuracy)))
            labels.append(logits.argmax(dim=1).cpu().numpy())
        best = np.argmax(np.stack(chances), axis=0)
        return np.stack(labels)[best, np.arange(len(best))]

    return select


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs=3, default=["squeezenet", "densenet", "resnet"], metavar="MODEL")
    parser.add_argument("--model-root", default=None, help="load healthy DIGITS checkpoints from here where present")
    parser.add_argument("--train-epochs", type=int, default=2, help="train missing versions this long (0: untrained)")
    parser.add_argument("--max-train", type=flags.positive_int, default=None, help="train on the first N images only")
    parser.add_argument("--image-size", type=flags.positive_int, default=None,
                        help="input size of every version (default: each version's own)")
    parser.add_argument("--batch", type=flags.positive_int, default=64, help="the batched measurement's size")
    parser.add_argument("--repeats", type=flags.positive_int, default=20)
    parser.add_argument("--kde-points", type=flags.positive_int, default=360, help="DIGITS' validation size")
    parser.add_argument("--distances", nargs="+", type=flags.distance_flag,
                        default=[distance_mode(m) for m in ("deepfool", "deepfool:2", "first-order", "first-order:2",
                                                            "feature")],
                        help="distance modes to time (default: deepfool deepfool:2 first-order first-order:2 feature)")
    parser.add_argument("--dfg-features", action="store_true",
                        help="also time dfg_features (DeepFailGuard's selection with the feature likelihood ratio)")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    data = create_dataset("DIGITS")
    if args.image_size:
        data = data.at(image_size=args.image_size)
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as scratch_name:
        scratch = Path(scratch_name)
        versions, networks, sizes, kdes = [], [], [], []
        for model_name in args.models:
            model, origin = get_version(model_name, data, device, args, scratch)
            size = args.image_size or model.metadata["image_size"]
            versions.append(model)
            kdes.append(synthetic_kdes(scratch, model_name, args.kde_points))
            networks.append(model.model_structure.to(device).eval())
            sizes.append(size)
            print(f"{model_name}: {origin}, input {size}x{size}, test accuracy {model.metadata.get('test_acc')}",
                  flush=True)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thr)"
        print(f"latency on {where}, torch {torch.__version__}; median of {args.repeats}; KDEs of {args.kde_points} "
              "synthetic distances")
        images = data.x_test[:max(args.batch, args.repeats)]

        @torch.no_grad()
        def vote(batch: torch.Tensor) -> np.ndarray:
            with full_float32_convolutions():
                labels = torch.stack([net(resize_batch(batch.to(device, non_blocking=True), size)).argmax(dim=1)
                                      for net, size in zip(networks, sizes)])
            return torch.mode(labels, dim=0).values.cpu().numpy()

        vote_ms = {}
        for batch_size in (1, args.batch):
            vote(images[:batch_size])  # warm-up: cuDNN autotuning, allocator
            vote_ms[batch_size] = 1000 * median_seconds(vote, images[:batch_size], device, args.repeats) / batch_size
        rows, alone = [], {}
        for distance in args.distances:
            modules = [DeepFailGuardModule(model, *paths, 0.95, device=device, name=model.model_name,
                                           image_size=size, distance=distance)
                       for model, paths, size in zip(versions, kdes, sizes)]
            guard = DeepFailGuard(modules)
            single = iter(range(10 ** 9))

            def dfg_single(batch, guard=guard, single=single):
                return guard.infer(images[next(single) % len(images)])

            def dfg_batch(batch, guard=guard, modules=modules):
                return guard.batch_infer([[(batch, torch.zeros(len(batch)))]] * len(modules))

            for batch_size, dfg in ((1, dfg_single), (args.batch, dfg_batch)):
                batch = images[:batch_size]
                dfg(batch)  # warm-up
                rows.append((distance.mode, batch_size,
                             1000 * median_seconds(dfg, batch, device, args.repeats) / batch_size))
            batch = images[:args.batch]
            for module in modules:
                module.attack(batch)
                alone[distance.mode, module.name] = \
                    1000 * median_seconds(module.attack, batch, device, args.repeats) / len(batch)
        if args.dfg_features:
            select = feature_selector(versions, sizes, data, device)
            for batch_size in (1, args.batch):
                select(images[:batch_size])  # warm-up
                rows.append(("dfg_features", batch_size,
                             1000 * median_seconds(select, images[:batch_size], device, args.repeats) / batch_size))
        print(f"{'distance':<15} {'batch':>5} {'dfg_ms/input':>12} {'vote_ms/input':>13} {'dfg/vote':>9}")
        for mode, batch_size, dfg_ms in rows:
            print(f"{mode:<15} {batch_size:>5} {dfg_ms:>12.3f} {vote_ms[batch_size]:>13.4f} "
                  f"{dfg_ms / vote_ms[batch_size]:>8.1f}x")
        print(f"each version's attack alone at batch {args.batch} (ms/input):")
        for (mode, name), ms in alone.items():
            print(f"  {mode:<15} {name:<11} {ms:.3f}")
    return 0


if __name__ == "__main__":
    flags.run_main(main)
