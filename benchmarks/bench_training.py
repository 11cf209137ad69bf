"""Training throughput (images/s) per architecture and precision, and the share of the data path (issue 11, item 2).

For each model and precision, ``--warmup`` then ``--steps`` training steps exactly as ModelTrainer
takes them (its optimizer, autocast, memory format and loss), on DIGITS batches that the project's
TensorLoader upsamples to ``--image-size`` on the training device (``ModelTrainer.device_batches``;
``--resize-on host`` adds the former way, resized on the host and then copied, for comparison).
Three timings, each over the same number of steps and closed by a device synchronisation:

  full      loader (batch assembly) + host-to-device copy + resize + forward/backward/optimizer step
  network   the step alone, on one batch already on the device
  data      the loader, the copy and the resize alone, no network

and prints images/s (full), images/s (network only), the data path's time as a share of the full
step (``data``/``full``: what it costs if nothing overlaps) and the exposed share
(``(full - network)/full``: what it actually added).

Precisions: ``bf16-cl`` (bf16 autocast + channels-last: the CUDA default), ``fp32`` (float32,
contiguous), ``fp32-cl``, ``bf16``. float32 convolutions use the backend's TF32 default (printed).

    python benchmarks/bench_training.py --device cuda [--image-size 128] [--steps 50] [--warmup 10]
    python benchmarks/bench_training.py --device cpu --image-size 32 --steps 2 --warmup 1 --models squeezenet
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ModelManager  # noqa: E402
from DatasetManager import create_dataset  # noqa: E402
from ModelTrainer import ModelTrainer  # noqa: E402
from pipeline import flags  # noqa: E402
from utils import choose_device, seed_everything  # noqa: E402

PRECISIONS = {"bf16-cl": (True, True), "bf16": (True, False), "fp32": (False, False), "fp32-cl": (False, True)}


class HostResized:
    """A loader's batches resized on the host, as before ``TensorLoader.on``: no ``on`` to call."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(trainer: ModelTrainer, loader, batch_size: int):
    """The training batches on the device exactly as ModelTrainer takes them (``device_batches``),
    epoch after epoch, each assembled, copied and resized anew; full batches only."""
    while True:
        yield from (batch for batch in trainer.device_batches(loader) if len(batch[1]) == batch_size)


def timed(function, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def measure(model_name: str, precision: str, data, device, *, image_size: int, batch_size: int | None,
            steps: int, warmup: int, repeats: int, resize_on: str = "device") -> dict:
    amp, channels_last = PRECISIONS[precision]
    seed_everything(0)
    model = ModelManager.build_version(model_name, data.num_classes)
    size = max(image_size, model.min_input_size)
    defaults = data.source.training_defaults(model_name)
    sized = data.at(image_size=size, batch_size=batch_size or defaults.batch_size)
    trainer = ModelTrainer(model.model_structure, device=device, epochs=1, recipe=defaults, amp=amp,
                           channels_last=channels_last, progress=False)
    trainer.model.train()
    loader = sized.train_loader if resize_on == "device" else HostResized(sized.train_loader)
    full_batches = forever(trainer, loader, sized.batch_size)

    def run_full(n):
        for _ in range(n):
            trainer.train_step(*next(full_batches))

    def run_data(n):
        for _ in range(n):
            next(full_batches)

    staged = next(full_batches)

    def run_network(n):
        for _ in range(n):
            trainer.train_step(*staged)

    run_full(warmup)  # cuDNN autotuning, allocator, lazy initialisation
    times = {"full": [], "network": [], "data": []}
    for _ in range(repeats):  # interleaved, so drifting load hits all three alike
        times["full"].append(timed(lambda: run_full(steps), device))
        times["network"].append(timed(lambda: run_network(steps), device))
        times["data"].append(timed(lambda: run_data(steps), device))
    median = {name: statistics.median(values) for name, values in times.items()}
    images = steps * sized.batch_size
    return {"model": model_name, "precision": precision, "resize_on": resize_on, "size": size,
            "batch": sized.batch_size,
            "images_per_s": images / median["full"], "network_images_per_s": images / median["network"],
            "data_share": median["data"] / median["full"],
            "exposed_share": max(0.0, median["full"] - median["network"]) / median["full"],
            "ms_per_step": 1000 * median["full"] / steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(ModelManager.MODELS))
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=["bf16-cl", "fp32"])
    parser.add_argument("--image-size", type=flags.positive_int, default=128, help="the paper's size (AlexNet: >= 63)")
    parser.add_argument("--batch-size", type=flags.positive_int, default=None, help="default: DIGITS' for each model")
    parser.add_argument("--steps", type=flags.positive_int, default=50, help="timed steps per timing")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=flags.positive_int, default=3, help="median of this many interleaved timings")
    parser.add_argument("--resize-on", nargs="+", choices=["device", "host"], default=["device"],
                        help="where batches are upsampled: device (ModelTrainer's way) and/or host (the former)")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    data = create_dataset("DIGITS")
    where = (f"{torch.cuda.get_device_name(device)}, cudnn TF32 {torch.backends.cudnn.allow_tf32}"
             if device.type == "cuda" else f"{device} ({torch.get_num_threads()} threads)")
    print(f"training throughput on {where}, torch {torch.__version__}; DIGITS upsampled to {args.image_size} "
          f"by TensorLoader; {args.steps} steps after {args.warmup} warm-up, median of {args.repeats}")
    print(f"{'model':<11} {'precision':<9} {'resize':<6} {'size':>4} {'batch':>5} {'images/s':>9} {'net_only/s':>10} "
          f"{'ms/step':>8} {'data_share%':>11} {'exposed%':>8}", flush=True)
    failed = 0
    for model_name, precision, resize_on in itertools.product(args.models, args.precisions, args.resize_on):
        try:
            with contextlib.redirect_stdout(sys.stderr):
                row = measure(model_name, precision, data, device, image_size=args.image_size,
                              batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                              repeats=args.repeats, resize_on=resize_on)
        except Exception as exc:  # one architecture out of memory must not lose the others' rows
            failed += 1
            print(f"{model_name:<11} {precision:<9} failed: {type(exc).__name__}: {exc}"[:300], flush=True)
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"{row['model']:<11} {row['precision']:<9} {row['resize_on']:<6} {row['size']:>4} {row['batch']:>5} "
              f"{row['images_per_s']:>9.1f} {row['network_images_per_s']:>10.1f} {row['ms_per_step']:>8.2f} "
              f"{100 * row['data_share']:>11.1f} {100 * row['exposed_share']:>8.1f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    flags.run_main(main)
