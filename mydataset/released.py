"""The paper's other datasets, read from its released ``.pth`` files.

Each lives in ``{data_root}/{NAME}/`` as ``x_train.pth``, ``y_train.pth``, ``x_test.pth`` and
``y_test.pth`` (NumPy arrays or tensors, NCHW or NHWC, uint8 or float). They are loaded with
``torch.load(weights_only=True)`` and only NumPy's array types allowed, never plain pickle.
"""

from __future__ import annotations

from pathlib import Path

from mydataset.base import MyDataset, RawSplits, register_dataset, to_images, to_labels
from storage.files import safe_torch_load
from utils import UsageError

RELEASE_HINT = "the DeepFailGuard paper's released datasets (see README, 'The paper's data')"
FILES = ("x_train", "y_train", "x_test", "y_test")


class ReleasedDataset(MyDataset):
    """A dataset shipped by the paper as four ``.pth`` files; versions see the stored resolution."""

    in_paper = True

    def check_available(self, data_root: Path) -> None:
        paths = self._paths(data_root)
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            raise UsageError(f"{self.name} not found: expected {', '.join(str(paths[s]) for s in FILES)} "
                             f"(missing {', '.join(missing)}); get them from {RELEASE_HINT}")

    def _paths(self, data_root: Path) -> dict[str, Path]:
        return {stem: Path(data_root) / self.name / f"{stem}.pth" for stem in FILES}

    def load(self, data_root: Path) -> RawSplits:
        self.check_available(data_root)
        folder = Path(data_root) / self.name
        paths = self._paths(data_root)
        arrays = {stem: safe_torch_load(path, allow_numpy=True) for stem, path in paths.items()}
        splits = RawSplits(to_images(arrays["x_train"], f"{paths['x_train']}"),
                           to_labels(arrays["y_train"], f"{paths['y_train']}"),
                           to_images(arrays["x_test"], f"{paths['x_test']}"),
                           to_labels(arrays["y_test"], f"{paths['y_test']}"))
        for split in ("train", "test"):
            n_x, n_y = len(getattr(splits, f"x_{split}")), len(getattr(splits, f"y_{split}"))
            if n_x != n_y:
                raise UsageError(f"{self.name} {split}: {n_x} images but {n_y} labels in {folder}")
        return splits


@register_dataset
class ATS(ReleasedDataset):
    name = "ATS"


@register_dataset
class CTSD(ReleasedDataset):
    name = "CTSD"


@register_dataset
class GTSRB(ReleasedDataset):
    name = "GTSRB"


@register_dataset
class TSCD(ReleasedDataset):
    name = "TSCD"


@register_dataset
class TTS(ReleasedDataset):
    name = "TTS"


@register_dataset
class COVIDX9A(ReleasedDataset):
    """Chest X-rays (single channel, repeated to three); fault 10 blurs instead of adding noise."""

    name = "COVIDX9A"
    test_noise = "blur"
