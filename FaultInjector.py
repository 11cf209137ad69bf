"""The development faults: the paper's twelve and the DL-mutation operators (13 and up), each really changing
what it claims to.

Model faults (1-3) rebuild or rewire the network before training, hyper-parameter faults (4-6)
change the trainer that will train it, data faults (7-12) change the splits it learns from or is
tested on. In the paper repository faults 2, 3, 4 and 6 changed nothing training sees; here they do.
Faults 13 and up (``faults/mutation.py``) are DeepCrime's training-time operators that the twelve do not
cover; a parametric one declares its parameter (:class:`FaultParameter`), which training may set
(``TrainSettings.fault_parameter``) and ``main_validate_faults.py --search`` bisects.

``FAULT_TABLE`` is the one place a fault is declared: its facts and the function that applies it.
Injection looks the function up; a fault of the right kind without one is an error, never a silent
fallback. A thirteenth fault is one function and one ``register_fault(Fault(...))`` row (the contract:
:class:`Fault`'s fields, and ``KINDS`` for what ``apply`` receives). A model fault declares what it needs of
an architecture (``unsupported_by``): grids drop the pairs that cannot be built, an explicit request for one
is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn as nn

from faults import CUSTOM, FAMILIES, MUTATION, PAPER, mutation
from faults.model import (
    reduce_structure,
    remove_activations,
    widen_filters,
    with_functional_activations,
    without_reduced_variant,
    without_widenable_filters,
)
from faults.training import (
    SoftmaxSquaredError,  # noqa: F401 - part of this module's interface
    corrupt_test_inputs,
    cut_epochs,
    halve_training_set,
    mislabel_training,
    raise_learning_rate,
    shift_test_set,
    shrink_pixel_range,
    use_squared_error_loss,
)
from utils import SEED, UsageError

HEALTHY = 0
#: what each kind of fault is applied to, and the call its function receives
KINDS = {
    "model": "a network: apply(network, architecture) -> network (architecture: the MyModel, None for a bare module)",
    "hyper-parameter": "a trainer: apply(trainer), changing it in place",
    "data": "a dataset: apply(data, bug_id, generator), changing the MyData in place",
}


@dataclass(frozen=True)
class FaultParameter:
    """The parameter of a parametric fault: its name, the value a plain run uses, the bounds a search stays
    within, which end makes the fault stronger, and whether the search halves it on a log scale."""

    name: str
    default: float
    low: float
    high: float
    stronger: str = "high"  # "high" or "low": the end at which the fault does the most damage
    log: bool = False

    def check(self, value: float) -> float:
        """``value`` as a float within the bounds, else a UsageError naming them."""
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and self.low <= value <= self.high):
            raise UsageError(f"{self.name} {value!r} is outside [{self.low:g}, {self.high:g}]")
        return float(value)




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
    #: one of ``FAMILIES``: presets take faults by family
    family: str = CUSTOM
    #: the real fault it models, in one line
    description: str = ""
    #: a parametric fault's parameter (its function then takes the value last)
    parameter: FaultParameter | None = None

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
    if fault.family not in FAMILIES:
        raise ValueError(f"fault {fault.id}: family {fault.family!r} is not one of {', '.join(FAMILIES)}")
    if FAULTS.get(fault.id, fault) is not fault:
        raise ValueError(f"fault {fault.id} is registered twice ({FAULTS[fault.id].name!r}, {fault.name!r})")
    FAULTS[fault.id] = fault
    return fault


def fault_ids(families: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """The registered faults' ids, ascending (healthy, 0, is not one); with ``families``, those of them only."""
    return tuple(sorted(bug for bug, fault in FAULTS.items() if families is None or fault.family in families))


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


def parameter_value(bug_id: int | None, value: float | None = None) -> float | None:
    """The value a version of ``bug_id`` is built with: ``value`` (checked against the bounds) or the declared
    default for a parametric fault; None for any other (where a value asked for is a UsageError)."""
    parameter = FAULTS[bug_id].parameter if bug_id else None
    if parameter is None:
        if value is not None:
            raise UsageError(f"fault {bug_id} ({fault_name(bug_id)}) has no parameter to set to {value!r}")
        return None
    try:
        return parameter.default if value is None else parameter.check(value)
    except UsageError as exc:
        raise UsageError(f"fault {bug_id} ({fault_name(bug_id)}): {exc}") from None


def _applier(bug_id: int | None, kind: str, value: float | None = None) -> Callable | None:
    """The function applying ``bug_id`` if it is a fault of ``kind`` (a parametric one's value bound last); None
    for healthy or another kind."""
    if not bug_id:
        return None
    fault = FAULTS[validate_bug_id(bug_id)]
    if fault.kind != kind:
        return None
    if fault.apply is None:
        raise NotImplementedError(f"fault {fault.id} ({fault.name}) is a {kind} fault but its FAULT_TABLE row names "
                                  f"no function applying it to {KINDS[kind].split(':')[0]}; give it apply=...")
    bound = parameter_value(bug_id, value)
    return fault.apply if bound is None else lambda *args: fault.apply(*args, bound)


