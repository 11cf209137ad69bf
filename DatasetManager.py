"""Dataset registry, train/validation/test splits, data faults and in-memory batch loaders.

Images stay in memory as float NCHW tensors at their stored resolution; a loader resizes a whole
batch at once (one ``F.interpolate`` call) to the size a version needs, instead of a per-sample
Python transform.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import torch

import FaultInjector
import mydataset
from mydataset import DATASETS
from mydataset.base import resize_batch
from storage.settings import DEFAULT_DATA_ROOT
from utils import SEED, UsageError, stratified_split

VALIDATION_FRACTION = 0.2


def get_dataset(dataset_name: str) -> mydataset.MyDataset:
    """The dataset object for a name (case-insensitive); an unknown name is a UsageError."""
    return DATASETS.get_class(dataset_name)()


def paper_datasets() -> tuple[str, ...]:
    """The paper's seven datasets (those declaring ``in_paper``), in registration order."""
    return tuple(name for name, cls in DATASETS.items() if cls.in_paper)


class TensorLoader:
    """Batches of an in-memory image tensor, resized per batch; a drop-in for a DataLoader.

    Shuffling draws from its own seeded generator, so epochs differ but runs repeat exactly. A training loader
    (``training=True``) never ends on a batch of one input: batch normalisation cannot train on it (a training set
    of 64k + 1 inputs stopped ResNet with a ValueError), so that input joins the batch before.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, image_size: int | None,
                 shuffle: bool = False, seed: int = 0, training: bool = False):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.training = training
        self.image_size = image_size
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(seed)
        self.device: torch.device | None = None  # where batches are resized (None: where the images are)

    def on(self, device) -> "TensorLoader":
        """This loader (same order, same shuffling state) yielding batches moved to ``device`` before
        they are resized there: on a GPU the small native batch crosses the bus and the upsampling runs
        on the device (at 128×128 the host-side resize and copy were a fifth of AlexNet's and VGG-16's
        training step on an H200). On the CPU it changes nothing."""
        moved = copy.copy(self)
        moved.device = torch.device(device)
        return moved

    def __len__(self) -> int:
        return len(self._starts())

    def _starts(self) -> list[int]:
        """Where each batch starts (a training loader's lone last input joins the batch before)."""
        starts = list(range(0, len(self.x), self.batch_size))
        if self.training and len(starts) > 1 and len(self.x) - starts[-1] == 1:
            starts.pop()
        return starts

    @property
    def dataset(self) -> SimpleNamespace:
        """``loader.dataset.targets`` (and ``.data``), as the paper's scripts read a DataLoader's dataset."""
        return SimpleNamespace(data=self.x, targets=self.y)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self._generator) if self.shuffle else None
        starts = self._starts()
        for start, end in zip(starts, [*starts[1:], len(self.x)]):
            if order is None:
                xb, yb = self.x[start:end], self.y[start:end]
            else:
                index = order[start:end]
                xb, yb = self.x[index], self.y[index]
            if self.device is not None:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            yield resize_batch(xb, self.image_size), yb


