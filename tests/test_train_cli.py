"""Step 1 end to end: main_train_model.py's exit-status contract, one real tiny training run,
skipping and --force; the ModelTrainer it drives."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_usage_error, run_in_process, unused_fault_id

import DatasetManager
import ModelManager
from ModelTrainer import ModelTrainer
from utils import seed_everything

# tiny networks gain nothing from threads; on a busy machine threads slow them down
pytestmark = pytest.mark.usefixtures("single_thread")

TINY_RUN = ["--models", "squeezenet", "--bugs", "0", "--epochs", "1"]


def train(capsys, *args):
    return run_in_process(capsys, "train", *args)


# ---------------------------------------------------------------------------------------------
# bad input: exit status 2, one line, no traceback
# ---------------------------------------------------------------------------------------------

def test_missing_released_dataset_names_the_files(empty_workspace, capsys):
    ws = empty_workspace
    result = run_in_process(capsys, "train", "--datasets", "GTSRB", *ws.flags("train"), "--data-root", "/nonexistent")
    assert_usage_error(result, "/nonexistent/GTSRB/x_train.pth", "y_train.pth", "x_test.pth", "y_test.pth")
    assert not ws.model.exists() or not any(ws.model.iterdir())


@pytest.mark.parametrize("args, fragments", [
    (["--datasets", "MNIST"], ["unknown dataset 'MNIST'", "DIGITS"]),
    (["--models", "lenet"], ["unknown model 'lenet'", "squeezenet"]),
    (["--bugs", str(unused_fault_id())], [f"unknown fault {unused_fault_id()}"]),
    (["--bugs", "x"], ["'x' is not a fault id"]),
    (["--bugs", "11"], ["fault 11", "DIGITS", "CIFAR10"]),
    (["--models", "squeezenet", "--bugs", "12"], ["fault 12", "DIGITS"]),
])
def test_bad_arguments_are_usage_errors(capsys, empty_workspace, args, fragments):
    ws = empty_workspace
    result = train(capsys, *args, *ws.flags("train"))
    assert_usage_error(result, *fragments)
    assert result.stdout == ""
    assert not ws.model.exists()


@pytest.mark.parametrize("flag, value, wording", [
    ("--epochs", "0", "positive whole number"), ("--batch-size", "-1", "positive whole number"),
    ("--epochs", "two", "positive whole number"), ("--image-size", "0", "positive whole number"),
    ("--lr", "-1", "a number > 0"), ("--lr", "nan", "a number > 0")])
def test_bad_numbers_are_rejected_by_the_parser(capsys, empty_workspace, flag, value, wording):
    result = train(capsys, flag, value, *empty_workspace.flags("train"))
    assert_usage_error(result, f"argument {flag}", wording)


def test_help_exits_0(capsys):
    result = train(capsys, "--help")
    assert result.returncode == 0
    for flag in ("--datasets", "--models", "--bugs", "--epochs", "--force", "--data-root", "--model-root", "--mode"):
        assert flag in result.stdout
    assert result.stderr == ""


# ---------------------------------------------------------------------------------------------
# a real tiny training run
# ---------------------------------------------------------------------------------------------

def test_a_tiny_training_run_wrote_a_loadable_version_and_a_rerun_skips_it(capsys, pipeline, digits):
    """The session pipeline's healthy SqueezeNet is such a run (``main_train_model.py`` with TINY_RUN's flags,
    defaults else): its files, its metadata measured on the splits, weights that give it; the same command again
    skips the version and changes no file."""
    model_root = pipeline.model
    checkpoint = model_root / "squeezenet_DIGITS.pth"
    metadata_file = model_root / "squeezenet_DIGITS.json"
    assert checkpoint.is_file() and metadata_file.is_file()
    assert (model_root / "squeezenet_DIGITS_loss.png").is_file()
    assert not [p.name for p in model_root.iterdir() if ".partial" in p.name]  # no temporary files left

    metadata = json.loads(metadata_file.read_text())
    assert metadata["model"] == "squeezenet" and metadata["dataset"] == "DIGITS" and metadata["bug"] == 0
    assert metadata["epochs"] == 1 and metadata["image_size"] == 32 and metadata["batch_size"] == 32
    assert metadata["threads"] == 1  # --threads' default, whatever the machine's core count
    assert metadata["num_val"] == 288 and metadata["num_test"] == 360
    for key in ("val_acc", "test_acc"):
        assert isinstance(metadata[key], float) and 0.0 <= metadata[key] <= 1.0
    # measured, not copied: accuracies are whole counts over the split sizes
    assert metadata["val_acc"] * 288 == pytest.approx(round(metadata["val_acc"] * 288), abs=1e-3)
    assert metadata["test_acc"] * 360 == pytest.approx(round(metadata["test_acc"] * 360), abs=1e-3)

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network = ModelManager.build_version("squeezenet", 10).model_structure
    network.load_state_dict(state, strict=True)
    val_acc, _ = ModelTrainer(network, device="cpu", progress=False).evaluate_model(
        digits.at(image_size=32, batch_size=32).val_loader)
    assert val_acc == pytest.approx(metadata["val_acc"], abs=1.5 / 288)  # the weights it was measured with

    mtime = checkpoint.stat().st_mtime_ns
    rerun = train(capsys, *TINY_RUN, *pipeline.flags("train"), "--quiet")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "skipped" in rerun.stdout and f"{metadata['test_acc']:.4f}" in rerun.stdout
    assert checkpoint.stat().st_mtime_ns == mtime
    assert json.loads(metadata_file.read_text()) == metadata


@pytest.mark.slow
def test_the_thread_count_is_a_setting_recorded_with_the_version(capsys, empty_workspace, monkeypatch, make_subset):
    """``--threads`` is what training computes with (whatever the process had before), and it is recorded."""
    create_dataset = DatasetManager.create_dataset
    monkeypatch.setattr(DatasetManager, "create_dataset", lambda *a, **k: make_subset(create_dataset(*a, **k)))
    torch.set_num_threads(1)
    result = train(capsys, *TINY_RUN, "--threads", "2", *empty_workspace.flags("train"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(empty_workspace.metadata().read_text())["threads"] == 2


@pytest.mark.slow
def test_force_retrains(capsys, empty_workspace, monkeypatch, make_subset):
    """In process on a few DIGITS images: a rerun keeps a (planted) checkpoint, --force replaces it."""
    create_dataset = DatasetManager.create_dataset
    monkeypatch.setattr(DatasetManager, "create_dataset", lambda *a, **k: make_subset(create_dataset(*a, **k)))
    flags = [*empty_workspace.flags("train"), "--quiet"]
    checkpoint = empty_workspace.checkpoint()
    metadata_file = empty_workspace.metadata()

    first = train(capsys, *TINY_RUN, "--device", "cpu", *flags)
    assert first.returncode == 0, first.stderr
    trained = torch.load(checkpoint, weights_only=True)
    metadata = json.loads(metadata_file.read_text())
    assert metadata["num_val"] == 32 and metadata["epochs"] == 1

    # plant a different checkpoint and metadata: a plain rerun must keep them
    torch.save({k: torch.zeros_like(v) for k, v in trained.items()}, checkpoint)
    metadata_file.write_text(json.dumps(dict(metadata, val_acc=0.123456)))
    rerun = train(capsys, *TINY_RUN, "--device", "cpu", *flags)
    assert rerun.returncode == 0 and "skipped" in rerun.stdout and "0.1235" in rerun.stdout
    assert all(v.count_nonzero() == 0 for v in torch.load(checkpoint, weights_only=True).values())

    forced = train(capsys, *TINY_RUN, "--device", "cpu", "--force", *flags)
    assert forced.returncode == 0, forced.stderr
    assert "trained" in forced.stdout and "skipped" not in forced.stdout
    retrained = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(retrained[k], trained[k]) for k in trained)  # same seed: same weights
    assert json.loads(metadata_file.read_text())["val_acc"] == metadata["val_acc"]


# ---------------------------------------------------------------------------------------------
# ModelTrainer
# ---------------------------------------------------------------------------------------------

def train_once(data, seed: int = 0):
    seed_everything(seed)
    network = ModelManager.build_version("squeezenet", data.num_classes).model_structure
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    trainer = ModelTrainer(network, device="cpu", epochs=1, lr=1e-3, progress=False)
    history = trainer.train_model(data.train_loader, data.val_loader)
    return trainer, initial, history


def test_seeded_training_is_reproducible(tiny_digits):
    data = tiny_digits.at(image_size=32, batch_size=32)
    first, initial, history = train_once(data)
    second, _, _ = train_once(data)
    state_a, state_b = first.model.state_dict(), second.model.state_dict()
    assert list(state_a) == list(state_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], initial[k]) for k in state_a)  # training really changed weights
    assert history["epoch"] == [1] and history["val_epoch"] == [1]
    assert torch.isfinite(torch.tensor(history["train_loss"])).all()
    assert 0.0 <= history["val_acc"][0] <= 1.0


class ConstantLogits(nn.Module):
    """Ignores its input: the same logits for every image (and one parameter, for the optimizer)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_evaluate_model_returns_accuracy_and_mean_loss():
    model = ConstantLogits([2.0, 0.0, -1.0])  # always predicts class 0
    x = torch.rand(5, 3, 4, 4)
    y = torch.tensor([0, 0, 1, 2, 0])
    trainer = ModelTrainer(model, device="cpu", progress=False)
    accuracy, loss = trainer.evaluate_model(DatasetManager.TensorLoader(x, y, batch_size=2, image_size=None))
    assert isinstance(accuracy, float) and isinstance(loss, float)
    assert accuracy == pytest.approx(3 / 5)
    expected = F.cross_entropy(torch.tensor([[2.0, 0.0, -1.0]]).expand(5, -1), y).item()
    assert loss == pytest.approx(expected, rel=1e-6)  # the mean over images, not over uneven batches
    assert not model.training


