"""What a version costs to run: FLOPs per input of its forward pass and of each distance mode's attack, and a
measured forward latency, kept in its metadata (``costs``) for the deployment policies (cascades visit the
cheapest versions first; every results row says what a method spent).

FLOPs are counted by ``torch.utils.flop_counter`` (matrix products and convolutions, forward and backward; the
element-wise rest is not counted) on the network the attack runs (batch norms folded) at the version's own input
size, over a few real validation inputs (the first :data:`COST_INPUTS` of the run that measures them): DeepFool's
cost depends on how many steps each input takes, so it is an average over those inputs, not a constant of the
architecture; the forward pass and the first-order modes are exact. A distance mode's figure includes the clean
forward pass the attack makes for the labels, and not the pass at the final point that only the fit and cache
steps make (to record whether the label flipped): it is what a deployed method that attacks a version spends.

Costs are written when a version is trained (or derived, or re-measured); a version trained before they were
recorded gets them on its next fit or cache step, which says so.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ModelManager import loader_for
from storage.files import atomic_write_json
from storage.layout import metadata_path
from storage.metadata import read_metadata
from storage.settings import DISTANCE_MODES, DistanceSettings, distance_mode


def cost_modes() -> tuple[str, ...]:
    """The distance modes every version is costed for, as the registry's entries declare them (``costed``); the mode
    a run uses is added when it is not one of them."""
    return tuple(DistanceSettings(mode.name, count).mode for mode in DISTANCE_MODES.values() for count in mode.costed)
#: validation inputs the FLOPs are averaged over
COST_INPUTS = 8
#: the batch (at most) and the repeats of the forward latency, whose median is recorded
LATENCY_BATCH, LATENCY_REPEATS = 64, 5


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s per-module tracker: its backward hooks make ``torch.autograd.grad``
    with respect to the input (the attack's gradient) raise, and only the global total is wanted here."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def flop_counter():
    """A ``torch.utils.flop_counter.FlopCounterMode`` that counts the whole computation, gradients to the input
    included (``get_total_flops``)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


def measure(network: torch.nn.Module, images: torch.Tensor, device, modes=None,
            latency_images: torch.Tensor | None = None) -> dict:
    """The ``costs`` record of a network (a ``MyModel``'s ``model_structure``) on ``images`` (validation inputs at
    the version's size): FLOPs per input of the forward pass and of each mode's attack, the forward latency per
    input at the batch of ``latency_images`` (default ``images``), and where that latency was measured. ``modes``
    default: :func:`cost_modes`."""
    attackers = {mode: distance_mode(mode).attacker(network, device, check_success=False)
                 for mode in modes or cost_modes()}  # as deployed: no pass at the final point to flag success
    first = next(iter(attackers.values()))
    inputs = images.to(first.device, dtype=first.dtype)
    if inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=first.memory_format)
    with torch.no_grad(), flop_counter() as counter:
        first.model(inputs)
    forward = counter.get_total_flops() / len(images)
    distance = {}
    for mode, attacker in attackers.items():
        with flop_counter() as counter:
            attacker.attack(images)
        distance[mode] = counter.get_total_flops() / len(images)
    timed = (images if latency_images is None else latency_images).to(first.device, dtype=first.dtype)
    if timed.ndim == 4:
        timed = timed.contiguous(memory_format=first.memory_format)
    return {"forward_flops": int(round(forward)), "distance_flops": {m: int(round(f)) for m, f in distance.items()},
            "flops_inputs": len(images), "forward_ms_per_input": forward_latency(first.model, timed),
            "latency_batch": len(timed), "latency_device": device_name(first.device),
            "latency_threads": torch.get_num_threads(), "flop_counter": f"torch {torch.__version__}"}


