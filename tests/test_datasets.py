"""Datasets: DIGITS splits and loaders, the paper's released .pth files (formats, safety, missing files)."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import DatasetManager
import mydataset
from utils import UsageError

# tiny networks gain nothing from threads; on a busy machine threads slow them down
pytestmark = pytest.mark.usefixtures("single_thread")

FILES = ("x_train.pth", "y_train.pth", "x_test.pth", "y_test.pth")


# ---------------------------------------------------------------------------------------------
# DIGITS
# ---------------------------------------------------------------------------------------------

def test_digits_split_sizes(digits):
    assert digits.dataset_name == "DIGITS" and digits.num_classes == 10 and digits.bug_id == 0
    assert len(digits.x_test) == len(digits.y_test) == 360
    rest = 1797 - 360
    assert len(digits.x_val) == len(digits.y_val) == math.ceil(0.2 * rest)
    assert len(digits.x_train) == len(digits.y_train) == rest - len(digits.y_val)


def test_digits_splits_are_stratified(digits):
    for split in ("train", "val", "test"):
        assert set(getattr(digits, f"y_{split}").tolist()) == set(range(10)), split
    train_counts = torch.bincount(digits.y_train, minlength=10)
    val_counts = torch.bincount(digits.y_val, minlength=10)
    # every class contributes its 20 % to validation (up to rounding)
    assert torch.all((val_counts - 0.2 * (train_counts + val_counts)).abs() <= 1)
    test_counts = torch.bincount(digits.y_test, minlength=10)
    all_counts = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    assert torch.all((test_counts - 0.2 * all_counts).abs() <= 1)


def test_digits_images_are_float_nchw_three_channels_in_unit_range(digits):
    for split in ("train", "val", "test"):
        x = getattr(digits, f"x_{split}")
        assert x.dtype == torch.float32
        assert x.ndim == 4 and x.shape[1:] == (3, 8, 8)
        assert x.min().item() >= 0.0 and x.max().item() <= 1.0
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated
        assert getattr(digits, f"y_{split}").dtype == torch.int64
    # all 1,797 images, scaled from 0..16 to 0..1
    total = sum(getattr(digits, f"x_{s}")[:, 0].double().sum().item() for s in ("train", "val", "test"))
    assert total == pytest.approx(load_digits().images.sum() / 16.0)
    assert digits.x_train.max().item() == 1.0


def test_loaders_resize_whole_batches(digits):
    data = digits.at(image_size=40, batch_size=100)
    loader = data.val_loader
    assert len(loader) == math.ceil(len(digits.y_val) / 100)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [100, 100, len(digits.y_val) - 200]
    for x, y in batches:
        assert x.shape == (len(y), 3, 40, 40) and x.dtype == torch.float32
        assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    assert torch.equal(torch.cat([y for _, y in batches]), digits.y_val)
    # the content is kept, not just the shape: upsampling preserves the mean brightness
    first = batches[0][0]
    assert first.mean().item() == pytest.approx(digits.x_val[:100].mean().item(), abs=0.02)
    shrunk = next(iter(digits.at(image_size=4, batch_size=50).test_loader))[0]
    assert shrunk.shape == (50, 3, 4, 4) and shrunk.min() >= 0 and shrunk.max() <= 1


def test_loader_at_stored_size_returns_the_images_unchanged(digits):
    x, y = next(iter(digits.at(image_size=8, batch_size=64).test_loader))
    assert torch.equal(x, digits.x_test[:64]) and torch.equal(y, digits.y_test[:64])
    assert digits.image_size == 32 and digits.at(batch_size=10).image_size == 32


def test_train_loader_shuffles_reproducibly(digits):
    data = digits.at(batch_size=500)
    loader = data.train_loader
    first_epoch = torch.cat([y for _, y in loader])
    second_epoch = torch.cat([y for _, y in loader])
    assert torch.equal(first_epoch.sort().values, digits.y_train.sort().values)  # every image once
    assert not torch.equal(first_epoch, digits.y_train)  # shuffled
    assert not torch.equal(first_epoch, second_epoch)  # epochs differ
    assert torch.equal(torch.cat([y for _, y in data.train_loader]), first_epoch)  # runs repeat
    assert not torch.equal(torch.cat([y for _, y in data.at(seed=1).train_loader]), first_epoch)


def test_loader_on_a_device_gives_the_same_batches_and_shares_the_shuffling(digits):
    """``TensorLoader.on`` (how ModelTrainer resizes on a GPU) keeps the order, the epochs' shuffling
    and, on the CPU, every value; the original loader is left as it was."""
    reference = [torch.cat(parts) for parts in zip(*[(x, y) for x, y in digits.at(image_size=40, batch_size=300,
                                                                                      seed=3).train_loader])]
    loader = digits.at(image_size=40, batch_size=300, seed=3).train_loader
    moved = loader.on("cpu")
    assert moved is not loader and loader.device is None and moved.device == torch.device("cpu")
    batches = list(moved)
    assert torch.equal(torch.cat([x for x, _ in batches]), reference[0])
    assert torch.equal(torch.cat([y for _, y in batches]), reference[1])
    second = torch.cat([y for _, y in loader])  # the next epoch, from the shared generator
    assert not torch.equal(second, reference[1])
    assert torch.equal(second.sort().values, digits.y_train.sort().values)


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown dataset 'MNIST'.*DIGITS"):
        DatasetManager.create_dataset("MNIST")
    assert DatasetManager.get_dataset("digits").name == "DIGITS"


# ---------------------------------------------------------------------------------------------
# the paper's released datasets
# ---------------------------------------------------------------------------------------------

def three_classes(n_per_class: int = 10, n_test: int = 6, size: int = 8, seed: int = 0):
    """uint8 NHWC images of three classes, and int64 labels."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (3 * n_per_class, size, size, 3), dtype=np.uint8)
    y_train = np.repeat(np.arange(3), n_per_class).astype(np.int64)
    x_test = rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8)
    y_test = (np.arange(n_test) % 3).astype(np.int64)
    return x_train, y_train, x_test, y_test


