"""Deployment policies run for real on live networks, timed in one process: majority voting (every member's
forward pass), full DeepFailGuard (every member attacked) and DeepFailGuard's cascade, where a member not
visited is neither run nor attacked.

The cascade is the one the evaluation fits (``selection.cascade``: members cheapest first, the threshold on
P(correct) fitted on validation); here each batch's inputs go to the first member, those it trusts stop, the rest
go on to the next, and an input no member trusts has visited them all and gets the member with the highest
P(correct). ``latency.csv`` holds, per policy, milliseconds per input (the median of ``repeats`` timed runs),
the ratio to voting, accuracy, the fraction of DeepFailGuard's attack FLOPs spent (``compute``) and where it was
measured; ``agreement`` is the share of inputs on which the live labels equal the evaluation's for that set.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from mydataset.base import resize_batch
from selection.base import majority_vote

LATENCY_COLUMNS = ["dataset", "n_versions", "models", "bug_ids", "policy", "ms_per_input", "ratio_to_voting",
                   "accuracy", "compute", "agreement", "inputs", "batch_size", "repeats", "device", "threads"]


def _batches(images: torch.Tensor, batch_size: int):
    return [images[start:start + batch_size] for start in range(0, len(images), batch_size)]


def vote(modules, images: torch.Tensor, num_classes: int) -> np.ndarray:
    """Majority voting: each member's forward pass (in the attacker's network and numerics), then the vote."""
    labels = []
    with torch.no_grad():
        for module in modules:
            attacker = module.attacker
            inputs = resize_batch(images.to(attacker.device, dtype=attacker.dtype), attacker.image_size)
            labels.append(attacker.model(inputs).argmax(dim=1).cpu().numpy())
    return majority_vote(np.stack(labels), num_classes)


def full_deepfailguard(modules, images: torch.Tensor, preference) -> np.ndarray:
    """Every member attacked; per input, the member with the highest P(correct) (the preferred one on ties)."""
    results = [module.attack(images) for module in modules]
    confidence = np.stack([module.confidence(result.distances) for module, result in zip(modules, results)])
    labels = np.stack([result.labels for result in results])
    chosen = preference.first_preferred_max(confidence)
    return np.take_along_axis(labels, chosen[None, :], axis=0)[0]


def deepfailguard_cascade(modules, images: torch.Tensor, order: list[int], threshold: float,
                          preference) -> tuple[np.ndarray, np.ndarray]:
    """The cascade's labels and which members it ran (members × inputs), attacking each member only on the inputs
    that reach it."""
    inputs = len(images)
    confidence = np.full((len(modules), inputs), -np.inf)
    labels = np.zeros((len(modules), inputs), dtype=np.int64)
    visited = np.zeros((len(modules), inputs), dtype=bool)
    answer = np.zeros(inputs, dtype=np.int64)
    open_ = np.ones(inputs, dtype=bool)
    for step, member in enumerate(order):
        index = np.flatnonzero(open_)
        if not len(index):
            break
        result = modules[member].attack(images[torch.as_tensor(index)])
        confidence[member, index] = modules[member].confidence(result.distances)
        labels[member, index] = result.labels
        visited[member, index] = True
        if step < len(order) - 1:
            stop = index[confidence[member, index] >= threshold]
            answer[stop] = labels[member, stop]
            open_[stop] = False
    rest = np.flatnonzero(open_)
    if len(rest):  # every member ran on these: the full set's choice
        chosen = preference.first_preferred_max(confidence[:, rest])
        answer[rest] = labels[chosen, rest]
    return answer, visited


def median_ms_per_input(policy, images: torch.Tensor, batch_size: int, repeats: int):
    """The policy's output over ``images`` in batches, and its median milliseconds per input over ``repeats``
    runs (after one untimed run, which pays one-off set-up)."""
    def run():
        outputs = [policy(batch) for batch in _batches(images, batch_size)]
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        return outputs

    outputs, seconds = run(), []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return outputs, 1000.0 * statistics.median(seconds) / len(images)


def time_policies(modules, flops: np.ndarray, images: torch.Tensor, truth: np.ndarray, order: list[int],
                  threshold: float, preference, num_classes: int, batch_size: int, repeats: int,
                  evaluated: dict[str, np.ndarray]) -> list[dict]:
    """``latency.csv``'s rows for one set: voting, full DeepFailGuard and its cascade (``flops``: each member's
    attack FLOPs per input; ``evaluated``: the evaluation's labels of ``dfg`` and ``cascade_dfg``)."""
    voting, voting_ms = median_ms_per_input(lambda batch: vote(modules, batch, num_classes), images, batch_size,
                                            repeats)
    full, full_ms = median_ms_per_input(lambda batch: full_deepfailguard(modules, batch, preference), images,
                                        batch_size, repeats)
    cascade, cascade_ms = median_ms_per_input(
        lambda batch: deepfailguard_cascade(modules, batch, order, threshold, preference), images, batch_size, repeats)
    visited = np.concatenate([v for _, v in cascade], axis=1)
    spent = float((visited * flops[:, None]).sum(axis=0).mean() / flops.sum())
    rows = []
    for policy, labels, ms, compute, reference in (
            ("voting", np.concatenate(voting), voting_ms, None, None),
            ("dfg", np.concatenate(full), full_ms, 1.0, evaluated.get("dfg")),
            ("cascade_dfg", np.concatenate([a for a, _ in cascade]), cascade_ms, spent, evaluated.get("cascade_dfg"))):
        rows.append({"policy": policy, "ms_per_input": ms, "ratio_to_voting": ms / voting_ms,
                     "accuracy": float((labels == truth).mean()), "compute": compute,
                     "agreement": None if reference is None else float((labels == reference).mean()),
                     "inputs": len(images), "batch_size": batch_size, "repeats": repeats})
    return rows
