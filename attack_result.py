"""What measuring a version's boundary distances returns (every distance mode alike), and how a measurement
that was asked to stop says so."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class AttackResult:
    """Per input: L2 norm of the final perturbation, clean label, whether the label flipped."""

    distances: np.ndarray
    labels: np.ndarray
    success: np.ndarray
    #: softmax of the clean logits (for the soft-voting and max-softmax baselines)
    probabilities: np.ndarray
    #: the loader's labels, when its batches are (images, labels) pairs
    targets: np.ndarray | None = None
    #: the clean logits (for the temperature-scaled and energy-based methods)
    logits: np.ndarray | None = None
    #: the ``feature`` mode's parts of fDBD (``feature_distance.py``): each input's mean feature-space distance to
    #: the other classes' boundaries, and its features' distance to the training mean
    feature_margins: np.ndarray | None = None
    feature_deviations: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: list["AttackResult"]) -> "AttackResult":
        return cls(**{f.name: None if any(getattr(p, f.name) is None for p in parts)
                      else np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


class AttackCancelled(Exception):
    """An attack stopped between two steps because its ``cancel`` event was set."""
