"""The twelve development faults of the paper, each really changing what it claims to.

Model faults (1-3) rebuild or rewire the network before training, hyper-parameter faults (4-6)
change the trainer that will train it, data faults (7-12) change the splits it learns from or is
tested on. In the paper repository faults 2, 3, 4 and 6 changed nothing training sees; here they do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import SEED, UsageError, stratified_split


@dataclass(frozen=True)
class Fault:
    """Everything the pipeline needs to know about one fault; every other module asks this table."""

    id: int
    name: str
    kind: str  # "model", "hyper-parameter" or "data"
    #: changes only the test inputs: the version reuses the healthy checkpoint and failure model
    test_data_only: bool = False
    #: swaps the whole test set for another one (its own ground truth file)
    replaces_test_set: bool = False
    #: datasets it exists for (None: every dataset)
    datasets: tuple[str, ...] | None = None
    #: the paper repository's implementation was a no-op, so its released weights have the healthy structure
    paper_no_op: bool = False

    @property
    def reuses_healthy_checkpoint(self) -> bool:
        return self.test_data_only

    def applies_to(self, dataset_name: str) -> bool:
        return self.datasets is None or str(dataset_name).upper() in self.datasets


FAULT_TABLE: tuple[Fault, ...] = (
    Fault(1, "suboptimal structure", "model"),
    Fault(2, "wrong filter size", "model", paper_no_op=True),
    Fault(3, "missing activation", "model", paper_no_op=True),
    Fault(4, "suboptimal learning rate", "hyper-parameter", paper_no_op=True),
    Fault(5, "too few epochs", "hyper-parameter"),
    Fault(6, "wrong loss function", "hyper-parameter", paper_no_op=True),
    Fault(7, "wrong preprocessing", "data"),
    Fault(8, "wrong labels", "data"),
    Fault(9, "not enough training data", "data"),
    Fault(10, "noisy test data", "data", test_data_only=True),
    Fault(11, "distribution shift (CIFAR-10.1 v4)", "data", test_data_only=True, replaces_test_set=True,
          datasets=("CIFAR10",)),
    Fault(12, "distribution shift (CIFAR-10.1 v6)", "data", test_data_only=True, replaces_test_set=True,
          datasets=("CIFAR10",)),
)
FAULTS: dict[int, Fault] = {fault.id: fault for fault in FAULT_TABLE}
FAULT_IDS: tuple[int, ...] = tuple(FAULTS)
HEALTHY = 0


def fault_name(bug_id: int | None) -> str:
    return FAULTS[bug_id].name if bug_id else "healthy"


def is_kind(bug_id: int | None, kind: str) -> bool:
    return bool(bug_id) and FAULTS[bug_id].kind == kind


def is_test_data_only(bug_id: int | None) -> bool:
    return bool(bug_id) and FAULTS[bug_id].test_data_only


def replaces_test_set(bug_id: int | None) -> bool:
    return bool(bug_id) and FAULTS[bug_id].replaces_test_set


def checkpoint_fault(bug_id: int | None) -> int:
    """The fault whose weights a version uses: test-data faults reuse the healthy network."""
    bug_id = bug_id or HEALTHY
    return HEALTHY if FAULTS.get(bug_id) and FAULTS[bug_id].reuses_healthy_checkpoint else bug_id


def data_fault(bug_id: int | None) -> int:
    """The fault that changes a version's data (0 for model and hyper-parameter faults)."""
    return bug_id if is_kind(bug_id, "data") else HEALTHY


def structure_fault(bug_id: int | None) -> int:
    """The fault built into a version's network (0 unless it is a model fault)."""
    return bug_id if is_kind(bug_id, "model") else HEALTHY


def paper_structure_fault(bug_id: int | None) -> int:
    """The fault built into the paper's released weights of a version (its no-op faults built none)."""
    return HEALTHY if bug_id and FAULTS[bug_id].paper_no_op else structure_fault(bug_id)


def unsupported_faults(dataset_name: str) -> tuple[int, ...]:
    """Faults that do not exist for a dataset (a clear error instead of a silent no-op)."""
    return tuple(fault.id for fault in FAULT_TABLE if not fault.applies_to(dataset_name))


LR_FACTOR = 20  # paper: 0.002 instead of 0.0001
EPOCH_DIVISOR = 3  # paper: 10 instead of 30
WRONG_LABEL_FRACTION = 0.1
TRAIN_FRACTION_KEPT = 0.5
PREPROCESSING_SCALE = 0.5
NOISE_STD = 0.1
BLUR_KERNEL, BLUR_SIGMA = 5, 1.5


def validate_bug_id(bug_id, dataset=None) -> int:
    """``bug_id`` as an int in 0..12; with a dataset, refuse faults that do not apply to it."""
    bug_id = 0 if bug_id is None else bug_id
    if isinstance(bug_id, bool) or not isinstance(bug_id, int) or bug_id not in (HEALTHY, *FAULT_IDS):
        raise UsageError(f"unknown fault {bug_id!r}; faults are 0 (healthy) and {FAULT_IDS[0]}-{FAULT_IDS[-1]}")
    if dataset is not None and bug_id and not FAULTS[bug_id].applies_to(dataset.name):
        fault = FAULTS[bug_id]
        raise UsageError(f"fault {bug_id} ({fault.name}) does not apply to {dataset.name}; "
                         f"it exists only for {', '.join(fault.datasets)}")
    return bug_id


