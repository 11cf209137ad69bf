"""The paper's hyper-parameter faults (4-6) and data faults (7-10): what each does to a trainer or a dataset.

A hyper-parameter fault is applied as ``apply(trainer)``, changing it in place before it trains; a data fault as
``apply(data, bug_id, generator)``, changing the ``MyData`` in place. ``FaultInjector.FAULT_TABLE`` names them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import SEED, stratified_split

LR_FACTOR = 20  # paper: 0.002 instead of 0.0001
EPOCH_DIVISOR = 3  # paper: 10 instead of 30
WRONG_LABEL_FRACTION = 0.1
TRAIN_FRACTION_KEPT = 0.5
PREPROCESSING_SCALE = 0.5
NOISE_STD = 0.1
BLUR_KERNEL, BLUR_SIGMA = 5, 1.5


# ---------------------------------------------------------------------------------------------
# hyper-parameter faults: (trainer) -> None
# ---------------------------------------------------------------------------------------------

def raise_learning_rate(trainer) -> None:
    """Fault 4: the learning rate times ``LR_FACTOR``, in the optimizer's groups and the scheduler's bases."""
    trainer.lr *= LR_FACTOR
    for group in trainer.optimizer.param_groups:
        group["lr"] *= LR_FACTOR
        group["initial_lr"] = group["lr"]
    if trainer.scheduler is not None:
        trainer.scheduler.base_lrs = [group["lr"] for group in trainer.optimizer.param_groups]


def cut_epochs(trainer) -> None:
    """Fault 5: a third of the epochs (at least one)."""
    trainer.epochs = max(1, round(trainer.epochs / EPOCH_DIVISOR))


class SoftmaxSquaredError(nn.Module):
    """Fault 6: squared error between softmax outputs and one-hot targets instead of cross-entropy.

    Its gradients vanish for confident wrong predictions, so training is slower and worse.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = logits.float().softmax(dim=1)
        one_hot = F.one_hot(target, num_classes=logits.shape[1]).float()
        return ((probabilities - one_hot) ** 2).sum(dim=1).mean()


def use_squared_error_loss(trainer) -> None:
    """Fault 6: train on :class:`SoftmaxSquaredError`."""
    trainer.criteria = SoftmaxSquaredError()


# ---------------------------------------------------------------------------------------------
# data faults: (data, bug_id, generator) -> None
# ---------------------------------------------------------------------------------------------

def shrink_pixel_range(data, bug_id: int, generator: torch.Generator) -> None:
    """Fault 7: every split's pixels scaled by ``PREPROCESSING_SCALE``."""
    data.x_train = data.x_train * PREPROCESSING_SCALE
    data.x_val = data.x_val * PREPROCESSING_SCALE
    data.x_test = data.x_test * PREPROCESSING_SCALE


def mislabel_training(data, bug_id: int, generator: torch.Generator) -> None:
    """Fault 8: ``WRONG_LABEL_FRACTION`` of the training labels changed."""
    data.y_train = mislabel(data.y_train, data.num_classes, WRONG_LABEL_FRACTION, generator)


def halve_training_set(data, bug_id: int, generator: torch.Generator) -> None:
    """Fault 9: a stratified ``TRAIN_FRACTION_KEPT`` of the training set kept."""
    keep, _ = stratified_split(data.y_train, 1.0 - TRAIN_FRACTION_KEPT, SEED)
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]


def corrupt_test_inputs(data, bug_id: int, generator: torch.Generator) -> None:
    """Fault 10: the test inputs noisy (Gaussian), or blurred where the dataset says so (X-rays)."""
    noisy = blur if data.source is not None and data.source.test_noise == "blur" else add_gaussian_noise
    data.x_test = noisy(data.x_test, generator)


def shift_test_set(data, bug_id: int, generator: torch.Generator) -> None:
    """Faults 11 and 12: the dataset's distribution-shifted test set replaces its own."""
    data.x_test, data.y_test = data.source.load_shifted_test(data.data_root, bug_id)


def mislabel(labels: torch.Tensor, num_classes: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Give ``fraction`` of the labels another class (each chosen label really changes)."""
    labels = labels.clone()
    count = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    labels[chosen] = (labels[chosen] + shift) % num_classes
    return labels


def add_gaussian_noise(images: torch.Tensor, generator: torch.Generator, std: float = NOISE_STD) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator) * std
    return (images + noise).clamp_(0.0, 1.0)


def blur(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur (the X-ray variant of fault 10); ``generator`` is unused, blur is deterministic."""
    from torchvision.transforms.v2.functional import gaussian_blur  # deferred: torchvision takes 1.5 s beyond torch

    return gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA]).clamp_(0.0, 1.0)
