"""The twelve development faults of the paper, each really changing what it claims to.

Model faults (1-3) rebuild or rewire the network before training, hyper-parameter faults (4-6)
change the trainer that will train it, data faults (7-12) change the splits it learns from or is
tested on. In the paper repository faults 2, 3, 4 and 6 changed nothing training sees; here they do.

``FAULT_TABLE`` is the one place a fault is declared: its facts and the function that applies it.
Injection looks the function up; a fault of the right kind without one is an error, never a silent
fallback. A thirteenth fault is one function and one ``register_fault(Fault(...))`` row (the contract:
:class:`Fault`'s fields, and ``KINDS`` for what ``apply`` receives). A model fault declares what it needs of
an architecture (``unsupported_by``): grids drop the pairs that cannot be built, an explicit request for one
is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_faults import (
    reduce_structure,
    remove_activations,
    widen_filters,
    with_functional_activations,
    without_reduced_variant,
    without_widenable_filters,
)
from settings import SEED
from utils import UsageError, stratified_split

HEALTHY = 0
#: what each kind of fault is applied to, and the call its function receives
KINDS = {
    "model": "a network: apply(network, architecture) -> network (architecture: the MyModel, None for a bare module)",
    "hyper-parameter": "a trainer: apply(trainer), changing it in place",
    "data": "a dataset: apply(data, bug_id, generator), changing the MyData in place",
}


@dataclass(frozen=True)
class Fault:
    """One fault: its facts, which every other module asks this table for, and the function applying it."""

    id: int
    name: str
    kind: str  # a key of KINDS
    #: applies the fault to what its kind names (see ``KINDS``)
    apply: Callable | None
    #: changes only the test inputs: the version reuses the healthy checkpoint and failure model
    test_data_only: bool = False
    #: swaps the whole test set for another one (its own ground truth file)
    replaces_test_set: bool = False
    #: datasets it exists for (None: every dataset)
    datasets: tuple[str, ...] | None = None
    #: the paper repository's implementation was a no-op, so its released weights have the healthy structure
    paper_no_op: bool = False
    #: whether an architecture (a ``MyModel`` class) can carry the fault: None where it can, otherwise why not
    #: (model faults: checked on the architecture's network, built on the meta device, so it costs no memory)
    unsupported_by: Callable[[type], str | None] | None = None

    @property
    def reuses_healthy_checkpoint(self) -> bool:
        return self.test_data_only

    def applies_to(self, dataset_name: str) -> bool:
        return self.datasets is None or str(dataset_name).upper() in self.datasets


#: every fault by id, the table's rows and any registered later
FAULTS: dict[int, Fault] = {}


def register_fault(fault: Fault) -> Fault:
    """Enter a fault in ``FAULTS`` (ids are positive and unique; the kind one of ``KINDS``)."""
    if isinstance(fault.id, bool) or not isinstance(fault.id, int) or fault.id <= HEALTHY:
        raise ValueError(f"a fault id is a positive whole number, got {fault.id!r}")
    if fault.kind not in KINDS:
        raise ValueError(f"fault {fault.id}: kind {fault.kind!r} is not one of {', '.join(KINDS)}")
    if FAULTS.get(fault.id, fault) is not fault:
        raise ValueError(f"fault {fault.id} is registered twice ({FAULTS[fault.id].name!r}, {fault.name!r})")
    FAULTS[fault.id] = fault
    return fault


def fault_ids() -> tuple[int, ...]:
    """The registered faults' ids, ascending (healthy, 0, is not one)."""
    return tuple(sorted(FAULTS))


def all_bug_ids() -> tuple[int, ...]:
    """Healthy and every fault: what a grid of "all faults" asks for (each dataset keeps those that apply)."""
    return (HEALTHY, *fault_ids())


def describe_ids() -> str:
    """The valid ids in words, for messages: ``0 (healthy) and 1-12``."""
    ids = fault_ids()
    if ids == tuple(range(ids[0], ids[-1] + 1)):
        return f"{HEALTHY} (healthy) and {ids[0]}-{ids[-1]}"
    return f"{HEALTHY} (healthy) and {', '.join(map(str, ids))}"


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
    return tuple(fault.id for fault in FAULTS.values() if not fault.applies_to(dataset_name))


@lru_cache(maxsize=None)
def unsupported_reason(bug_id: int | None, architecture: type) -> str | None:
    """None where the architecture (a ``MyModel`` class) can carry ``bug_id``; otherwise why not, in words.

    Each fault declares what it needs (``Fault.unsupported_by``), checked once per architecture: a default grid
    drops the pairs that fail, an explicit request for one is refused before any work."""
    if not bug_id or FAULTS[bug_id].unsupported_by is None:
        return None
    return FAULTS[bug_id].unsupported_by(architecture)


