"""Why does SqueezeNet lose accuracy under bf16 autocast? (issue 11; 88.3 % on an H200 against 98.3 % in float32)

Trains healthy SqueezeNet on DIGITS in variants that isolate one suspect each, every variant with
every seed, and prints one row per run: test accuracy as the project records it (float32
evaluation), test accuracy when the same network is evaluated under the training autocast, the final
training loss and accuracy, and the seconds spent training.

  fp32            (a) float32, as ``--no-amp`` trains (channels-last on CUDA)       create_model
  bf16            (b) bf16 autocast as the pipeline trains on CUDA (with the architecture's
                      ``float32_under_amp``: SqueezeNet's classifier in float32)    create_model
  bf16-fp32head   (c) bf16 autocast, but SqueezeNet's ``classifier`` (dropout, final 1x1 conv, ReLU,
                      adaptive average pool) in float32: ModelTrainer(float32_modules=("classifier",)),
                      the mechanism an architecture's ``float32_under_amp`` uses    ModelTrainer
  bf16-plain      (d) bf16 autocast everywhere, no float32 modules (the loss on ``logits.float()``
                      as ModelTrainer always computes it): how the pipeline trained before    ModelTrainer
  bf16-contig     bf16 autocast without channels-last (other cuDNN kernels)         ModelTrainer
  fp32-repeat     (e) float32, the first seed once more: run-to-run nondeterminism alone (cuDNN's
                      autotuner, atomics); the seeds of (a) give the seed-to-seed spread   create_model

Besides the accuracies, each row counts the dead classes: classes whose logit is exactly 0 on every
test input (SqueezeNet's head ends in ReLU and average pooling, so a class whose final-convolution
outputs are all negative is never predicted and gets no gradient again: one such class costs about
10 points on DIGITS).

Reading it: if (c) recovers float32's accuracy, the low-precision head is the cause (the last
convolution's 13x13 -> 1 average of ReLU outputs rounded to 8 mantissa bits); if (b) scores high
under bf16 evaluation but low in float32, it is a train/evaluation precision mismatch; if (b)'s
seeds spread as widely as (a) vs (b), it is noise.

    python benchmarks/bf16_diagnosis.py --device cuda [--seeds 42 43] [--epochs 24] [--variants ...]
    python benchmarks/bf16_diagnosis.py --device cpu --epochs 1 --max-train 32 --max-eval 30 --seeds 42  # dry run
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ModelManager  # noqa: E402
from DatasetManager import MyData, create_dataset  # noqa: E402
from ModelTrainer import ModelTrainer  # noqa: E402
from pipeline import flags  # noqa: E402
from storage.settings import (
    Roots,  # noqa: E402
    TrainSettings,  # noqa: E402
)
from utils import SEED, choose_device, seed_everything  # noqa: E402

VARIANTS = ("fp32", "bf16", "bf16-fp32head", "bf16-plain", "bf16-contig", "fp32-repeat")


def subset(data: MyData, max_train: int | None, max_eval: int | None = None) -> MyData:
    """The first ``max_train`` training images and a stratified ``max_eval`` validation and test images
    (for dry runs)."""
    data = data.limited(max_eval)
    if not max_train or max_train >= len(data.y_train):
        return data
    return replace(data, x_train=data.x_train[:max_train], y_train=data.y_train[:max_train])


def amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16


@torch.no_grad()
def dead_classes(network: nn.Module, loader, device: torch.device) -> int:
    """Classes whose logit is exactly 0 on every input of ``loader`` (float32 evaluation)."""
    network.eval()
    alive = None
    for x, _ in loader:
        nonzero = (network(x.to(device)) != 0).any(dim=0)
        alive = nonzero if alive is None else alive | nonzero
    return 0 if alive is None else int((~alive).sum())


@torch.no_grad()
def accuracy(network: nn.Module, loader, device: torch.device, autocast: bool) -> float:
    """Test accuracy of ``network`` in evaluation mode, in float32 or under the training autocast."""
    network.eval()
    correct = seen = 0
    for x, y in loader:
        with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=autocast):
            logits = network(x.to(device))
        correct += int((logits.argmax(dim=1).cpu() == y).sum())
        seen += len(y)
    return correct / max(seen, 1)


def train_via_create_model(model_name: str, data: MyData, device, *, amp: bool, epochs, seed: int, image_size,
                           model_root) -> tuple[nn.Module, dict, MyData]:
    """The project's own path: ``ModelManager.create_model(mode="train")`` into ``model_root``."""
    settings = TrainSettings(epochs=epochs, seed=seed, image_size=image_size, amp=amp)
    model = ModelManager.create_model(model_name, data, mode="train", device=device, settings=settings,
                                      roots=Roots(model=model_root), progress=False)
    sized = data.at(image_size=model.metadata["image_size"], batch_size=model.metadata["batch_size"])
    history = dict(model.metadata["history"], test_acc=model.metadata["test_acc"])
    return model.model_structure, history, sized