def nhwc_to_expected(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def test_released_dataset_loads_and_is_normalised(tmp_path, write_released):
    x_train, y_train, x_test, y_test = three_classes()
    write_released(tmp_path, "GTSRB", x_train, y_train, x_test, y_test)

    raw = mydataset.GTSRB().load(tmp_path)
    assert raw.x_train.dtype == torch.float32 and raw.x_train.shape == (30, 3, 8, 8)
    assert torch.allclose(raw.x_train, nhwc_to_expected(x_train))
    assert torch.allclose(raw.x_test, nhwc_to_expected(x_test))
    assert torch.equal(raw.y_train, torch.from_numpy(y_train)) and torch.equal(raw.y_test, torch.from_numpy(y_test))

    data = DatasetManager.create_dataset("GTSRB", data_root=tmp_path, batch_size=4)
    assert data.dataset_name == "GTSRB" and data.num_classes == 3
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (24, 6, 6)
    assert torch.bincount(data.y_val, minlength=3).tolist() == [2, 2, 2]
    assert data.x_val.min() >= 0 and data.x_val.max() <= 1
    x, y = next(iter(data.val_loader))
    assert x.shape == (4, 3, 8, 8)  # no declared size: the stored resolution


@pytest.mark.parametrize("layout", ["float NCHW tensor in 0-1", "float64 NHWC array in 0-255",
                                    "uint8 NCHW tensor, one-hot labels"])
def test_released_dataset_accepts_the_papers_formats(tmp_path, write_released, layout):
    x_train, y_train, x_test, y_test = three_classes()
    expected_train, expected_test = nhwc_to_expected(x_train), nhwc_to_expected(x_test)
    if layout == "float NCHW tensor in 0-1":
        arrays = (expected_train.clone(), torch.from_numpy(y_train), expected_test.clone(), torch.from_numpy(y_test))
    elif layout == "float64 NHWC array in 0-255":
        arrays = (x_train.astype(np.float64), y_train, x_test.astype(np.float64), y_test)
    else:
        one_hot = np.eye(3, dtype=np.float32)
        arrays = (torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous(), one_hot[y_train],
                  torch.from_numpy(x_test).permute(0, 3, 1, 2).contiguous(), one_hot[y_test])
    write_released(tmp_path, "TTS", *arrays)
    raw = mydataset.TTS().load(tmp_path)
    assert raw.x_train.dtype == torch.float32 and raw.x_train.shape == (30, 3, 8, 8)
    assert torch.allclose(raw.x_train, expected_train, atol=1e-6)
    assert torch.allclose(raw.x_test, expected_test, atol=1e-6)
    assert torch.equal(raw.y_train, torch.from_numpy(y_train)) and raw.y_train.dtype == torch.int64


@pytest.mark.parametrize("shape", ["N,H,W", "N,1,H,W"])
def test_single_channel_xrays_are_repeated_to_three(tmp_path, write_released, shape):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    if shape == "N,1,H,W":
        x_train, x_test = x_train[:, None], x_test[:, None]
    write_released(tmp_path, "COVIDX9A", x_train, np.repeat(np.arange(2), 6), x_test, np.array([0, 1, 0, 1]))
    data = DatasetManager.create_dataset("COVIDX9A", data_root=tmp_path)
    raw = mydataset.COVIDX9A().load(tmp_path)
    assert raw.x_train.shape == (12, 3, 8, 8) and data.x_test.shape == (4, 3, 8, 8)
    grey = torch.from_numpy(x_train.reshape(12, 8, 8)).float() / 255
    for channel in range(3):
        assert torch.allclose(raw.x_train[:, channel], grey)
    assert data.num_classes == 2


class RunsCode:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pth_that_would_run_code_is_refused(tmp_path, write_released):
    write_released(tmp_path, "GTSRB", *three_classes())
    marker = tmp_path / "marker"
    hostile = tmp_path / "GTSRB" / "x_train.pth"
    torch.save(RunsCode(f"touch {marker}"), hostile)

    with pytest.raises(UsageError, match="refused") as error:
        DatasetManager.create_dataset("GTSRB", data_root=tmp_path)
    assert str(hostile) in str(error.value)
    assert not marker.exists()
    # the payload is real: plain pickle loading would have run it
    torch.load(hostile, weights_only=False)
    assert marker.exists()


def test_missing_files_name_what_is_expected(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(UsageError) as error:
        DatasetManager.create_dataset("GTSRB", data_root=root)
    message = str(error.value)
    for name in FILES:
        assert str(root / "GTSRB" / name) in message
    assert "GTSRB not found" in message


def test_one_missing_file_is_named(tmp_path, write_released):
    folder = write_released(tmp_path, "CTSD", *three_classes())
    (folder / "y_test.pth").unlink()
    with pytest.raises(UsageError, match=r"missing y_test\.pth"):
        DatasetManager.create_dataset("CTSD", data_root=tmp_path)
    with pytest.raises(UsageError, match=r"missing y_test\.pth"):
        mydataset.CTSD().check_available(tmp_path)


def test_mismatched_image_and_label_counts(tmp_path, write_released):
    x_train, y_train, x_test, y_test = three_classes()
    write_released(tmp_path, "ATS", x_train, y_train[:-1], x_test, y_test)
    with pytest.raises(UsageError, match="30 images but 29 labels"):
        DatasetManager.create_dataset("ATS", data_root=tmp_path)


def test_test_label_unknown_to_training_is_a_usage_error(tmp_path, write_released):
    x_train, y_train, x_test, y_test = three_classes()
    y_test = y_test.copy()
    y_test[0] = 5
    write_released(tmp_path, "ATS", x_train, y_train, x_test, y_test)
    with pytest.raises(UsageError, match="test label 5"):
        DatasetManager.create_dataset("ATS", data_root=tmp_path)


def test_validation_split_lacking_a_class_is_a_usage_error(digits):
    y_val = digits.y_val.clone()
    y_val[y_val == 4] = 3
    with pytest.raises(UsageError, match=r"class\(es\) \[4\] missing from the val split"):
        DatasetManager._check_classes_present(replace(digits, y_val=y_val))


def test_class_with_a_single_training_image_is_a_usage_error(tmp_path, write_released):
    x_train, y_train, x_test, y_test = three_classes()
    y_train = y_train.copy()
    y_train[-9:] = 1  # class 2 keeps one image: it cannot be in both train and validation
    write_released(tmp_path, "TSCD", x_train, y_train, x_test, y_test)
    with pytest.raises(UsageError, match=r"class\(es\) \[2\] missing from the (train|val) split"):
        DatasetManager.create_dataset("TSCD", data_root=tmp_path)


@pytest.mark.parametrize("size, batches", [(129, [64, 65]), (128, [64, 64]), (130, [64, 64, 2]), (1, [1])])
def test_a_training_loader_never_ends_on_a_lone_input(size, batches):
    """Batch normalisation cannot train on one input: the last one joins the batch before (every input still seen
    once per epoch); an evaluation loader keeps plain batches."""
    x, y = torch.rand(size, 1, 2, 2), torch.arange(size)
    training = DatasetManager.TensorLoader(x, y, 64, None, shuffle=True, training=True)
    assert len(training) == len(batches) and [len(b) for _, b in training] == batches
    assert sorted(torch.cat([b for _, b in training]).tolist()) == list(range(size))
    plain = DatasetManager.TensorLoader(x, y, 64, None)
    assert [len(b) for _, b in plain] == [min(64, size - start) for start in range(0, size, 64)]


def test_a_batch_normalised_network_trains_on_64k_plus_one_inputs():
    """The regression: fault 19 at kept_fraction 0.562 left ResNet a training set of 64k + 1 inputs."""
    from ModelTrainer import ModelTrainer

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                  torch.nn.Linear(8, 3))
    x, y = torch.rand(129, 1, 2, 2), torch.arange(129) % 3
    trainer = ModelTrainer(network, device="cpu", epochs=1, lr=1e-3, progress=False)
    history = trainer.train_model(DatasetManager.TensorLoader(x, y, 64, None, shuffle=True, training=True))
    assert history["epoch"] == [1] and math.isfinite(history["train_loss"][0])
