"""Each of the paper's twelve faults really changes what it claims to (README, "The twelve faults")."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import unused_fault_id

import DatasetManager
import FaultInjector
import ModelManager
import mydataset
from ModelTrainer import ModelTrainer
from mymodel.densenet import DenseNet121, DenseNetWithStem
from storage import layout
from utils import UsageError

# tiny networks gain nothing from threads; on a busy machine threads slow them down
pytestmark = pytest.mark.usefixtures("single_thread")


def count_modules(network: nn.Module, kind=nn.Module) -> int:
    return sum(isinstance(m, kind) for m in network.modules())


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def build_on_meta(model_name: str, num_classes: int = 7, fault: int = 0) -> nn.Module:
    """Shapes and structure without allocating or initialising the weights (fast for VGG/AlexNet)."""
    with torch.device("meta"):
        return ModelManager.build_version(model_name, num_classes, fault).model_structure


def tiny_trainer(epochs: int = 30, lr: float = 1e-4, weight_decay: float = 1e-4) -> ModelTrainer:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    return ModelTrainer(network, device="cpu", epochs=epochs, lr=lr, weight_decay=weight_decay, progress=False)


def tiny_batch(n: int = 16, num_classes: int = 5):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=generator), torch.randint(0, num_classes, (n,), generator=generator)


# ---------------------------------------------------------------------------------------------
# fault 1: suboptimal structure
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["resnet", "alexnet", "vgg16", "squeezenet"])
def test_fault1_has_fewer_parameters_and_modules(model_name):
    healthy = build_on_meta(model_name)
    reduced = build_on_meta(model_name, fault=1)
    assert count_parameters(reduced) < count_parameters(healthy)
    assert count_modules(reduced) < count_modules(healthy)
    assert count_modules(reduced, nn.Conv2d) + count_modules(reduced, nn.Linear) < \
        count_modules(healthy, nn.Conv2d) + count_modules(healthy, nn.Linear)


def test_fault1_densenet_is_the_stem_wrapper():
    healthy = build_on_meta("densenet")
    reduced = build_on_meta("densenet", fault=1)
    assert isinstance(healthy, DenseNet121) and not isinstance(healthy, DenseNetWithStem)
    assert isinstance(reduced, DenseNetWithStem)
    assert isinstance(reduced.densenet, DenseNet121)
    stem = [reduced.conv1, reduced.conv2, reduced.conv3]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (3, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1)), (128, 3, (3, 3), (1, 1))]
    assert set(healthy.state_dict()) != set(reduced.state_dict())


def test_fault1_reduced_network_runs(tiny_digits):
    torch.manual_seed(0)
    model = ModelManager.build_version("squeezenet", tiny_digits.num_classes, 1)
    model.model_structure.eval()
    with torch.no_grad():
        out = model.model_structure(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, tiny_digits.num_classes)


def test_fault1_on_a_bare_module_is_refused():
    with pytest.raises(UsageError, match="reduced variant"):
        FaultInjector.inject_model_fault(nn.Sequential(nn.Conv2d(3, 3, 3)), 1)


# ---------------------------------------------------------------------------------------------
# fault 2: wrong filter size
# ---------------------------------------------------------------------------------------------

def conv_layers(network: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in network.named_modules() if isinstance(m, nn.Conv2d)}


def test_fault2_widens_stride1_filters_and_keeps_output_shape():
    torch.manual_seed(0)
    healthy = ModelManager.build_version("squeezenet", 10).model_structure.eval()
    faulty = ModelManager.build_version("squeezenet", 10, 2).model_structure.eval()
    before, after = conv_layers(healthy), conv_layers(faulty)
    assert before.keys() == after.keys()
    widened = 0
    for name, conv in before.items():
        new = after[name]
        if conv.stride == (1, 1) and conv.kernel_size != (1, 1):
            assert tuple(new.weight.shape) == (*conv.weight.shape[:2], 5, 5), name
            assert new.padding == (2, 2), name
            widened += 1
        else:
            assert new.weight.shape == conv.weight.shape, name
    assert widened == 8  # the 3×3 expand convolution of each of SqueezeNet's eight Fire modules
    assert before["features.0"].kernel_size == after["features.0"].kernel_size == (7, 7)  # stride 2: untouched
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert faulty(x).shape == healthy(x).shape == (2, 10)


def test_fault2_leaves_strided_convolutions_of_resnet():
    healthy, faulty = conv_layers(build_on_meta("resnet")), conv_layers(build_on_meta("resnet", fault=2))
    assert tuple(faulty["layer1.0.conv2"].weight.shape[-2:]) == (5, 5)  # 3×3 stride 1
    assert tuple(faulty["layer2.1.conv2"].weight.shape[-2:]) == (5, 5)
    assert tuple(faulty["layer2.0.conv2"].weight.shape[-2:]) == (3, 3)  # 3×3 stride 2
    assert tuple(faulty["conv1"].weight.shape[-2:]) == (7, 7)  # 7×7 stride 2
    assert faulty["layer1.0.conv1"].weight.shape == healthy["layer1.0.conv1"].weight.shape  # 1×1


def test_fault2_on_a_bare_module():
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    FaultInjector.inject_model_fault(network, 2)
    assert tuple(network[0].weight.shape) == (4, 3, 5, 5)
    assert tuple(network[2].weight.shape) == (2, 4, 1, 1)
    assert network(torch.rand(1, 3, 9, 9)).shape == (1, 2, 9, 9)


# ---------------------------------------------------------------------------------------------
# fault 3: missing activation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["squeezenet", "densenet"])
def test_fault3_removes_every_relu_and_changes_the_output(model_name):
    torch.manual_seed(0)
    model = ModelManager.build_version(model_name, 10)
    healthy = model.model_structure.eval()
    faulty = copy.deepcopy(healthy)
    FaultInjector.inject_model_fault(replace_structure(model, faulty), 3)
    assert count_modules(healthy, nn.ReLU) > 0
    assert count_modules(faulty, nn.ReLU) == 0
    # same weights, only the activations gone
    assert all(torch.equal(a, b) for a, b in zip(healthy.state_dict().values(), faulty.state_dict().values()))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not torch.allclose(healthy(x), faulty(x))


def replace_structure(model, network: nn.Module):
    model.model_structure = network
    return model


def test_fault3_via_build_version():
    faulty = build_on_meta("vgg16", fault=3)
    assert count_modules(faulty, nn.ReLU) == 0
    assert count_modules(faulty, nn.Identity) == count_modules(build_on_meta("vgg16"), nn.ReLU)


# ---------------------------------------------------------------------------------------------
# hyper-parameter faults 4-6
# ---------------------------------------------------------------------------------------------

def first_step_change(trainer: ModelTrainer) -> torch.Tensor:
    """Absolute parameter change of one optimizer step on a fixed batch."""
    x, y = tiny_batch()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.criteria(trainer.model(x), y)
    trainer.optimizer.zero_grad()
    loss.backward()
    trainer.optimizer.step()
    return torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(trainer.model.parameters(), before)])


def test_fault4_multiplies_the_learning_rate_by_20():
    healthy = tiny_trainer(lr=1e-4, weight_decay=0.0)
    faulty = FaultInjector.inject_hyperparameters_fault(tiny_trainer(lr=1e-4, weight_decay=0.0), 4)
    groups = faulty.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([2e-3] * len(groups))
    assert faulty.lr == pytest.approx(2e-3)
    # Adam's first step moves every parameter by about lr: the steps really are 20× larger
    ratio = first_step_change(faulty).mean() / first_step_change(healthy).mean()
    assert ratio.item() == pytest.approx(20.0, rel=1e-3)
    faulty.scheduler.step()  # the learning-rate schedule starts from the faulty rate, not the healthy one
    assert faulty.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    assert faulty.scheduler.base_lrs == pytest.approx([2e-3] * len(faulty.optimizer.param_groups))


@pytest.mark.parametrize("epochs, expected", [(30, 10), (9, 3), (8, 3)])
def test_fault5_trains_a_third_of_the_epochs(epochs, expected):
    trainer = FaultInjector.inject_hyperparameters_fault(tiny_trainer(epochs=epochs), 5)
    assert trainer.epochs == expected < epochs


def test_fault5_training_runs_fewer_epochs():
    x, y = tiny_batch()
    loader = DatasetManager.TensorLoader(x, y, batch_size=8, image_size=None)
    trainer = FaultInjector.inject_hyperparameters_fault(tiny_trainer(epochs=6), 5)
    history = trainer.train_model(loader)
    assert history["epoch"] == [1, 2]


def loss_gradient(criterion, network, x, y) -> torch.Tensor:
    network.zero_grad()
    criterion(network(x), y).backward()
    return torch.cat([p.grad.flatten() for p in network.parameters()])


def test_fault6_loss_gradients_differ_from_cross_entropy():
    trainer = tiny_trainer()
    assert isinstance(trainer.criteria, nn.CrossEntropyLoss)
    x, y = tiny_batch()
    healthy_grad = loss_gradient(trainer.criteria, trainer.model, x, y)
    FaultInjector.inject_hyperparameters_fault(trainer, 6)
    assert not isinstance(trainer.criteria, nn.CrossEntropyLoss)
    faulty_grad = loss_gradient(trainer.criteria, trainer.model, x, y)
    assert torch.isfinite(faulty_grad).all()
    # not just a rescaled (or shifted) cross-entropy: the gradient points elsewhere
    cosine = torch.nn.functional.cosine_similarity(healthy_grad, faulty_grad, dim=0)
    assert cosine.item() < 0.99
    assert not torch.allclose(healthy_grad, faulty_grad)


def test_fault6_loss_is_squared_error_on_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    p = logits.softmax(dim=1)
    expected = (((p[0] - torch.tensor([1.0, 0, 0])) ** 2).sum() + ((p[1] - torch.tensor([0, 0, 1.0])) ** 2).sum()) / 2
    assert FaultInjector.SoftmaxSquaredError()(logits, target).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("bug_id", [0, 1, 2, 3, 7, 8, 9, 10, 11, 12])
def test_other_faults_leave_the_trainer_alone(bug_id):
    trainer = FaultInjector.inject_hyperparameters_fault(tiny_trainer(epochs=30), bug_id)
    assert trainer.epochs == 30 and isinstance(trainer.criteria, nn.CrossEntropyLoss)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("bug_id", [1, 2, 3, 4, 5, 6])
def test_model_and_hyperparameter_faults_leave_the_data_alone(bug_id, digits):
    data = DatasetManager.create_dataset("DIGITS", bug_id=bug_id)
    assert data.bug_id == bug_id
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(data, f"x_{split}"), getattr(digits, f"x_{split}"))
        assert torch.equal(getattr(data, f"y_{split}"), getattr(digits, f"y_{split}"))


# ---------------------------------------------------------------------------------------------
# data faults 7-12
# ---------------------------------------------------------------------------------------------

def test_fault7_halves_the_pixel_range_in_every_split(digits):
    faulty = DatasetManager.create_dataset("DIGITS", bug_id=7)
    for split in ("train", "val", "test"):
        x_healthy, x_faulty = getattr(digits, f"x_{split}"), getattr(faulty, f"x_{split}")
        assert x_healthy.max().item() == 1.0
        assert x_faulty.max().item() == pytest.approx(x_healthy.max().item() / 2)
        assert torch.allclose(x_faulty, x_healthy * 0.5)
        assert torch.equal(getattr(faulty, f"y_{split}"), getattr(digits, f"y_{split}"))


def test_fault8_permutes_a_tenth_of_the_training_labels(digits):
    faulty = DatasetManager.create_dataset("DIGITS", bug_id=8)
    n = len(digits.y_train)
    changed = (faulty.y_train != digits.y_train).sum().item()
    assert changed == round(0.1 * n)
    assert faulty.y_train.min() >= 0 and faulty.y_train.max() < digits.num_classes
    assert torch.equal(faulty.x_train, digits.x_train)
    for split in ("val", "test"):
        assert torch.equal(getattr(faulty, f"x_{split}"), getattr(digits, f"x_{split}"))
        assert torch.equal(getattr(faulty, f"y_{split}"), getattr(digits, f"y_{split}"))


def test_fault9_halves_the_training_set(digits):
    faulty = DatasetManager.create_dataset("DIGITS", bug_id=9)
    n = len(digits.y_train)
    assert abs(len(faulty.y_train) - n / 2) <= 0.5
    assert len(faulty.x_train) == len(faulty.y_train)
    # a subset of the healthy training images, with their labels, every class kept
    distances = torch.cdist(faulty.x_train.flatten(1), digits.x_train.flatten(1))
    nearest = distances.argmin(dim=1)
    assert torch.all(distances.min(dim=1).values == 0)
    assert torch.equal(digits.y_train[nearest], faulty.y_train)
    assert set(faulty.y_train.tolist()) == set(range(digits.num_classes))
    for split in ("val", "test"):
        assert torch.equal(getattr(faulty, f"x_{split}"), getattr(digits, f"x_{split}"))
        assert torch.equal(getattr(faulty, f"y_{split}"), getattr(digits, f"y_{split}"))


def test_fault10_adds_noise_to_the_test_inputs_only(digits):
    faulty = DatasetManager.create_dataset("DIGITS", bug_id=10)
    assert faulty.x_test.shape == digits.x_test.shape
    assert (faulty.x_test - digits.x_test).abs().mean().item() > 0.01
    assert faulty.x_test.min().item() >= 0.0 and faulty.x_test.max().item() <= 1.0
    assert torch.equal(faulty.y_test, digits.y_test)
    for split in ("train", "val"):
        assert torch.equal(getattr(faulty, f"x_{split}"), getattr(digits, f"x_{split}"))
        assert torch.equal(getattr(faulty, f"y_{split}"), getattr(digits, f"y_{split}"))


def total_variation(x: torch.Tensor) -> float:
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum()).item()


def test_fault10_blurs_xray_test_images(tmp_path, write_released):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)  # single channel, as COVIDX9A
    x_test = rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)
    write_released(tmp_path, "COVIDX9A", x_train, np.repeat(np.arange(2), 6), x_test, np.array([0, 1, 0, 1]))
    healthy = DatasetManager.create_dataset("COVIDX9A", data_root=tmp_path)
    faulty = DatasetManager.create_dataset("COVIDX9A", bug_id=10, data_root=tmp_path)
    assert not torch.equal(faulty.x_test, healthy.x_test)
    assert total_variation(faulty.x_test) < 0.5 * total_variation(healthy.x_test)  # smoother: blur, not noise
    assert faulty.x_test.min().item() >= 0.0 and faulty.x_test.max().item() <= 1.0
    assert torch.equal(faulty.x_train, healthy.x_train) and torch.equal(faulty.x_val, healthy.x_val)


@pytest.mark.parametrize("bug_id", [11, 12])
def test_distribution_shift_does_not_apply_to_digits(bug_id):
    with pytest.raises(UsageError, match=f"fault {bug_id}.*CIFAR10"):
        DatasetManager.create_dataset("DIGITS", bug_id=bug_id)
    with pytest.raises(UsageError):
        FaultInjector.validate_bug_id(bug_id, mydataset.Digits())


def fake_cifar10(data_root) -> DatasetManager.MyData:
    generator = torch.Generator().manual_seed(0)
    return DatasetManager.MyData(
        dataset_name="CIFAR10", bug_id=0, num_classes=10,
        x_train=torch.rand(20, 3, 32, 32, generator=generator), y_train=torch.arange(20) % 10,
        x_val=torch.rand(10, 3, 32, 32, generator=generator), y_val=torch.arange(10),
        x_test=torch.rand(5, 3, 32, 32, generator=generator), y_test=torch.arange(5),
        source=mydataset.Cifar10(), data_root=data_root)


@pytest.mark.parametrize("bug_id, version, other", [(11, "v4", "v6"), (12, "v6", "v4")])
def test_distribution_shift_replaces_the_cifar10_test_set(tmp_path, bug_id, version, other):
    folder = tmp_path / "CIFAR10_1"
    folder.mkdir()
    rng = np.random.default_rng(bug_id)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.int64)
    np.save(folder / f"cifar10.1_{version}_data.npy", images)
    np.save(folder / f"cifar10.1_{version}_labels.npy", labels)
    data = fake_cifar10(tmp_path)
    x_train, y_train, x_val = data.x_train.clone(), data.y_train.clone(), data.x_val.clone()

    FaultInjector.inject_dataset_fault(data, bug_id)

    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert data.x_test.shape == (7, 3, 32, 32)
    assert torch.allclose(data.x_test, expected)
    assert torch.equal(data.y_test, torch.from_numpy(labels))
    assert torch.equal(data.x_train, x_train) and torch.equal(data.y_train, y_train)
    assert torch.equal(data.x_val, x_val)
    # the other fault needs the other version's files, which are missing here
    with pytest.raises(UsageError, match=f"cifar10.1_{other}_data.npy"):
        FaultInjector.inject_dataset_fault(fake_cifar10(tmp_path), 23 - bug_id)


def test_test_only_faults_reuse_the_healthy_checkpoint(tmp_path):
    for bug_id in (10, 11, 12):
        assert FaultInjector.checkpoint_fault(bug_id) == 0
        assert layout.checkpoint_path(tmp_path, "resnet", "CIFAR10", bug_id) == \
            layout.checkpoint_path(tmp_path, "resnet", "CIFAR10", 0)
        assert layout.metadata_path(tmp_path, "resnet", "CIFAR10", bug_id).name == f"resnet_CIFAR10_bug{bug_id}.json"
    for bug_id in range(0, 10):
        assert FaultInjector.checkpoint_fault(bug_id) == bug_id
    assert layout.checkpoint_path(tmp_path, "resnet", "CIFAR10", 9).name == "resnet_CIFAR10_bug9.pth"
    assert {bug for bug, fault in FaultInjector.FAULTS.items() if fault.test_data_only} == {10, 11, 12}


@pytest.mark.parametrize("bad", [unused_fault_id(), -1, True, "3", 2.0])
def test_unknown_fault_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="unknown fault"):
        FaultInjector.validate_bug_id(bad)


def test_unknown_fault_in_create_dataset():
    with pytest.raises(UsageError, match="unknown fault"):
        DatasetManager.create_dataset("DIGITS", bug_id=unused_fault_id())


def test_data_faults_do_not_modify_shared_tensors(digits):
    """Faults replace a split's tensors; another MyData holding the same ones is not changed."""
    data = replace(digits)
    x_train, y_train, x_test = digits.x_train.clone(), digits.y_train.clone(), digits.x_test.clone()
    for bug_id in (7, 8, 9, 10):
        FaultInjector.inject_dataset_fault(replace(data), bug_id)
    assert torch.equal(digits.x_train, x_train) and torch.equal(digits.y_train, y_train)
    assert torch.equal(digits.x_test, x_test)