def train_direct(model_name: str, data: MyData, device, *, amp: bool, epochs, seed: int, image_size,
                 channels_last: bool | None = None, float32_modules: tuple[str, ...] = ()
                 ) -> tuple[nn.Module, dict, MyData]:
    """``create_model``'s training steps spelled out, so the trainer's options can be changed."""
    seed_everything(seed)
    model = ModelManager.build_version(model_name, data.num_classes)
    defaults = data.source.training_defaults(model_name)
    size = image_size or model.input_size(data.image_size or data.native_size)
    sized = data.at(image_size=size, batch_size=defaults.batch_size, seed=seed)
    trainer = ModelTrainer(model.model_structure, device=device, epochs=epochs, recipe=defaults, amp=amp,
                           channels_last=channels_last, float32_modules=float32_modules, progress=False)
    history = trainer.train_model(sized.train_loader, sized.val_loader)
    network = trainer.model.to(memory_format=torch.contiguous_format).eval()
    history["test_acc"] = trainer.evaluate_model(sized.test_loader)[0]
    return network, history, sized


def run_variant(variant: str, model_name: str, data: MyData, device, *, epochs, seed: int, image_size,
                model_root) -> dict:
    started = time.perf_counter()
    common = dict(epochs=epochs, seed=seed, image_size=image_size)
    if variant in ("fp32", "bf16", "fp32-repeat"):
        network, history, sized = train_via_create_model(model_name, data, device, amp=variant.startswith("bf16"),
                                                         model_root=Path(model_root) / f"{variant}-{seed}", **common)
    elif variant == "bf16-fp32head":
        network, history, sized = train_direct(model_name, data, device, amp=True, float32_modules=("classifier",),
                                               **common)
    elif variant == "bf16-plain":
        network, history, sized = train_direct(model_name, data, device, amp=True, **common)
    elif variant == "bf16-contig":
        network, history, sized = train_direct(model_name, data, device, amp=True, channels_last=False, **common)
    else:
        raise ValueError(variant)
    return {"variant": variant, "seed": seed, "image_size": sized.image_size, "test_acc": history["test_acc"],
            "test_acc_autocast": accuracy(network, sized.test_loader, device, autocast=True),
            "dead_classes": dead_classes(network, sized.test_loader, device),
            "train_loss": history["train_loss"][-1], "train_acc": history["train_acc"][-1],
            "val_acc": history["val_acc"][-1] if history["val_acc"] else float("nan"),
            "seconds": time.perf_counter() - started}


HEADER = (f"{'variant':<15} {'seed':>5} {'size':>4} {'test_acc':>8} {'test_acc_bf16eval':>17} {'train_loss':>10} "
          f"{'train_acc':>9} {'val_acc':>7} {'dead':>4} {'seconds':>7}")


def format_row(row: dict) -> str:
    return (f"{row['variant']:<15} {row['seed']:>5} {row['image_size']:>4} {row['test_acc']:>8.4f} "
            f"{row['test_acc_autocast']:>17.4f} {row['train_loss']:>10.4f} {row['train_acc']:>9.4f} "
            f"{row['val_acc']:>7.4f} {row['dead_classes']:>4} {row['seconds']:>7.1f}")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuda {torch.version.cuda}, "
                f"cudnn TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 {torch.backends.cuda.matmul.allow_tf32}")
    return f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="squeezenet", help="architecture (the head variant needs .classifier)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[SEED, SEED + 1])
    parser.add_argument("--epochs", type=flags.positive_int, default=None, help="default: DIGITS' for the model (24)")
    parser.add_argument("--max-train", type=flags.positive_int, default=None, help="first N training images only")
    parser.add_argument("--max-eval", type=flags.positive_int, default=None,
                        help="a stratified N validation and N test images only")
    parser.add_argument("--image-size", type=flags.positive_int, default=None, help="default: DIGITS' size (32)")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    data = subset(create_dataset("DIGITS"), args.max_train, args.max_eval)
    print(f"bf16 diagnosis: {args.model} on DIGITS ({len(data.y_train)} training, {len(data.y_test)} test images), "
          f"{describe_device(device)}; autocast dtype {amp_dtype(device)}")
    print(HEADER, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16_diagnosis_") as model_root:
        for variant in args.variants:
            seeds = args.seeds[:1] if variant == "fp32-repeat" else args.seeds
            for seed in seeds:
                with contextlib.redirect_stdout(sys.stderr):  # keep the table clean of any training chatter
                    row = run_variant(variant, args.model, data, device, epochs=args.epochs, seed=seed,
                                      image_size=args.image_size, model_root=model_root)
                rows.append(row)
                print(format_row(row), flush=True)
    by_variant: dict[str, list[float]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row["test_acc"])
    print("mean test accuracy: " + ", ".join(f"{v} {sum(a) / len(a):.4f}" for v, a in by_variant.items()))
    return 0


if __name__ == "__main__":
    flags.run_main(main)