def check_supported(bug_id: int | None, architecture: type) -> None:
    """Refuse (a UsageError naming the architecture, the fault and why) a pair that cannot be built."""
    reason = unsupported_reason(bug_id, architecture)
    if reason:
        raise UsageError(f"{architecture.name} cannot carry fault {bug_id} ({FAULTS[bug_id].name}): {reason}")


def validate_bug_id(bug_id, dataset=None) -> int:
    """``bug_id`` as a registered fault's id (or 0); with a dataset, refuse faults that do not apply to it."""
    bug_id = 0 if bug_id is None else bug_id
    if isinstance(bug_id, bool) or not isinstance(bug_id, int) or bug_id not in all_bug_ids():
        raise UsageError(f"unknown fault {bug_id!r}; faults are {describe_ids()}")
    if dataset is not None and bug_id and not FAULTS[bug_id].applies_to(dataset.name):
        fault = FAULTS[bug_id]
        raise UsageError(f"fault {bug_id} ({fault.name}) does not apply to {dataset.name}; "
                         f"it exists only for {', '.join(fault.datasets)}")
    return bug_id


def _applier(bug_id: int | None, kind: str) -> Callable | None:
    """The function applying ``bug_id`` if it is a fault of ``kind``; None for healthy or another kind."""
    if not bug_id:
        return None
    fault = FAULTS[validate_bug_id(bug_id)]
    if fault.kind != kind:
        return None
    if fault.apply is None:
        raise NotImplementedError(f"fault {fault.id} ({fault.name}) is a {kind} fault but its FAULT_TABLE row names "
                                  f"no function applying it to {KINDS[kind].split(':')[0]}; give it apply=...")
    return fault.apply


def inject_model_fault(model, bug_id: int):
    """Apply a model fault to a ``MyModel`` (in place, returned) or to a bare ``nn.Module`` (returned).

    Faults of other kinds leave the model as it is.
    """
    apply = _applier(bug_id, "model")
    if apply is None:
        return model
    if isinstance(model, nn.Module):
        return apply(model, None)
    check_supported(bug_id, type(model))
    model.model_structure = apply(model.model_structure, model)
    return model


def inject_hyperparameters_fault(trainer, bug_id: int):
    """Apply a hyper-parameter fault to a ``ModelTrainer`` before it trains (in place, returned)."""
    apply = _applier(bug_id, "hyper-parameter")
    if apply is not None:
        apply(trainer)
    return trainer


def inject_dataset_fault(data, bug_id: int):
    """Apply a data fault to a ``MyData`` (in place, returned); other faults leave it as it is."""
    apply = _applier(bug_id, "data")
    if apply is not None:
        apply(data, bug_id, torch.Generator().manual_seed(SEED + bug_id))
    return data


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
    from torchvision.transforms.v2.functional import gaussian_blur

    return gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA]).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

FAULT_TABLE: tuple[Fault, ...] = tuple(register_fault(fault) for fault in (
    Fault(1, "suboptimal structure", "model", reduce_structure, unsupported_by=without_reduced_variant),
    Fault(2, "wrong filter size", "model", widen_filters, paper_no_op=True, unsupported_by=without_widenable_filters),
    Fault(3, "missing activation", "model", remove_activations, paper_no_op=True,
          unsupported_by=with_functional_activations),
    Fault(4, "suboptimal learning rate", "hyper-parameter", raise_learning_rate, paper_no_op=True),
    Fault(5, "too few epochs", "hyper-parameter", cut_epochs),
    Fault(6, "wrong loss function", "hyper-parameter", use_squared_error_loss, paper_no_op=True),
    Fault(7, "wrong preprocessing", "data", shrink_pixel_range),
    Fault(8, "wrong labels", "data", mislabel_training),
    Fault(9, "not enough training data", "data", halve_training_set),
    Fault(10, "noisy test data", "data", corrupt_test_inputs, test_data_only=True),
    Fault(11, "distribution shift (CIFAR-10.1 v4)", "data", shift_test_set, test_data_only=True,
          replaces_test_set=True, datasets=("CIFAR10",)),
    Fault(12, "distribution shift (CIFAR-10.1 v6)", "data", shift_test_set, test_data_only=True,
          replaces_test_set=True, datasets=("CIFAR10",)),
))


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
