"""Test accuracy of healthy DIGITS versions trained in bf16 autocast and in float32 (issue 11, item 1).

Each (architecture, precision, seed) is trained with the project's own
``ModelManager.create_model(mode="train", amp=...)`` (bf16 autocast = ``--amp``, the CUDA default;
float32 = ``--no-amp``; channels-last on CUDA in both), and one row printed: test accuracy as recorded
(float32 evaluation), test accuracy under bf16 evaluation, final training loss, the classes whose
logit is 0 on every test input (see bf16_diagnosis.py), training seconds.
Checkpoints go to ``--model-root``/{precision}-seed{seed}/ (kept when given, so later checks can
load them, e.g. ``bench_attacker.py --model-root DIR/fp32-seed42``), else to a temporary folder.

    python benchmarks/precision_accuracy.py --device cuda [--models squeezenet resnet] [--seeds 42 43]
    python benchmarks/precision_accuracy.py --device cpu --epochs 1 --max-train 32 --max-eval 30 --seeds 42  # dry
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bf16_diagnosis import accuracy, amp_dtype, dead_classes, describe_device, subset, train_via_create_model  # noqa: E402

from DatasetManager import create_dataset  # noqa: E402
from pipeline import flags  # noqa: E402
from utils import (
    SEED,  # noqa: E402
    choose_device,  # noqa: E402
)

PRECISIONS = {"bf16": True, "fp32": False}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet"])
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[SEED, SEED + 1])
    parser.add_argument("--epochs", type=flags.positive_int, default=None, help="default: DIGITS' for each model")
    parser.add_argument("--image-size", type=flags.positive_int, default=None, help="default: DIGITS' size (32)")
    parser.add_argument("--max-train", type=flags.positive_int, default=None, help="first N training images only")
    parser.add_argument("--max-eval", type=flags.positive_int, default=None,
                        help="a stratified N validation and N test images only")
    parser.add_argument("--model-root", default=None, help="keep the checkpoints here (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    data = subset(create_dataset("DIGITS"), args.max_train, args.max_eval)
    print(f"bf16 vs float32 training on DIGITS ({len(data.y_train)} training, {len(data.y_test)} test images), "
          f"{describe_device(device)}; autocast dtype {amp_dtype(device)}")
    print(f"{'model':<11} {'precision':<9} {'seed':>5} {'size':>4} {'test_acc':>8} {'test_acc_bf16eval':>17} "
          f"{'train_loss':>10} {'dead':>4} {'seconds':>7}", flush=True)
    results: dict[tuple[str, str], list[float]] = {}
    with contextlib.ExitStack() as stack:
        root = Path(args.model_root) if args.model_root else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for model_name in args.models:
            for precision in args.precisions:
                for seed in args.seeds:
                    started = time.perf_counter()
                    with contextlib.redirect_stdout(sys.stderr):
                        network, history, sized = train_via_create_model(
                            model_name, data, device, amp=PRECISIONS[precision], epochs=args.epochs, seed=seed,
                            image_size=args.image_size, model_root=root / f"{precision}-seed{seed}")
                    autocast_acc = accuracy(network, sized.test_loader, device, autocast=True)
                    results.setdefault((model_name, precision), []).append(history["test_acc"])
                    print(f"{model_name:<11} {precision:<9} {seed:>5} {sized.image_size:>4} "
                          f"{history['test_acc']:>8.4f} {autocast_acc:>17.4f} {history['train_loss'][-1]:>10.4f} "
                          f"{dead_classes(network, sized.test_loader, device):>4} "
                          f"{time.perf_counter() - started:>7.1f}", flush=True)
    print("mean test accuracy: " + ", ".join(f"{m}/{p} {sum(a) / len(a):.4f}" for (m, p), a in results.items()))
    return 0


if __name__ == "__main__":
    flags.run_main(main)
