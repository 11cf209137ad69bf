"""Every name declared once: an architecture, a dataset and a fault are each added in one place (a class and
its decorator line, or a function and its table row), and the presets, ``--help``, the grid and the
pipeline take them with nothing else changed. A fault row without a function is an error, never a
silent fallback."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import SCRIPTS, run_in_process

import cli
import DatasetManager
import FaultInjector
import ModelManager
from FaultInjector import Fault, register_fault
from ModelTrainer import ModelTrainer
from mydataset import MyDataset, RawSplits, register_dataset
from mymodel import MyModel, register_model
from settings import TrainingRecipe

pytestmark = pytest.mark.usefixtures("single_thread", "restore_registries")


def help_text(capsys, script: str) -> str:
    result = run_in_process(capsys, script, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_architecture_is_one_class_and_its_decorator(capsys, empty_workspace):
    @register_model
    class TinyNet(MyModel):
        name = "tinynet"
        min_input_size = 8

        def build(self, num_classes: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))

        def build_reduced(self, num_classes: int) -> nn.Module:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

    assert ModelManager.get_model_class("TinyNet") is TinyNet
    for preset in ("digits", "paper"):  # the presets that take every architecture
        assert "tinynet" in cli.PRESETS[preset].resolved()[1]
    assert "tinynet" not in cli.PRESETS["demo"].resolved()[1]  # the demo names its three
    for script in SCRIPTS:
        assert "tinynet" in " ".join(help_text(capsys, script).split())
    ws = empty_workspace
    grid = ["--models", "tinynet", "--bugs", "0", "1", "3"]
    trained = run_in_process(capsys, "train", *ws.argv("train", "--epochs", "1", grid=grid))
    assert trained.returncode == 0, trained.stderr
    for bug, fault in ((0, "healthy"), (1, "suboptimal structure"), (3, "missing activation")):
        metadata = json.loads(ws.metadata("tinynet", bug).read_text())
        assert (metadata["model"], metadata["fault"], metadata["image_size"]) == ("tinynet", fault, 32)
    fitted = run_in_process(capsys, "fit", *ws.argv("fit", "--max-inputs", "10", grid=grid))
    assert fitted.returncode == 0, fitted.stderr
    assert ws.kde("correct", model="tinynet", bug=3).is_file()


class Stripes(MyDataset):
    """Four classes of 8×8 images, each a bright horizontal band at its own height, with noise."""

    name = "STRIPES"
    image_size = 8
    defaults = TrainingRecipe(epochs=1, batch_size=16, lr=1e-3)

    def load(self, data_root) -> RawSplits:
        generator = torch.Generator().manual_seed(0)

        def split(n: int):
            labels = torch.arange(n) % 4
            images = torch.rand(n, 3, 8, 8, generator=generator) * 0.3
            for row, label in enumerate(labels):
                images[row, :, 2 * label:2 * label + 2, :] += 0.7
            return images.clamp(0, 1), labels

        return RawSplits(*split(80), *split(24))


def test_a_dataset_is_one_class_and_its_decorator(capsys, empty_workspace):
    register_dataset(Stripes)
    assert DatasetManager.get_dataset("stripes").name == "STRIPES"
    assert "STRIPES" not in DatasetManager.paper_datasets()  # not the paper's: --preset paper leaves it out
    assert "STRIPES" in " ".join(help_text(capsys, "train").split())
    data = DatasetManager.create_dataset("STRIPES")
    assert (len(data.y_train), len(data.y_val), len(data.y_test), data.num_classes) == (64, 16, 24, 4)
    ws = empty_workspace
    result = run_in_process(capsys, "train", *ws.argv("train", grid=["--datasets", "STRIPES", "--models",
                                                                      "squeezenet", "--bugs", "0", "9"]))
    assert result.returncode == 0, result.stderr
    for bug, train_size in ((0, 64), (9, 32)):  # fault 9 halves the training set
        metadata = json.loads((ws.model / f"squeezenet_STRIPES{'_bug9' if bug else ''}.json").read_text())
        assert (metadata["dataset"], metadata["epochs"], metadata["batch_size"]) == ("STRIPES", 1, 16)
        assert metadata["num_test"] == 24 and train_size == len(DatasetManager.create_dataset("STRIPES", bug).y_train)


def invert_training_images(data, bug_id: int, generator: torch.Generator) -> None:
    """A thirteenth fault: the training images' pixels inverted (validation and test untouched)."""
    data.x_train = 1.0 - data.x_train


def test_a_fault_is_one_function_and_its_row(capsys, empty_workspace, digits):
    register_fault(Fault(13, "inverted training images", "data", invert_training_images))
    assert FaultInjector.describe_ids() == "0 (healthy) and 1-13"
    assert 13 in cli.PRESETS["digits"].resolved()[2]
    assert "1-13" in " ".join(help_text(capsys, "train").split())
    faulty = DatasetManager.create_dataset("DIGITS", bug_id=13)
    assert torch.equal(faulty.x_train, 1.0 - digits.x_train) and torch.equal(faulty.x_test, digits.x_test)
    assert FaultInjector.data_fault(13) == 13 and FaultInjector.structure_fault(13) == 0
    ws = empty_workspace
    result = run_in_process(capsys, "train", *ws.argv("train", grid=["--models", "squeezenet", "--bugs", "13",
                                                                      "--epochs", "1"]))
    assert result.returncode == 0, result.stderr
    metadata = json.loads(ws.metadata("squeezenet", 13).read_text())
    assert (metadata["bug"], metadata["fault"]) == (13, "inverted training images")


@pytest.mark.parametrize("kind, inject, target", [
    ("model", FaultInjector.inject_model_fault, lambda: nn.Linear(2, 2)),
    ("hyper-parameter", FaultInjector.inject_hyperparameters_fault,
     lambda: ModelTrainer(nn.Linear(2, 2), device="cpu", progress=False)),
    ("data", FaultInjector.inject_dataset_fault, lambda: None),
])
def test_a_fault_row_without_a_function_is_an_error(kind, inject, target):
    register_fault(Fault(14, "declared but not written", kind, None))
    with pytest.raises(NotImplementedError, match=f"fault 14 .* is a {kind} fault but its FAULT_TABLE row names "
                                                  "no function"):
        inject(target(), 14)


def test_registries_refuse_a_second_entry_under_one_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_fault(Fault(5, "another fifth fault", "hyper-parameter", invert_training_images))
    with pytest.raises(ValueError, match="registered twice"):
        register_model(type("OtherResNet", (MyModel,), {"name": "resnet"}))
    with pytest.raises(ValueError, match="upper-case"):
        register_dataset(type("Lower", (MyDataset,), {"name": "lower"}))
