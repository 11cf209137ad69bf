"""CIFAR10 (torchvision), the paper's main benchmark, with the CIFAR-10.1 shifted test sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mydataset.base import MyDataset, RawSplits, register_dataset, to_images, to_labels
from utils import UsageError

CIFAR10_1_URL = "https://github.com/modestyachts/CIFAR-10.1 (datasets/cifar10.1_v{4,6}_{data,labels}.npy)"
SHIFT_VERSIONS = {11: "v4", 12: "v6"}


@register_dataset
class Cifar10(MyDataset):
    """50,000 train / 10,000 test 32×32 colour images; versions see them resized to 128×128 as in the paper.

    The only dataset that may download: torchvision fetches it into ``{data_root}`` when it is
    missing and the machine is online; offline it stops with a clear message.
    """

    name = "CIFAR10"
    image_size = 128
    in_paper = True

    def load(self, data_root: Path) -> RawSplits:
        train, test = (self._torchvision_split(data_root, is_train) for is_train in (True, False))
        return RawSplits(to_images(train.data, "CIFAR10 train"), to_labels(train.targets, "CIFAR10 train"),
                         to_images(test.data, "CIFAR10 test"), to_labels(test.targets, "CIFAR10 test"))

    @staticmethod
    def _torchvision_split(data_root: Path, is_train: bool):
        from torchvision.datasets import CIFAR10  # deferred: torchvision takes 1.5 s beyond torch

        try:
            return CIFAR10(root=str(data_root), train=is_train, download=False)
        except RuntimeError:
            pass  # not on disk: torchvision says "Dataset not found or corrupted"
        try:
            return CIFAR10(root=str(data_root), train=is_train, download=True)
        except Exception as exc:
            raise UsageError(
                f"CIFAR10 is not in {data_root}/cifar-10-batches-py and could not be downloaded "
                f"({type(exc).__name__}); "
                "when offline, copy the 'CIFAR-10 python version' archive from "
                "https://www.cs.toronto.edu/~kriz/cifar.html "
                f"unpacked into {data_root}") from exc

    def load_shifted_test(self, data_root: Path, bug_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        version = SHIFT_VERSIONS[bug_id]
        folder = Path(data_root) / "CIFAR10_1"
        data_file = folder / f"cifar10.1_{version}_data.npy"
        label_file = folder / f"cifar10.1_{version}_labels.npy"
        missing = [str(p) for p in (data_file, label_file) if not p.is_file()]
        if missing:
            raise UsageError(f"fault {bug_id} needs the CIFAR-10.1 {version} test set: missing {', '.join(missing)}; "
                             f"get them from {CIFAR10_1_URL}")
        try:
            images = np.load(data_file, allow_pickle=False)
            labels = np.load(label_file, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UsageError(f"cannot read the CIFAR-10.1 {version} files in {folder}: {exc}") from exc
        if len(images) != len(labels):
            raise UsageError(f"CIFAR-10.1 {version}: {len(images)} images but {len(labels)} labels in {folder}")
        return to_images(images, f"CIFAR-10.1 {version}"), to_labels(labels, f"CIFAR-10.1 {version}")
