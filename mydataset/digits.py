"""DIGITS: scikit-learn's bundled 8×8 handwritten digits, the offline default."""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mydataset.base import MyDataset, RawSplits, register_dataset, to_images, to_labels
from storage.settings import TrainingRecipe
from utils import SEED

TEST_FRACTION = 0.2


@register_dataset
class Digits(MyDataset):
    """1,797 grey 8×8 images of 10 digits, shipped inside scikit-learn (no download, no files).

    There is no official test split: a stratified 20 % (the pipeline's seed) is held out, 360 images.
    Images are upsampled to 32×32 (or an architecture's minimum), three channels.
    """

    name = "DIGITS"
    image_size = 32
    # Small data, CPU budget: few epochs; each architecture's learning rate and batch size chosen so
    # that its healthy version passes 95 % test accuracy (docs/results.md, "The full DIGITS grid"). The
    # batch-normalised ResNet and DenseNet train fastest at 1e-3, the others need smaller steps.
    defaults = TrainingRecipe(epochs=8, batch_size=64, lr=1e-3, weight_decay=1e-4, step_size=6, gamma=0.1)
    model_defaults = {
        "resnet": dict(batch_size=32),
        "alexnet": dict(epochs=12, batch_size=32, lr=3e-4, step_size=10),
        "vgg16": dict(epochs=10, lr=1e-4, step_size=8),
        "squeezenet": dict(epochs=24, batch_size=32, lr=1e-4, step_size=20),
    }

    def load(self, data_root: Path) -> RawSplits:
        bunch = load_digits()
        images = bunch.images / 16.0
        x_train, x_test, y_train, y_test = train_test_split(
            images, bunch.target, test_size=TEST_FRACTION, stratify=bunch.target, random_state=SEED)
        return RawSplits(to_images(torch.tensor(x_train, dtype=torch.float32), "DIGITS train"),
                         to_labels(y_train, "DIGITS train"),
                         to_images(torch.tensor(x_test, dtype=torch.float32), "DIGITS test"),
                         to_labels(y_test, "DIGITS test"))
