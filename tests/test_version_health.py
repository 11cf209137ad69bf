"""A version that answers at chance says so where it is found: versions broken on purpose (stale batch-norm
statistics; a classifier that answers one class) give one ``warning:`` line and a ``warnings`` entry in their
metadata, naming stale statistics only where they are the cause; and training re-estimates statistics that
never settled (closed case: a network that normalises its inputs learns their per-channel mean)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import ModelManager
from ModelTrainer import STALE_BATCH_NORM, ModelTrainer, batch_norm_layers
from storage.files import safe_torch_load, save_torch
from storage.metadata import read_metadata
from storage.settings import Roots


def _broken_copy(pipeline, tmp_path, model: str, damage) -> Roots:
    """``model``'s healthy version of the reference pipeline, copied with its weights changed by ``damage``."""
    roots = Roots(data=pipeline.data, model=tmp_path / "model", info=tmp_path / "info", output=tmp_path / "out")
    Path(roots.model).mkdir()
    shutil.copy2(pipeline.metadata(model), roots.model)
    state = safe_torch_load(pipeline.checkpoint(model))
    damage(state)
    save_torch(Path(roots.model) / pipeline.checkpoint(model).name, state)
    return roots


def _reevaluated(roots: Roots, model: str, capsys) -> tuple[dict, str]:
    ModelManager.create_model(model, "DIGITS", "evaluate", 0, "cpu", roots=roots, progress=False)
    metadata = read_metadata(Path(roots.model) / f"{model}_DIGITS.json")
    return metadata, capsys.readouterr().err


def test_a_version_warns_exactly_when_it_is_within_five_points_of_chance(pipeline):
    for path in sorted(pipeline.model.glob("*.json")):
        metadata = read_metadata(path)
        low = min(metadata["val_acc"], metadata["test_acc"]) <= 1 / metadata["num_classes"] + ModelManager.CHANCE_MARGIN
        assert bool(metadata["warnings"]) == low, (path.name, metadata["warnings"])
    assert read_metadata(pipeline.metadata("densenet"))["warnings"] == []


@pytest.mark.slow  # re-measures a DenseNet on the whole validation and test splits
def test_stale_batch_norm_statistics_are_named_as_the_cause(pipeline, tmp_path, capsys, single_thread):
    def stale(state):  # running means far from anything the layers see: evaluation mode answers one class
        for name, tensor in state.items():
            if name.endswith("running_mean"):
                tensor.fill_(1e3)

    metadata, err = _reevaluated(_broken_copy(pipeline, tmp_path, "densenet", stale), "densenet", capsys)
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err
    assert "densenet_DIGITS is at chance" in lines[0] and "validation accuracy" in lines[0]
    assert "batch-norm running statistics are stale" in lines[0] and "--force" in lines[0]
    assert metadata["warnings"] == [lines[0].removeprefix("warning: ")]
    assert metadata["val_acc"] <= 0.1 + ModelManager.CHANCE_MARGIN


@pytest.mark.slow  # re-measures a DenseNet on the whole validation and test splits
def test_a_version_answering_one_class_is_at_chance_for_another_reason(pipeline, tmp_path, capsys, single_thread):
    def one_class(state):  # the last layer answers the same logits whatever the input
        last = [name for name in state if name.endswith(".weight") and state[name].dim() == 2][-1]
        state[last].zero_()
        state[last.replace(".weight", ".bias")].zero_()

    metadata, err = _reevaluated(_broken_copy(pipeline, tmp_path, "densenet", one_class), "densenet", capsys)
    assert len(metadata["warnings"]) == 1
    assert "is at chance: validation accuracy" in metadata["warnings"][0]
    assert "test accuracy" in metadata["warnings"][0]
    assert "stale" not in metadata["warnings"][0]  # batch statistics cannot help a constant classifier
    assert f"warning: {metadata['warnings'][0]}" in err


class _Normalised(torch.nn.Module):
    """A classifier whose first layer normalises its (grey) inputs by a batch norm with a slow momentum."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1, momentum=0.01)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8, 10))

    def forward(self, x):
        return self.head(self.norm(x.mean(dim=1, keepdim=True)))


def _loaders(data):
    train = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    val = torch.utils.data.TensorDataset(data.x_val, data.y_val)
    return torch.utils.data.DataLoader(train, batch_size=16), torch.utils.data.DataLoader(val, batch_size=16)


def test_statistics_that_never_settled_are_re_estimated_as_the_training_inputs_mean(tiny_digits, single_thread):
    torch.manual_seed(0)
    train, val = _loaders(tiny_digits)
    trainer = ModelTrainer(_Normalised(), epochs=5, lr=0.05, device="cpu", progress=False)
    assert trainer.train_model(train, val)["batch_norm"]["val_acc_batch_statistics"] > 0.3
    (layer,) = batch_norm_layers(trainer.model)
    layer.running_mean.fill_(50.0)  # as if it still weighed a start far from the data: evaluation mode breaks
    settled = trainer.settle_batch_norm(train, val)
    assert settled["reestimated"] and settled["val_acc_reestimated"] > settled["val_acc"]
    assert settled["val_acc_batch_statistics"] - settled["val_acc"] > STALE_BATCH_NORM
    # re-estimated as a plain average over the training batches (four of 16): the inputs' mean, exactly
    assert layer.running_mean.item() == pytest.approx(tiny_digits.x_train.mean(dim=1).mean().item(), rel=1e-5)
    assert not layer.training


def test_statistics_that_settled_are_left_as_they_are(tiny_digits, single_thread):
    torch.manual_seed(0)
    train, val = _loaders(tiny_digits)
    trainer = ModelTrainer(_Normalised(), epochs=1, lr=0.05, device="cpu", progress=False)
    trainer.train_model(train, val)
    (layer,) = batch_norm_layers(trainer.model)
    layer.running_mean.copy_(tiny_digits.x_train.mean(dim=1).mean())
    layer.running_var.copy_(tiny_digits.x_train.mean(dim=1).var())
    before = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    settled = trainer.settle_batch_norm(train, val)
    assert not settled["reestimated"]
    assert all(torch.equal(before[name], tensor) for name, tensor in trainer.model.state_dict().items())


def test_a_network_without_batch_norm_is_left_as_it_is(tiny_digits):
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    train, val = _loaders(tiny_digits)
    assert ModelTrainer(network, device="cpu", progress=False).settle_batch_norm(train, val) is None


def test_a_faulty_version_keeps_its_stale_statistics(tiny_digits, single_thread):
    """``settle=False`` (what a faulty version is trained with: its fault is not repaired) leaves them as trained."""
    torch.manual_seed(0)
    train, val = _loaders(tiny_digits)
    trainer = ModelTrainer(_Normalised(), epochs=1, lr=0.05, device="cpu", progress=False)
    history = trainer.train_model(train, val, settle=False)
    assert "batch_norm" not in history
    (layer,) = batch_norm_layers(trainer.model)
    assert abs(layer.running_mean.item() - tiny_digits.x_train.mean(dim=1).mean().item()) > 0.1  # four steps at 0.01