def inject_model_fault(model, bug_id: int, parameter: float | None = None):
    """Apply a model fault to a ``MyModel`` (in place, returned) or to a bare ``nn.Module`` (returned).

    Faults of other kinds leave the model as it is; ``parameter`` sets a parametric fault's value.
    """
    apply = _applier(bug_id, "model", parameter)
    if apply is None:
        return model
    if isinstance(model, nn.Module):
        return apply(model, None)
    check_supported(bug_id, type(model))
    model.model_structure = apply(model.model_structure, model)
    return model


def inject_hyperparameters_fault(trainer, bug_id: int, parameter: float | None = None):
    """Apply a hyper-parameter fault to a ``ModelTrainer`` before it trains (in place, returned)."""
    apply = _applier(bug_id, "hyper-parameter", parameter)
    if apply is not None:
        apply(trainer)
    return trainer


def inject_dataset_fault(data, bug_id: int, parameter: float | None = None):
    """Apply a data fault to a ``MyData`` (in place, returned); other faults leave it as it is."""
    apply = _applier(bug_id, "data", parameter)
    if apply is not None:
        apply(data, bug_id, torch.Generator().manual_seed(SEED + bug_id))
    return data


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

FAULT_TABLE: tuple[Fault, ...] = tuple(register_fault(fault) for fault in (
    Fault(1, "suboptimal structure", "model", reduce_structure, unsupported_by=without_reduced_variant,
          family=PAPER, description="too few blocks or layers for the task"),
    Fault(2, "wrong filter size", "model", widen_filters, paper_no_op=True, unsupported_by=without_widenable_filters,
          family=PAPER, description="convolution kernels of the wrong size"),
    Fault(3, "missing activation", "model", remove_activations, paper_no_op=True,
          unsupported_by=with_functional_activations, family=PAPER,
          description="activation functions left out, so the network is nearly linear"),
    Fault(4, "suboptimal learning rate", "hyper-parameter", raise_learning_rate, paper_no_op=True, family=PAPER,
          description="a learning rate twenty times the tuned one"),
    Fault(5, "too few epochs", "hyper-parameter", cut_epochs, family=PAPER,
          description="training stopped at a third of its budget"),
    Fault(6, "wrong loss function", "hyper-parameter", use_squared_error_loss, paper_no_op=True, family=PAPER,
          description="squared error on softmax outputs instead of cross-entropy"),
    Fault(7, "wrong preprocessing", "data", shrink_pixel_range, family=PAPER,
          description="inputs scaled to half their range in every split"),
    Fault(8, "wrong labels", "data", mislabel_training, family=PAPER,
          description="a tenth of the training labels wrong"),
    Fault(9, "not enough training data", "data", halve_training_set, family=PAPER,
          description="half the training set"),
    Fault(10, "noisy test data", "data", corrupt_test_inputs, test_data_only=True, family=PAPER,
          description="noisy (or blurred) inputs at test time"),
    Fault(11, "distribution shift (CIFAR-10.1 v4)", "data", shift_test_set, test_data_only=True,
          replaces_test_set=True, datasets=("CIFAR10",), family=PAPER, description="a re-collected test set"),
    Fault(12, "distribution shift (CIFAR-10.1 v6)", "data", shift_test_set, test_data_only=True,
          replaces_test_set=True, datasets=("CIFAR10",), family=PAPER, description="a re-collected test set"),
    # DeepCrime's training-time operators the twelve do not cover (faults/mutation.py)
    Fault(13, "wrong optimiser", "hyper-parameter", mutation.use_plain_sgd, family=MUTATION,
          description="the optimiser swapped for plain SGD, keeping the learning rate tuned for Adam"),
    Fault(14, "excessive weight decay", "hyper-parameter", mutation.set_weight_decay, family=MUTATION,
          description="an L2 penalty far above the tuned one",
          parameter=FaultParameter("weight_decay", 0.1, 1e-4, 1.0, "high", log=True)),
    Fault(15, "missing bias", "model", mutation.remove_biases, family=MUTATION,
          description="convolution and linear layers built with bias=False"),
    Fault(16, "bad weight initialisation", "model", mutation.scale_initial_weights, family=MUTATION,
          description="weights initialised with a gain far below the fan-in scaled one",
          parameter=FaultParameter("init_scale", 0.01, 1e-3, 1.0, "low", log=True)),
    Fault(17, "too much dropout", "model", mutation.set_dropout, unsupported_by=mutation.without_dropout,
          family=MUTATION, description="a dropout rate far above the architecture's",
          parameter=FaultParameter("dropout", 0.8, 0.5, 0.95, "high")),
    Fault(18, "noisy training data", "data", mutation.add_training_noise, family=MUTATION,
          description="training images corrupted by noise the test images do not have",
          parameter=FaultParameter("noise_std", 0.3, 0.01, 1.0, "high", log=True)),
    Fault(19, "unbalanced classes", "data", mutation.unbalance_classes, family=MUTATION,
          description="half the classes under-represented in the training set",
          parameter=FaultParameter("kept_fraction", 0.1, 0.01, 1.0, "low", log=True)),
    Fault(20, "unshuffled training data", "data", mutation.sort_training_data, family=MUTATION,
          description="training data stored class by class and never shuffled"),
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