# ---------------------------------------------------------------------------------------------
# model faults
# ---------------------------------------------------------------------------------------------

def inject_model_fault(model, bug_id: int):
    """Apply fault 1, 2 or 3 to a ``MyModel`` (in place, returned) or to a bare ``nn.Module`` (2, 3).

    Other faults leave the model as it is.
    """
    if not is_kind(bug_id, "model"):
        return model
    if isinstance(model, nn.Module):
        if bug_id == 1:
            raise UsageError("fault 1 needs the architecture's reduced variant: pass the MyModel, not the nn.Module")
        return widen_filters(model) if bug_id == 2 else remove_activations(model)
    if bug_id == 1:
        model.model_structure = model.build_reduced(model.num_classes)
    elif bug_id == 2:
        widen_filters(model.model_structure)
    else:
        remove_activations(model.model_structure)
    return model


def widen_filters(network: nn.Module, size: int = 5) -> nn.Module:
    """Fault 2: every stride-1 convolution with a kernel above 1×1 becomes a fresh ``size``×``size`` one.

    Padding keeps the output shape ("same"), so the rest of the network is untouched.
    """
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv2d) and child.stride == (1, 1) and child.kernel_size != (1, 1)
                    and child.dilation == (1, 1)):
                wide = nn.Conv2d(child.in_channels, child.out_channels, size, stride=1, padding=size // 2,
                                 groups=child.groups, bias=child.bias is not None)
                setattr(parent, name, wide.to(child.weight.device, child.weight.dtype))
    return network


def remove_activations(network: nn.Module) -> nn.Module:
    """Fault 3: every ReLU module is replaced by the identity (the nets use no functional ReLU)."""
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Identity())
    return network


# ---------------------------------------------------------------------------------------------
# hyper-parameter faults
# ---------------------------------------------------------------------------------------------

class SoftmaxSquaredError(nn.Module):
    """Fault 6: squared error between softmax outputs and one-hot targets instead of cross-entropy.

    Its gradients vanish for confident wrong predictions, so training is slower and worse.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = logits.float().softmax(dim=1)
        one_hot = F.one_hot(target, num_classes=logits.shape[1]).float()
        return ((probabilities - one_hot) ** 2).sum(dim=1).mean()


def inject_hyperparameters_fault(trainer, bug_id: int):
    """Apply fault 4, 5 or 6 to a ``ModelTrainer`` before it trains (in place, returned)."""
    if bug_id == 4:
        trainer.lr *= LR_FACTOR
        for group in trainer.optimizer.param_groups:
            group["lr"] *= LR_FACTOR
            group["initial_lr"] = group["lr"]
        if trainer.scheduler is not None:
            trainer.scheduler.base_lrs = [group["lr"] for group in trainer.optimizer.param_groups]
    elif bug_id == 5:
        trainer.epochs = max(1, round(trainer.epochs / EPOCH_DIVISOR))
    elif bug_id == 6:
        trainer.criteria = SoftmaxSquaredError()
    return trainer


# ---------------------------------------------------------------------------------------------
# data faults
# ---------------------------------------------------------------------------------------------

def inject_dataset_fault(data, bug_id: int):
    """Apply fault 7-12 to a ``MyData`` (in place, returned); other faults leave it as it is."""
    generator = torch.Generator().manual_seed(SEED + bug_id)
    if bug_id == 7:
        data.x_train = data.x_train * PREPROCESSING_SCALE
        data.x_val = data.x_val * PREPROCESSING_SCALE
        data.x_test = data.x_test * PREPROCESSING_SCALE
    elif bug_id == 8:
        data.y_train = mislabel(data.y_train, data.num_classes, WRONG_LABEL_FRACTION, generator)
    elif bug_id == 9:
        keep, _ = stratified_split(data.y_train, 1.0 - TRAIN_FRACTION_KEPT, SEED)
        data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    elif bug_id == 10:
        noisy = blur if data.source is not None and data.source.test_noise == "blur" else add_gaussian_noise
        data.x_test = noisy(data.x_test, generator)
    elif replaces_test_set(bug_id):
        data.x_test, data.y_test = data.source.load_shifted_test(data.data_root, bug_id)
    return data


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
    from torchvision.transforms.v2.functional import gaussian_blur

    return gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA]).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# the paper repository's class form
# ---------------------------------------------------------------------------------------------

class FaultInjector:
    """``from FaultInjector import FaultInjector``, as in the paper repository: its three entry points,
    with its argument names, each handing over to this module's function of the same name (inside a
    method body these names are the module's functions, not the methods)."""

    @staticmethod
    def inject_model_fault(model, bug_id: int):
        return inject_model_fault(model, bug_id)

    @staticmethod
    def inject_hyperparameters_fault(trainer, bug_id: int):
        return inject_hyperparameters_fault(trainer, bug_id)

    @staticmethod
    def inject_dataset_fault(dataset, bug_id: int):
        return inject_dataset_fault(dataset, bug_id)
