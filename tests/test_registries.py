"""Every name declared once: an architecture, a dataset and a fault are each added in one place (a class and
its decorator line, or a function and its table row), and the presets, ``--help``, the grid and the
pipeline take them with nothing else changed. A fault row without a function is an error, never a
silent fallback. The contract tests iterate the registries: an architecture added by the README's one-liner,
or at the end of ModelManager.py, is checked like the built-in five, or told clearly what it lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import (
    APPENDED_ARCHITECTURE,
    SCRIPT_ENV,
    SCRIPTS,
    assert_usage_error,
    repository_copy,
    run_in_process,
    unused_fault_id,
    unused_name,
)

import DatasetManager
import FaultInjector
import launchers
import ModelManager
import mymodel
from Attacker import Attacker
from FaultInjector import Fault, register_fault
from faults import model as model_faults
from launchers import option
from launchers.common import upstream
from ModelTrainer import ModelTrainer
from mydataset import MyDataset, RawSplits, register_dataset
from mymodel import MyModel, register_model
from pipeline import flags, grids
from pipeline.runner import run_job
from storage import layout
from storage.settings import DISTANCE_MODES, DistanceMode, TrainingRecipe, register_distance_mode
from utils import UsageError

pytestmark = pytest.mark.usefixtures("single_thread", "restore_registries")


def help_text(capsys, script: str) -> str:
    result = run_in_process(capsys, script, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_architecture_is_one_class_and_its_decorator(capsys, empty_workspace):
    class TinyNet(MyModel):
        min_input_size = 8

        def build(self, num_classes: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))

        def build_reduced(self, num_classes: int) -> nn.Module:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

    name = TinyNet.name = unused_name(ModelManager.MODELS, "tinynet")  # its decorator line, with a free name
    register_model(TinyNet)
    assert ModelManager.get_model_class(name.upper()) is TinyNet
    for preset in ("digits", "paper"):  # the presets that take every architecture
        assert name in grids.resolved(grids.PRESETS[preset])[1]
    assert name not in grids.resolved(grids.PRESETS["demo"])[1]  # the demo names its three
    for script in SCRIPTS:  # every command line checks a name against the registry, and lists it
        refused = run_in_process(capsys, script, *empty_workspace.argv(script, grid=["--models", "no-such-net"]))
        assert_usage_error(refused, "no-such-net", name)
    ws = empty_workspace
    grid = ["--models", name, "--bugs", "0", "1", "3"]
    trained = run_in_process(capsys, "train", *ws.argv("train", "--epochs", "1", grid=grid))
    assert trained.returncode == 0, trained.stderr
    for bug, fault in ((0, "healthy"), (1, "suboptimal structure"), (3, "missing activation")):
        metadata = json.loads(ws.metadata(name, bug).read_text())
        assert (metadata["model"], metadata["fault"], metadata["image_size"]) == (name, fault, 32)
    fitted = run_in_process(capsys, "fit", *ws.argv("fit", "--max-inputs", "10", grid=grid))
    assert fitted.returncode == 0, fitted.stderr
    assert ws.kde("correct", model=name, bug=3).is_file()


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
    assert unused_name(DatasetManager.DATASETS, "STRIPES") == "STRIPES", "a dataset of this name is registered"
    register_dataset(Stripes)
    assert DatasetManager.get_dataset("stripes").name == "STRIPES"
    assert "STRIPES" not in DatasetManager.paper_datasets()  # not the paper's: --preset paper leaves it out
    refused = run_in_process(capsys, "train", *empty_workspace.argv("train", grid=["--datasets", "NO-SUCH-DATA"]))
    assert_usage_error(refused, "NO-SUCH-DATA", "STRIPES")
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
    bug = unused_fault_id()
    register_fault(Fault(bug, "inverted training images", "data", invert_training_images))
    assert FaultInjector.describe_ids() == f"0 (healthy) and 1-{bug}"
    assert bug in grids.resolved(grids.PRESETS["digits"])[2]
    refused = run_in_process(capsys, "train", *empty_workspace.argv("train", grid=["--bugs", str(bug + 1)]))
    assert_usage_error(refused, f"1-{bug}")
    faulty = DatasetManager.create_dataset("DIGITS", bug_id=bug)
    assert torch.equal(faulty.x_train, 1.0 - digits.x_train) and torch.equal(faulty.x_test, digits.x_test)
    assert FaultInjector.data_fault(bug) == bug and FaultInjector.structure_fault(bug) == 0
    ws = empty_workspace
    result = run_in_process(capsys, "train", *ws.argv("train", grid=["--models", "squeezenet", "--bugs", str(bug),
                                                                      "--epochs", "1"]))
    assert result.returncode == 0, result.stderr
    metadata = json.loads(ws.metadata("squeezenet", bug).read_text())
    assert (metadata["bug"], metadata["fault"]) == (bug, "inverted training images")


@pytest.mark.parametrize("kind, inject, target", [
    ("model", FaultInjector.inject_model_fault, lambda: nn.Linear(2, 2)),
    ("hyper-parameter", FaultInjector.inject_hyperparameters_fault,
     lambda: ModelTrainer(nn.Linear(2, 2), device="cpu", progress=False)),
    ("data", FaultInjector.inject_dataset_fault, lambda: None),
])
def test_a_fault_row_without_a_function_is_an_error(kind, inject, target):
    bug = unused_fault_id()
    register_fault(Fault(bug, "declared but not written", kind, None))
    with pytest.raises(NotImplementedError, match=f"fault {bug} .* is a {kind} fault but its FAULT_TABLE row names "
                                                  "no function"):
        inject(target(), bug)


def test_registries_refuse_a_second_entry_under_one_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_fault(Fault(5, "another fifth fault", "hyper-parameter", invert_training_images))
    with pytest.raises(ValueError, match="registered twice"):
        register_model(type("OtherResNet", (MyModel,), {"name": "resnet"}))
    with pytest.raises(ValueError, match="upper-case"):
        register_dataset(type("Lower", (MyDataset,), {"name": "lower"}))


# ---------------------------------------------------------------------------------------------
# the architectures' contract with the model faults, for every registered architecture
# ---------------------------------------------------------------------------------------------

MODEL_FAULTS = [bug for bug in FaultInjector.fault_ids() if FaultInjector.is_kind(bug, "model")]


def on_meta(model_name: str, bug: int = 0) -> nn.Module:
    with torch.device("meta"):
        return ModelManager.build_version(model_name, 7, bug).model_structure


def convolutions(network: nn.Module) -> dict[str, tuple]:
    return {name: tuple(m.weight.shape) for name, m in network.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("bug", MODEL_FAULTS)
@pytest.mark.parametrize("model_name", list(ModelManager.MODELS))
def test_every_architecture_carries_each_model_fault_or_says_why_not(model_name, bug):
    """Each registered architecture and model fault: the fault changes what it claims to, or the pair is declared
    unsupported with a reason in words (and building it is refused with that reason)."""
    architecture = ModelManager.get_model_class(model_name)
    reason = FaultInjector.unsupported_reason(bug, architecture)
    if reason:
        assert isinstance(reason, str) and len(reason) > 10
        with pytest.raises(UsageError, match=f"{model_name} cannot carry fault {bug}"):
            ModelManager.build_version(model_name, 7, bug)
        return
    healthy, faulty = on_meta(model_name), on_meta(model_name, bug)
    size = max(architecture.min_input_size, 32)
    if bug == 1:  # another, smaller or rewired structure
        assert {k: tuple(v.shape) for k, v in faulty.state_dict().items()} != \
            {k: tuple(v.shape) for k, v in healthy.state_dict().items()}
    elif bug == 2:  # some convolution widened to 5x5, every other shape kept, the output's too
        before, after = convolutions(healthy), convolutions(faulty)
        assert before.keys() == after.keys() and any(after[k][-2:] == (5, 5) != before[k][-2:] for k in before)
    elif bug == 3:  # no activation left, as a module or as a function, where the healthy network had some
        assert model_faults.functional_activations(healthy, size)
        assert not any(isinstance(m, model_faults.ACTIVATIONS) for m in faulty.modules())
        assert model_faults.functional_activations(faulty, size) == []
    with torch.no_grad():
        x = torch.empty(2, 3, size, size, device="meta")
        assert faulty.eval()(x).shape == healthy.eval()(x).shape == (2, 7)


def test_fault3_removes_every_kind_of_activation_torchvision_uses():
    """MobileNetV3 (Hardswish, Hardsigmoid, ReLU) and EfficientNet (SiLU, Sigmoid) lose them all; a network that
    calls an activation as a function cannot carry fault 3, and says which."""
    for builder, kinds in ((torchvision.models.mobilenet_v3_small, (nn.Hardswish, nn.Hardsigmoid, nn.ReLU)),
                           (torchvision.models.efficientnet_b0, (nn.SiLU, nn.Sigmoid))):
        architecture = mymodel.torchvision_architecture("probe", builder)
        assert FaultInjector.unsupported_reason(3, architecture) is None
        with torch.device("meta"):
            network = builder(weights=None, num_classes=5)
        assert all(any(isinstance(m, kind) for m in network.modules()) for kind in kinds)
        model_faults.remove_activations(network)
        assert not any(isinstance(m, model_faults.ACTIVATIONS) for m in network.modules())
        assert model_faults.functional_activations(network, 32) == []

    class Functional(nn.Module):
        def __init__(self, num_classes: int):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.nn.functional.gelu(self.conv(x)).mean(dim=(2, 3)))

    architecture = mymodel.torchvision_architecture("probe", lambda weights, num_classes: Functional(num_classes))
    assert "calls gelu as a function" in FaultInjector.unsupported_reason(3, architecture)


def test_the_readme_one_liner_drops_fault1_from_a_default_grid_and_refuses_it_by_name(capsys, empty_workspace,
                                                                                      restore_registries):
    name = unused_name(ModelManager.MODELS, "mobilenet")
    register_model(mymodel.torchvision_architecture(name, torchvision.models.mobilenet_v3_small))
    ws = empty_workspace
    refused = run_in_process(capsys, "train", *ws.argv("train", "--epochs", "1", grid=["--models", name,
                                                                                        "--bugs", "1"]))
    assert_usage_error(refused, f"--models {name} --bugs 1", "cannot carry fault 1", "no reduced variant")
    assert not ws.root.exists()  # refused before anything was written
    # a preset's faults: the unsupported pair dropped, in one note, and the rest of the grid kept
    args = flags.new_parser("x")
    flags.add_grid_flags(args)
    capsys.readouterr()
    grid = grids.resolve_grid(args.parse_args(["--models", name]))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"{name} x fault 1, as it declares no reduced variant" in notes[0]
    assert (name, 1) not in grid.versions("DIGITS") and (name, 3) in grid.versions("DIGITS")
    assert [bug for _, bug in grid.versions("DIGITS")] == [b for b in grids.resolved(grids.PRESETS["digits"])[2]
                                                          if b not in (1, 11, 12)]


@pytest.mark.slow
def test_an_architecture_added_at_the_end_of_model_manager_trains(tmp_path):
    """The paper's habit: a registration appended to ModelManager.py (in a copy of the repository) is an
    architecture like the others for the scripts (``tests/test_launchers.py``: on Ray too)."""
    copy = repository_copy(tmp_path / "repo", APPENDED_ARCHITECTURE)
    result = subprocess.run([sys.executable, "main_train_model.py", "--models", "edited", "--bugs", "0",
                             "--epochs", "1", "--device", "cpu", "--model-root", str(tmp_path / "model"), "--quiet"],
                            cwd=copy, env={**SCRIPT_ENV, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((tmp_path / "model" / "edited_DIGITS.json").read_text())
    assert metadata["model"] == "edited" and 0.0 <= metadata["val_acc"] <= 1.0
    assert (tmp_path / "model" / "edited_DIGITS.pth").is_file()


# ---------------------------------------------------------------------------------------------
# a distance mode and a launcher, each one class or function and its registration
# ---------------------------------------------------------------------------------------------

class LogitMargin(Attacker):
    """A distance mode of the test's own: the gap between the two largest clean logits (no attack: one forward
    pass), and the top softmax probability as an output of the mode."""

    def _measure(self, x0, clean):
        logits, classes = clean
        top = logits.gather(1, classes[:, :2])
        return logits, classes, top[:, 0] - top[:, 1], x0

    def attack(self, images):
        result = super().attack(images)
        result.outputs["top_probability"] = result.probabilities.max(axis=1)
        return result


def test_a_distance_mode_is_one_class_and_its_registration(capsys, pipeline_copy):
    name = unused_name(DISTANCE_MODES, "logit-margin")
    register_distance_mode(DistanceMode(name, LogitMargin, help="the top two logits' gap",
                                        outputs=("top_probability",)))
    assert name in " ".join(help_text(capsys, "fit").split())  # --distance's help reads the registry
    ws, versions = pipeline_copy, ["--models", "squeezenet", "densenet", "--bugs", "0", "--distance", name]
    for script in ("fit", "cache", "evaluate"):
        result = run_in_process(capsys, script, *ws.argv(script, *versions, grid=[]))
        assert result.returncode == 0, result.stderr
    logits = np.load(layout.cache_path(ws.info, "squeezenet", "DIGITS", 0, "logits", name))
    top = np.sort(logits, axis=1)[:, -2:]
    np.testing.assert_allclose(np.load(layout.cache_path(ws.info, "squeezenet", "DIGITS", 0, "distances", name)),
                               top[:, 1] - top[:, 0], rtol=1e-6)
    assert layout.cache_path(ws.info, "densenet", "DIGITS", 0, "top_probability", name).is_file()
    assert json.loads(ws.metadata().read_text())["costs"]["distance_flops"][name] > 0  # costed as any mode
    results = pd.read_csv(ws.out / "results.csv")
    assert set(results["models"]) == {"densenet-squeezenet"} and (results["method"] == "dfg").any()
    assert_usage_error(run_in_process(capsys, "fit", *ws.argv("fit", "--distance", "margin-of-logits")),
                       "unknown distance mode", name)


@dataclass(frozen=True)
class ThreadOptions:
    pool_threads: int = option(2, "--pool-threads", "threads the jobs run on", type=flags.positive_int)


def run_on_threads(jobs, settings):
    """A launcher of the test's own: the jobs on a pool of threads of this process, each once the jobs it needs
    are done."""
    outcomes = [None] * len(jobs)
    with ThreadPoolExecutor(settings.options.pool_threads) as pool:
        waiting = list(range(len(jobs)))
        while waiting:
            ready = [i for i in waiting if all(outcomes[j] is not None for j in upstream(jobs, i))]
            for index, outcome in zip(ready, pool.map(run_job, [jobs[i] for i in ready])):
                outcomes[index] = outcome
            waiting = [i for i in waiting if i not in ready]
    return outcomes


def test_a_launcher_is_one_function_and_its_registration(capsys, pipeline, tmp_path):
    name = unused_name(launchers.LAUNCHERS, "threads")
    launchers.register_launcher(launchers.Launcher(name, run_on_threads, "a pool of threads", ThreadOptions))
    help = " ".join(help_text(capsys, "cache").split())
    assert f"--launcher {name}" in help and "--pool-threads" in help
    runs = {}
    for launcher in ("local", name):
        ws = pipeline.clone(tmp_path / launcher)
        extra = ["--distance", "first-order:2", "--launcher", launcher, *(["--pool-threads", "3"] if launcher == name
                                                                          else [])]
        result = run_in_process(capsys, "cache", *ws.argv("cache", *extra))
        assert result.returncode == 0, result.stderr
        runs[launcher] = {path.name: path.read_bytes() for path in ws.cached.glob("*first-order2*")}
    assert runs["local"] and runs["local"] == runs[name]  # the same files as local, byte for byte
    assert_usage_error(run_in_process(capsys, "cache", *pipeline.argv("cache", "--pool-threads", "3")),
                       "--pool-threads is a --launcher " + name, "--launcher local")
