"""What every dataset class declares, the registry the classes enter with ``@register_dataset``, and the
conversions every loader shares."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import FaultInjector
from storage.settings import PAPER_RECIPE, TrainingRecipe
from utils import Registry, UsageError

#: every dataset, by (upper-case) name, in registration order; presets and ``--datasets`` read it
DATASETS = Registry("dataset", str.upper)
#: class decorator: enter a dataset in ``DATASETS`` under its ``name``
register_dataset = DATASETS.register


@dataclass
class RawSplits:
    """Train and test images as float NCHW tensors in [0, 1] at native resolution, int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class MyDataset:
    """One dataset: where its files are, how to read them, its image size and training defaults.

    The contract: subclasses set ``name`` (upper case, unique) and the class attributes below, and implement
    :meth:`load` (raw splits, no validation split: ``DatasetManager`` holds one out) and, where files must be
    present, :meth:`check_available` (one line naming them, before any work). Which faults apply to a dataset
    is the fault table's ``datasets`` column.
    """

    name: str = ""
    #: side length the versions see, before an architecture's minimum input size is applied
    #: (``None``: the stored resolution)
    image_size: int | None = None
    #: one of the paper's seven datasets (``--preset paper`` runs them)
    in_paper: bool = False
    defaults: TrainingRecipe = PAPER_RECIPE
    #: per-architecture changes to ``defaults`` (e.g. a learning rate a network needs on this data)
    model_defaults: dict[str, dict] = {}
    #: what fault 10 does to the test inputs: ``"gaussian"`` noise or ``"blur"``
    test_noise: str = "gaussian"

    def load(self, data_root: Path) -> RawSplits:
        raise NotImplementedError

    @property
    def unsupported_faults(self) -> tuple[int, ...]:
        """Faults this dataset cannot carry (the fault table says which datasets each applies to)."""
        return FaultInjector.unsupported_faults(self.name)

    def training_defaults(self, model_name: str) -> TrainingRecipe:
        return replace(self.defaults, **self.model_defaults.get(model_name, {}))

    def check_available(self, data_root: Path) -> None:
        """Raise a UsageError naming the expected files if they are missing (cheap; no loading)."""

    def load_shifted_test(self, data_root: Path, bug_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The distribution-shifted test set of faults 11 and 12."""
        raise UsageError(f"fault {bug_id} (distribution shift) does not apply to {self.name}: "
                         "it exists only for CIFAR10")


def to_images(array, what: str) -> torch.Tensor:
    """Normalise an image array to float32 NCHW in [0, 1] with three channels.

    Accepts NumPy arrays or tensors, NCHW or NHWC (or NHW), uint8 or float (0-1 or 0-255).
    """
    x = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise UsageError(f"{what}: expected images of shape N×C×H×W or N×H×W×C, got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise UsageError(f"{what}: expected 1 or 3 colour channels, got shape {tuple(x.shape)}")
    is_integer = not torch.is_floating_point(x)
    x = x.float()
    if not torch.isfinite(x).all():
        raise UsageError(f"{what}: contains NaN or infinite pixel values; replace it with a valid copy")
    if is_integer or (x.numel() and x.max() > 1.0):
        x = x / 255.0
    if x.numel() and (x.min() < 0 or x.max() > 1.0):
        raise UsageError(f"{what}: pixel values outside [0, 255]")
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


def to_labels(array, what: str) -> torch.Tensor:
    """Normalise labels to a 1-D int64 tensor (one-hot rows become class indices)."""
    y = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(dim=1)
    y = y.reshape(-1)
    if torch.is_floating_point(y):
        if not torch.equal(y, y.round()):
            raise UsageError(f"{what}: labels must be whole numbers")
    y = y.long()
    if y.numel() and y.min() < 0:
        raise UsageError(f"{what}: negative labels")
    return y


def resize_batch(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Resize a batch to ``image_size``² (bilinear; antialiased when shrinking)."""
    if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    shrinking = image_size < max(x.shape[-2:])
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                         antialias=shrinking).clamp_(0.0, 1.0)
