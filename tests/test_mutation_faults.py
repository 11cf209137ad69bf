"""Each DL-mutation operator (faults 13 and up) really changes what it claims to, and its parameter reaches it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import run_in_process

import DatasetManager
import FaultInjector
import ModelManager
from faults.mutation import WEIGHTED_LAYERS
from ModelTrainer import ModelTrainer
from pipeline import grids
from utils import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")

MUTATIONS = FaultInjector.fault_ids((FaultInjector.MUTATION,))


def tiny_trainer() -> ModelTrainer:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    return ModelTrainer(network, device="cpu", epochs=8, lr=1e-3, weight_decay=1e-4, step_size=6, gamma=0.1,
                        progress=False)


def test_at_least_eight_mutation_operators_after_the_papers_twelve():
    assert len(MUTATIONS) >= 8 and min(MUTATIONS) == 13
    assert FaultInjector.fault_ids((FaultInjector.PAPER,)) == tuple(range(1, 13))
    for bug in MUTATIONS:
        fault = FaultInjector.FAULTS[bug]
        assert fault.description and fault.apply is not None, bug
        if fault.parameter:
            p = fault.parameter
            assert p.low <= p.default <= p.high and p.stronger in ("high", "low"), bug


def test_presets_take_the_operators_by_family():
    assert grids.resolved(grids.PRESETS["digits"])[2] == tuple(range(13))
    assert grids.resolved(grids.PRESETS["mutations"])[2] == (0, *MUTATIONS)
    assert grids.resolved(grids.PRESETS["all-faults"])[2] == FaultInjector.all_bug_ids()


def test_fault13_swaps_adam_for_plain_sgd_with_the_same_learning_rate():
    trainer = tiny_trainer()
    FaultInjector.inject_hyperparameters_fault(trainer, 13)
    assert type(trainer.optimizer) is torch.optim.SGD
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.0, 1e-4)
    assert trainer.scheduler.optimizer is trainer.optimizer
    assert (trainer.scheduler.step_size, trainer.scheduler.gamma) == (6, 0.1)


@pytest.mark.parametrize("value, expected", [(None, 0.1), (0.5, 0.5)])
def test_fault14_sets_the_weight_decay(value, expected):
    trainer = tiny_trainer()
    FaultInjector.inject_hyperparameters_fault(trainer, 14, value)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [expected]


@pytest.mark.parametrize("bug, value, says", [(14, 5.0, r"outside \[0.0001, 1\]"), (14, float("nan"), "outside"),
                                              (13, 0.5, "has no parameter"), (4, 1.0, "has no parameter")])
def test_a_parameter_out_of_bounds_or_for_a_fault_without_one_is_refused(bug, value, says):
    with pytest.raises(UsageError, match=says):
        FaultInjector.inject_hyperparameters_fault(tiny_trainer(), bug, value)


def test_fault15_removes_every_convolution_and_linear_bias():
    healthy = ModelManager.build_version("squeezenet", 10).model_structure
    faulty = ModelManager.build_version("squeezenet", 10, 15).model_structure
    layers = [m for m in faulty.modules() if isinstance(m, WEIGHTED_LAYERS)]
    assert layers and all(m.bias is None for m in layers)
    assert any(name.endswith("bias") for name in healthy.state_dict())
    assert not any(name.endswith("bias") for name in faulty.state_dict())
    with torch.no_grad():
        assert faulty.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("value", [None, 0.1])
def test_fault16_scales_the_initial_weights(value):
    torch.manual_seed(3)
    healthy = ModelManager.build_version("squeezenet", 10).model_structure.state_dict()
    torch.manual_seed(3)
    faulty = ModelManager.build_version("squeezenet", 10, 16, value).model_structure.state_dict()
    scale = 0.01 if value is None else value
    for name, tensor in healthy.items():
        factor = scale if name.endswith("weight") else 1.0  # squeezenet has no normalisation layers
        assert torch.allclose(faulty[name], tensor * factor), name


def test_fault17_sets_every_dropout_rate_and_needs_a_dropout_layer():
    network = ModelManager.build_version("squeezenet", 10, 17, 0.9).model_structure
    rates = [m.p for m in network.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.9]
    assert FaultInjector.unsupported_reason(17, ModelManager.get_model_class("squeezenet")) is None
    assert "no dropout" in FaultInjector.unsupported_reason(17, ModelManager.get_model_class("resnet"))


def copies(data):
    return {name: getattr(data, name).clone() for name in ("x_train", "y_train", "x_val", "y_val", "x_test")}


def test_fault18_adds_noise_to_training_inputs_only(tiny_digits):
    before = copies(tiny_digits)
    FaultInjector.inject_dataset_fault(tiny_digits, 18, 0.2)
    change = tiny_digits.x_train - before["x_train"]
    assert 0.05 < change.abs().mean() < 0.2 and tiny_digits.x_train.min() >= 0 and tiny_digits.x_train.max() <= 1
    for name in ("y_train", "x_val", "y_val", "x_test"):
        assert torch.equal(getattr(tiny_digits, name), before[name]), name


def test_fault19_keeps_a_fraction_of_the_first_half_of_the_classes(digits):
    data = replace(digits)
    counts = torch.bincount(digits.y_train, minlength=10)
    FaultInjector.inject_dataset_fault(data, 19, 0.25)
    after = torch.bincount(data.y_train, minlength=10)
    for label in range(10):
        expected = max(1, round(0.25 * int(counts[label]))) if label < 5 else int(counts[label])
        assert int(after[label]) == expected, label
    assert torch.equal(data.x_val, digits.x_val) and torch.equal(data.x_test, digits.x_test)


def test_fault20_sorts_the_training_set_and_stops_shuffling(tiny_digits):
    FaultInjector.inject_dataset_fault(tiny_digits, 20)
    labels = tiny_digits.y_train
    assert torch.equal(labels, labels.sort().values) and not tiny_digits.shuffle_train
    seen = torch.cat([y for _, y in tiny_digits.at(batch_size=8).train_loader])
    assert torch.equal(seen, labels)  # every epoch, in label order
    assert tiny_digits.at(image_size=32).shuffle_train is False and DatasetManager.MyData.shuffle_train is True


def test_a_searched_value_is_recorded_and_a_change_retrains(capsys, empty_workspace):
    """The parameter travels from the settings into the fault and the metadata; another value is a retrain."""
    ws = empty_workspace
    from storage.settings import TrainSettings

    roots = replace(ModelManager.DEFAULT_ROOTS, model=str(ws.model), data=str(ws.data))
    data = DatasetManager.create_dataset("DIGITS")
    small = replace(data, x_train=data.x_train[:64], y_train=data.y_train[:64])
    settings = TrainSettings(epochs=1, fault_parameter=0.3)
    model = ModelManager.create_model("squeezenet", small, "train", 14, device="cpu", settings=settings, roots=roots,
                                      progress=False)
    metadata = json.loads(ws.metadata("squeezenet", 14).read_text())
    assert metadata["settings"]["fault_parameter"] == 0.3 and model.metadata["settings"]["fault_parameter"] == 0.3
    assert (metadata["weight_decay"], metadata["optimizer"]) == (0.3, "Adam")  # what the trainer really used
    assert ModelManager.training_status(ws.model, "squeezenet", "DIGITS", 14, settings) is None

    def status(value):
        asked = replace(settings, fault_parameter=value)
        return ModelManager.training_status(ws.model, "squeezenet", "DIGITS", 14, asked)

    assert status(0.5) == "settings changed: fault_parameter 0.3 -> 0.5"
    assert status(None) == "settings changed: fault_parameter 0.3 -> 0.1"  # the default is what an unset value builds


#: one operator per place a fault acts (the optimiser, the network's weights, the training data): each operator's
#: effect is tested above; this shows them reached from the command line, one training each
FROM_THE_COMMAND_LINE = (13, 16, 19)


@pytest.mark.slow
def test_the_operators_train_from_the_command_line(capsys, empty_workspace):
    assert set(FROM_THE_COMMAND_LINE) <= set(MUTATIONS)
    ws = empty_workspace
    grid = ["--models", "squeezenet", "--bugs", *map(str, FROM_THE_COMMAND_LINE)]
    result = run_in_process(capsys, "train", *ws.argv("train", "--epochs", "1", grid=grid))
    assert result.returncode == 0, result.stderr
    for bug in FROM_THE_COMMAND_LINE:
        metadata = json.loads(ws.metadata("squeezenet", bug).read_text())
        assert metadata["fault"] == FaultInjector.fault_name(bug) and 0 <= metadata["test_acc"] <= 1