@dataclass
class MyData:
    """The three splits of a dataset (with any data fault applied) and loaders at one image size."""

    dataset_name: str
    bug_id: int
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    batch_size: int = 256
    image_size: int | None = None
    seed: int = SEED
    source: mydataset.MyDataset | None = None
    data_root: Path = Path(DEFAULT_DATA_ROOT)
    #: the training batches are shuffled each epoch (fault 20 turns it off)
    shuffle_train: bool = True

    @property
    def train_loader(self) -> TensorLoader:
        return TensorLoader(self.x_train, self.y_train, self.batch_size, self.image_size, shuffle=self.shuffle_train,
                            seed=self.seed, training=True)

    @property
    def val_loader(self) -> TensorLoader:
        return TensorLoader(self.x_val, self.y_val, self.batch_size, self.image_size)

    @property
    def test_loader(self) -> TensorLoader:
        return TensorLoader(self.x_test, self.y_test, self.batch_size, self.image_size)

    @property
    def native_size(self) -> int:
        return int(max(self.x_train.shape[-2:]))

    def at(self, image_size: int | None = None, batch_size: int | None = None, seed: int | None = None) -> "MyData":
        """The same tensors seen at another image size, batch size or shuffling seed (no copy)."""
        return replace(self, image_size=image_size or self.image_size, batch_size=batch_size or self.batch_size,
                       seed=self.seed if seed is None else seed)

    def limited(self, max_inputs: int | None) -> "MyData":
        """At most ``max_inputs`` validation and test inputs: a stratified sample (the pipeline's seed), in order.

        For quick runs (the demo); every version of a dataset gets the same sample, and the
        training split is untouched.
        """
        if not max_inputs:
            return self
        splits = {}
        for split in ("val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(y) > max_inputs:
                _, kept = stratified_split(y, max_inputs / len(y), SEED)
                x, y = x[kept], y[kept]
            splits.update({f"x_{split}": x, f"y_{split}": y})
        return replace(self, **splits)


def create_dataset(dataset_name: str, bug_id: int | None = None, batch_size: int = 256,
                   data_root=DEFAULT_DATA_ROOT, image_size: int | None = None, seed: int = SEED,
                   fault_parameter: float | None = None) -> MyData:
    """Load a dataset, split off 20 % of train for validation, apply a data fault (7-12) if asked.

    ``image_size=None`` uses the dataset's own size (its stored resolution if it declares none).
    Model faults (1-6) leave the data as it is. An unknown dataset or fault, a fault that does not
    apply, or missing files are UsageErrors.
    """
    source = get_dataset(dataset_name)
    bug_id = FaultInjector.validate_bug_id(bug_id, source)
    raw = source.load(Path(data_root))
    num_classes = int(raw.y_train.max()) + 1
    if raw.y_test.numel() and int(raw.y_test.max()) >= num_classes:
        raise UsageError(f"{source.name}: test label {int(raw.y_test.max())} never occurs in the training labels")
    keep, held = stratified_split(raw.y_train, VALIDATION_FRACTION, SEED)
    data = MyData(dataset_name=source.name, bug_id=bug_id, num_classes=num_classes,
                  x_train=raw.x_train[keep], y_train=raw.y_train[keep],
                  x_val=raw.x_train[held], y_val=raw.y_train[held],
                  x_test=raw.x_test, y_test=raw.y_test, batch_size=batch_size,
                  image_size=image_size or source.image_size, seed=seed, source=source, data_root=Path(data_root))
    _check_classes_present(data)
    FaultInjector.inject_dataset_fault(data, bug_id, fault_parameter)
    return data


def _check_classes_present(data: MyData) -> None:
    """Every class must appear in train and validation, or the failure model has nothing to learn from."""
    for split in ("train", "val"):
        labels = getattr(data, f"y_{split}")
        missing = sorted(set(range(data.num_classes)) - set(labels.unique().tolist()))
        if missing:
            raise UsageError(f"{data.dataset_name}: class(es) {missing[:10]} missing from the {split} split; "
                             "every class needs at least 2 training images")


class DatasetCache:
    """Loads each (dataset, data fault) once per run: versions with model or hyper-parameter faults
    share the healthy splits, so a grid of versions does not reload the same files."""

    def __init__(self, data_root=DEFAULT_DATA_ROOT):
        self.data_root = data_root
        self._loaded: dict[tuple[str, int], MyData] = {}

    def get(self, dataset_name: str, bug_id: int | None = 0, max_inputs: int | None = None) -> MyData:
        bug_id = bug_id or 0
        key = (str(dataset_name).upper(), FaultInjector.data_fault(bug_id))
        if key not in self._loaded:
            self._loaded[key] = create_dataset(key[0], bug_id=key[1], data_root=self.data_root)
        return self._loaded[key].limited(max_inputs)


@lru_cache(maxsize=4)
def shared_cache(data_root: str) -> DatasetCache:
    """One dataset cache per process and data root: the jobs a worker runs, and the paper-style
    ``DatasetManager``, load each (dataset, data fault) once."""
    return DatasetCache(data_root)


class DatasetManager:
    """``from DatasetManager import DatasetManager``, as in the paper repository.

    Like the paper's registry, each (dataset, data fault) is loaded once per process and later calls
    share its tensors; each call gets its own object at its own batch size (the paper handed back the
    first object, with the first caller's batch size). Model and hyper-parameter faults leave the data
    healthy, so their datasets carry ``bug_id`` 0, as the paper's carried None.
    """

    @classmethod
    def create_dataset(cls, dataset_name: str, bug_id: int | None = None, batch_size: int = 256,
                       data_root=DEFAULT_DATA_ROOT) -> MyData:
        source = get_dataset(dataset_name)
        bug_id = FaultInjector.validate_bug_id(bug_id, source)
        return shared_cache(str(data_root)).get(source.name, bug_id).at(batch_size=batch_size)
