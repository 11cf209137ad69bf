"""Faults 13 and up: training-time mutation operators of the DL-mutation literature (DeepCrime, ISSTA 2021).

Each models a fault found in real deep-learning code and is one the paper's twelve do not already cover
(those cover the learning rate, epochs, loss, label noise, data removal, activation removal and preprocessing).
The signatures are ``FaultInjector.KINDS``'; a parametric operator takes its parameter's value last, and
declares the parameter (default, bounds, which end is stronger) in its ``FAULT_TABLE`` row, where
``main_validate_faults.py --search`` reads it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from faults.model import meta_network

#: the layers whose weights and biases the initialisation and bias operators change
WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# ---------------------------------------------------------------------------------------------
# hyper-parameter operators: (trainer[, value]) -> None
# ---------------------------------------------------------------------------------------------

def use_plain_sgd(trainer) -> None:
    """Fault 13: the optimiser becomes plain SGD (no momentum) with the learning rate and weight decay that were
    tuned for Adam; the scheduler is rebuilt on it with the same step and factor."""
    old = trainer.scheduler
    decay = trainer.optimizer.param_groups[0]["weight_decay"]
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=trainer.lr, weight_decay=decay, momentum=0.0)
    if old is not None:
        trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=old.step_size,
                                                            gamma=old.gamma)


def set_weight_decay(trainer, value: float) -> None:
    """Fault 14: the L2 penalty (Adam's ``weight_decay``) of every parameter group set to ``value``."""
    for group in trainer.optimizer.param_groups:
        group["weight_decay"] = value


# ---------------------------------------------------------------------------------------------
# model operators: (network, architecture[, value]) -> network
# ---------------------------------------------------------------------------------------------

def remove_biases(network: nn.Module, architecture=None) -> nn.Module:
    """Fault 15: every convolution and linear layer loses its bias (built as if with ``bias=False``); the
    normalisation layers keep theirs."""
    for module in network.modules():
        if isinstance(module, WEIGHTED_LAYERS) and module.bias is not None:
            module.register_parameter("bias", None)
    return network


def scale_initial_weights(network: nn.Module, architecture=None, value: float = 0.01) -> nn.Module:
    """Fault 16: every convolution and linear weight starts ``value`` times its default (fan-in scaled)
    initialisation, as a wrong gain or standard deviation in an initialiser does."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, WEIGHTED_LAYERS):
                module.weight.mul_(value)
    return network


def set_dropout(network: nn.Module, architecture=None, value: float = 0.8) -> nn.Module:
    """Fault 17: every dropout layer drops a ``value`` fraction of its inputs."""
    for module in network.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = float(value)
    return network


def without_dropout(architecture: type) -> str | None:
    """Fault 17 needs a dropout layer to change (ResNet and DenseNet have none)."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in meta_network(architecture).modules()):
        return None
    return "its network has no dropout layer to change"


# ---------------------------------------------------------------------------------------------
# data operators: (data, bug_id, generator[, value]) -> None
# ---------------------------------------------------------------------------------------------

def add_training_noise(data, bug_id: int, generator: torch.Generator, value: float = 0.3) -> None:
    """Fault 18: Gaussian noise of standard deviation ``value`` on the training inputs only (clipped to [0, 1])."""
    noise = torch.randn(data.x_train.shape, generator=generator) * value
    data.x_train = (data.x_train + noise).clamp_(0.0, 1.0)


def unbalance_classes(data, bug_id: int, generator: torch.Generator, value: float = 0.1) -> None:
    """Fault 19: the first half of the classes keep only a ``value`` fraction of their training examples (at
    least one each); the other classes, validation and test are untouched."""
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    for label in range(data.num_classes // 2):
        members = (data.y_train == label).nonzero().flatten()
        dropped = members[torch.randperm(len(members), generator=generator)][max(1, round(value * len(members))):]
        keep[dropped] = False
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]


def sort_training_data(data, bug_id: int, generator: torch.Generator) -> None:
    """Fault 20: the training set sorted by label and never shuffled, so each batch holds one or two classes
    (a forgotten ``shuffle=True`` on data stored class by class)."""
    order = torch.sort(data.y_train, stable=True).indices
    data.x_train, data.y_train = data.x_train[order], data.y_train[order]
    data.shuffle_train = False