def test_mixed_precision_trains_but_evaluates_in_full_precision():
    """``amp`` changes training (bfloat16 autocast), never the recorded accuracy: evaluation is float32."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    x, y = torch.rand(64, 3, 4, 4), torch.randint(0, 3, (64,))
    loader = DatasetManager.TensorLoader(x, y, batch_size=16, image_size=None)
    with_amp = ModelTrainer(network, device="cpu", amp=True, progress=False)
    accuracy, loss = with_amp.evaluate_model(loader)
    with torch.no_grad():
        logits = network(x)
    assert accuracy == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)  # bf16 would be off by ~1e-3
    with with_amp._autocast():
        assert network(x).dtype == torch.bfloat16  # and training really runs in bfloat16


def test_float32_modules_run_in_float32_under_amp_and_leave_the_network_as_it_was():
    """An architecture's ``float32_under_amp``: the named submodule computes in float32 inside the bf16
    autocast region while training, the rest in bf16; no wrapper, so the state_dict keys stay."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3))
    keys = list(network.state_dict())
    x, y = torch.rand(32, 3, 4, 4), torch.randint(0, 3, (32,))
    loader = DatasetManager.TensorLoader(x, y, batch_size=16, image_size=None)
    seen: dict[str, set] = {"1": set(), "3": set()}
    for name in seen:
        network.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: seen[name].add((args[0].dtype, output.dtype)))
    trainer = ModelTrainer(network, device="cpu", amp=True, epochs=1, float32_modules=("3",), progress=False)
    trainer.train_model(loader)
    assert seen["1"] == {(torch.float32, torch.bfloat16)}  # autocast on: bf16 output
    assert seen["3"] == {(torch.float32, torch.float32)}  # in its float32 region: input cast up, float32 out
    assert list(network.state_dict()) == keys
    assert not network[3]._forward_pre_hooks  # the region's hooks are gone after training
    with trainer._autocast():
        assert network(x).dtype == torch.bfloat16  # outside training, the module is autocast as before
    with pytest.raises(AttributeError):
        ModelTrainer(network, device="cpu", amp=True, float32_modules=("classifier",), progress=False)