def forward_latency(network: torch.nn.Module, batch: torch.Tensor, repeats: int = LATENCY_REPEATS) -> float:
    """Milliseconds per input of a forward pass over ``batch``: the median of ``repeats`` timed runs after one
    untimed (the first run pays one-off set-up)."""
    def synchronize():
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)

    seconds = []
    with torch.no_grad():
        for run in range(repeats + 1):
            synchronize()
            started = time.perf_counter()
            network(batch)
            synchronize()
            if run:
                seconds.append(time.perf_counter() - started)
    return round(1000.0 * statistics.median(seconds) / len(batch), 4)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def measure_version(model, data, device, mode: str | None = None, modes=None) -> dict:
    """The ``costs`` record of a loaded version (a ``MyModel``) on its validation inputs, also costing ``mode``
    when it is not one of :func:`cost_modes` (``modes``: exactly these instead)."""
    if modes is None:
        modes = cost_modes() if mode is None or mode in cost_modes() else (*cost_modes(), mode)
    batch = next(iter(loader_for(model, data, "val", LATENCY_BATCH)))[0]
    return measure(model.model_structure, batch[:COST_INPUTS], device, modes, latency_images=batch)


def record(model, data, device) -> None:
    """Put the version's costs into its (in-memory) metadata: training calls this before writing it."""
    model.metadata["costs"] = measure_version(model, data, device)


def record_unless_inherited(model, data, device) -> None:
    """:func:`record`, but for a version derived from the healthy weights (faults 10-12 change only the test set),
    whose metadata starts as its healthy version's: the same network on the same validation inputs costs the same,
    so it keeps the costs measured there (measuring DenseNet-121's again took 7 s of a 9 s derivation)."""
    if not model.metadata.get("costs"):
        record(model, data, device)


def read(model_root, model_name: str, dataset: str, bug: int) -> dict | None:
    """A version's recorded costs; None without metadata (the paper's versions) or without costs (older ones)."""
    path = metadata_path(model_root, model_name, dataset, bug)
    return read_metadata(path).get("costs") if path.is_file() else None


def missing(model_root, model_name: str, dataset: str, bug: int, mode: str | None = None) -> bool:
    """Whether a version of ours (with our metadata) lacks its costs, or the FLOPs of ``mode``."""
    path = metadata_path(model_root, model_name, dataset, bug)
    if not path.is_file():
        return False
    known = read_metadata(path).get("costs") or {}
    return not known or (mode is not None and mode not in known.get("distance_flops", {}))


def ensure(model_root, model, data, device, mode: str | None = None) -> bool:
    """Cost a version whose metadata has no costs (trained before they were recorded), or none for ``mode``, and
    write them into its metadata, saying so on stderr; True when it did. A version without our metadata (the
    paper's) is left alone.

    The metadata keeps its modification time: costs describe the version, they do not change it, and a newer
    healthy metadata would otherwise read as weights that its faults 10-12 were not measured on."""
    dataset = model.metadata.get("dataset") or model.dataset_name
    if not missing(model_root, model.model_name, dataset, model.bug_id, mode):
        return False
    path = metadata_path(model_root, model.model_name, dataset, model.bug_id)
    metadata = read_metadata(path)
    known = metadata.get("costs") or {}
    if known and mode is not None:  # one more mode: its FLOPs join the others', which stay as measured
        added = measure_version(model, data, device, modes=(mode,))["distance_flops"]
        costs = {**known, "distance_flops": {**known.get("distance_flops", {}), **added}}
    else:
        costs = measure_version(model, data, device, mode)
    metadata["costs"] = costs
    times = os.stat(path)
    atomic_write_json(path, metadata)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    model.metadata["costs"] = costs
    print(f"note: {Path(path).name} had no costs{' for ' + mode if known else ''} (recorded since); measured now "
          f"and written: {costs['forward_flops'] / 1e6:.1f} MFLOPs per forward pass", file=sys.stderr)
    return True


def member_flops(costs: dict | None, mode: str | None) -> float:
    """What one input costs a method on a version: its attack in ``mode`` (which includes the forward pass), or
    its forward pass alone (``mode`` None); NaN where the costs are not known."""
    if not costs:
        return float("nan")
    if mode is None:
        return float(costs["forward_flops"])
    return float(costs.get("distance_flops", {}).get(mode, np.nan))
