"""Benchmark: our batched DeepFool against foolbox 3.3.4's L2DeepFoolAttack, in one process.

On trained DIGITS versions (default: the demo's three architectures), batch sizes 8 and 64, the
same test inputs: median throughput of each (inputs per second) and their ratio, the median and
maximum relative distance difference, and how often both agree on the success flag. foolbox is
timed as it is normally used (weights left trainable, so its ``backward`` also computes weight
gradients) and with frozen weights, the stricter reference; the ratio is reported against both.
Finally a profile of our attack shows where its remaining time goes.

    python benchmarks/bench_attacker.py [--models squeezenet densenet resnet] [--inputs 128] [--repeats 3]
                                        [--batch-sizes 8 64] [--image-size N] [--device cuda] [--model-root DIR]
                                        [--compare-graphs] [--no-foolbox] [--no-profile]

"ours" is the attack with its default settings (CUDA graphs on CUDA); ``--compare-graphs`` adds the
uncompiled step ("eager") in the same process: its throughput, the graphs' speed-up, and how far the
two paths' distances are apart (float32 rounding: other batch sizes pick other kernels).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ModelManager  # noqa: E402
from Attacker import Attacker  # noqa: E402
from DatasetManager import create_dataset  # noqa: E402
from pipeline import flags  # noqa: E402
from storage.settings import (
    DEEPFOOL,  # noqa: E402
    Roots,  # noqa: E402
)
from utils import choose_device  # noqa: E402


def foolbox_attack(network, images: torch.Tensor, device) -> tuple[np.ndarray, np.ndarray]:
    import foolbox

    model = foolbox.PyTorchModel(network, bounds=(0.0, 1.0), device=device)
    labels = network(images).argmax(dim=1)
    attack = foolbox.attacks.L2DeepFoolAttack(steps=DEEPFOOL.steps, candidates=DEEPFOOL.candidates,
                                              overshoot=DEEPFOOL.overshoot, loss="logits")
    raw, _, success = attack(model, images, labels, epsilons=None)
    return (raw - images).flatten(1).norm(dim=1).detach().cpu().numpy(), success.cpu().numpy()


def timed(function, batches) -> tuple[float, list]:
    started = time.perf_counter()
    outputs = [function(batch) for batch in batches]
    return time.perf_counter() - started, outputs


def compare(network, images: torch.Tensor, batch_size: int, repeats: int, device, *, foolbox: bool = True,
            eager: bool = False) -> dict:
    """Time our attack (default settings: CUDA graphs on CUDA), foolbox (trainable and frozen weights)
    and, with ``eager``, our attack without CUDA graphs, interleaved; compare their distances."""
    batches = list(images.split(batch_size))
    methods = {"ours": Attacker(network, device=device).attack}
    if eager:
        methods["ours_eager"] = Attacker(network, device=device, cuda_graphs=False).attack
    if foolbox:
        methods["foolbox"] = lambda b: foolbox_attack(network.requires_grad_(True), b, device)
        methods["foolbox_frozen"] = lambda b: foolbox_attack(network.requires_grad_(False), b, device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(repeats):  # interleaved, so drifting machine load hits all alike
        for name, method in methods.items():
            seconds, results = timed(method, batches)
            times[name].append(seconds)
            if name.startswith("ours"):
                outputs[name] = (np.concatenate([r.distances for r in results]),
                                 np.concatenate([r.success for r in results]))
            else:
                outputs[name] = (np.concatenate([d for d, _ in results]), np.concatenate([s for _, s in results]))
    network.requires_grad_(True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    row = {"inputs_per_s": {name: len(images) / seconds for name, seconds in medians.items()}}
    for name, reference in (("foolbox", "foolbox"), ("eager", "ours_eager")):
        if reference not in outputs:
            continue
        distances, success = outputs["ours"]
        reference_distances, reference_success = outputs[reference]
        relative = np.abs(distances - reference_distances) / np.maximum(np.abs(reference_distances), 1e-12)
        row[name] = {"ratio": medians[reference] / medians["ours"], "median_rel_diff": float(np.median(relative)),
                     "max_rel_diff": float(relative.max()),
                     "success_agreement": float(np.mean(success == reference_success))}
    if "foolbox_frozen" in medians:
        row["foolbox"]["ratio_frozen"] = medians["foolbox_frozen"] / medians["ours"]
    return row


def profile(network, images: torch.Tensor, batch_size: int, device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    attacker = Attacker(network, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for batch in images.split(batch_size):
            attacker.attack(batch)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_key, row_limit=8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "densenet", "resnet"])
    parser.add_argument("--dataset", default="DIGITS")
    parser.add_argument("--batch-sizes", nargs="+", type=flags.positive_int, default=[8, 64])
    parser.add_argument("--inputs", type=flags.positive_int, default=128, help="test inputs per configuration")
    parser.add_argument("--repeats", type=flags.positive_int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-root", default="mymodel/model")
    parser.add_argument("--image-size", type=flags.positive_int, default=None,
                        help="attack inputs resized to this size (default: the size each version was trained at)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-foolbox", action="store_true", help="time our attack only")
    parser.add_argument("--compare-graphs", action="store_true",
                        help="also time our attack without CUDA graphs (the eager step) and compare distances")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    # our attacker computes in full float32 on CUDA (no TF32); foolbox must too, or the reference
    # itself moves (on an H200 its TF32 distances differed from its float32 ones by 1.8e-3, median)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    data = create_dataset(args.dataset)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    size = f"{args.image_size}x{args.image_size}" if args.image_size else "each version's size"
    print(f"DeepFool benchmark on {device} ({where}), {size}, {args.inputs} {args.dataset} test "
          f"inputs per row, median of {args.repeats} interleaved runs; reference: foolbox 3.3.4 L2DeepFoolAttack")
    print(f"{'model':<11} {'batch':>5} {'ours/s':>8} {'fb/s':>8} {'fb_frozen/s':>11} {'ratio':>6} {'ratio_frozen':>12} "
          f"{'med_rel_diff':>12} {'max_rel_diff':>12} {'same_success':>12}")
    ratios = []
    for model_name in args.models:
        model = ModelManager.load_version(model_name, args.dataset, 0, device, roots=Roots(model=args.model_root))
        sized = data.at(image_size=args.image_size or model.metadata["image_size"], batch_size=args.inputs)
        images = next(iter(sized.test_loader))[0]
        network = model.model_structure
        for batch_size in args.batch_sizes:
            row = compare(network, images.to(device), batch_size, args.repeats, device, foolbox=not args.no_foolbox,
                          eager=args.compare_graphs)
            speed = row["inputs_per_s"]
            line = f"{model_name:<11} {batch_size:>5} {speed['ours']:>8.1f}"
            if "foolbox" in row:
                fb = row["foolbox"]
                ratios.append(fb["ratio_frozen"])
                line += (f" {speed['foolbox']:>8.1f} {speed['foolbox_frozen']:>11.1f} {fb['ratio']:>5.1f}x "
                         f"{fb['ratio_frozen']:>11.1f}x {fb['median_rel_diff']:>12.2e} {fb['max_rel_diff']:>12.2e} "
                         f"{fb['success_agreement']:>12.3f}")
            if "eager" in row:
                eager = row["eager"]
                line += (f" | eager {speed['ours_eager']:>8.1f}/s, graphs {eager['ratio']:.2f}x, rel diff median "
                         f"{eager['median_rel_diff']:.2e} max {eager['max_rel_diff']:.2e}, same success "
                         f"{eager['success_agreement']:.3f}")
            print(line, flush=True)
    if ratios:
        print(f"median speed-up over foolbox with frozen weights: {statistics.median(ratios):.1f}x")
    if not args.no_profile:
        model = ModelManager.load_version(args.models[-1], args.dataset, 0, device, roots=Roots(model=args.model_root))
        sized = data.at(image_size=args.image_size or model.metadata["image_size"], batch_size=args.inputs)
        images = next(iter(sized.test_loader))[0]
        print(f"\nwhere our time goes ({args.models[-1]}, batch {args.batch_sizes[-1]}):")
        print(profile(model.model_structure, images.to(device), args.batch_sizes[-1], device))
    return 0


if __name__ == "__main__":
    flags.run_main(main)
