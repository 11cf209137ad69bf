"""A version's metadata file (``{key}.json``), read and checked field by field.

What training writes there is read back to rebuild the network (``structure_fault``, ``num_classes``), to size
its inputs (``image_size``), to decide on retraining (``settings``) and as the failure model's prior
(``val_acc``). A file edited by hand or damaged is refused with one line naming the file and the field, never a
traceback deep inside the code that used it. Fields a file lacks (older metadata) are not required here. The
paper's released versions have no metadata: their accuracies are the paper's published figures.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from storage.files import read_json
from storage.layout import PAPER_ACCURACIES, metadata_path, version_key
from utils import UsageError


def _whole(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _fraction(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and math.isfinite(value) and 0.0 <= value <= 1.0)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


#: each checked field: whether a value is acceptable, and what it should be (for the message)
FIELDS = {
    "model": (lambda v: isinstance(v, str) and bool(v), "an architecture's name"),
    "dataset": (lambda v: isinstance(v, str) and bool(v), "a dataset's name"),
    "bug": (lambda v: _whole(v, 0), "a fault id (a whole number >= 0)"),
    "structure_fault": (lambda v: _whole(v, 0), "the model fault built in (a whole number >= 0)"),
    "num_classes": (lambda v: _whole(v, 2), "a whole number of classes, at least 2"),
    "image_size": (lambda v: _whole(v, 1), "a side length in pixels (a whole number)"),
    "epochs": (lambda v: _whole(v, 1), "a whole number of epochs"),
    "batch_size": (lambda v: _whole(v, 1), "a whole number of inputs"),
    "seed": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "lr": (_positive, "a learning rate > 0"),
    "val_acc": (_fraction, "a fraction in [0, 1]"),
    "test_acc": (_fraction, "a fraction in [0, 1]"),
    "settings": (lambda v: isinstance(v, dict), "an object of the training settings"),
    "costs": (lambda v: isinstance(v, dict) and isinstance(v.get("forward_flops"), (int, float)),
              "an object of the version's costs (forward_flops, distance_flops, ...)"),
    "warnings": (lambda v: isinstance(v, list) and all(isinstance(line, str) for line in v),
                 "a list of warning lines"),
    "checkpoint_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "the checkpoint's SHA-256 (64 hex digits)"),
}


def read_metadata(path) -> dict:
    """The metadata at ``path``, every known field of the right type; a UsageError names the file and the first
    field that is not."""
    metadata = read_json(path)
    for name, (acceptable, expected) in FIELDS.items():
        if name in metadata and not acceptable(metadata[name]):
            raise UsageError(f"{Path(path)}: field {name!r} should be {expected}, got {metadata[name]!r}; retrain the "
                             "version with --force (or restore the file)")
    return metadata


def check_image_size(metadata: dict, path, model_name: str, minimum: int) -> None:
    """A recorded image size the architecture cannot take (below its minimum input) is refused, naming both."""
    size = metadata.get("image_size")
    if size is not None and size < minimum:
        raise UsageError(f"{Path(path)}: field 'image_size' is {size}, below {model_name}'s minimum input of "
                         f"{minimum}; retrain the version with --force (or restore the file)")


def recorded_validation_accuracy(model_root, model_name: str, dataset_name: str,
                                 bug_id: int) -> tuple[object, str]:
    """A version's validation accuracy as recorded, unchecked, and where it came from.

    From the version's metadata file, else the paper's published figure for its released versions
    (which come without metadata); the failure predictor checks that it is a fraction.
    """
    path = metadata_path(model_root, model_name, dataset_name, bug_id)
    if path.is_file():
        return read_metadata(path).get("val_acc"), str(path)
    value = paper_accuracy(dataset_name, model_name, bug_id)["val_acc"]
    if value is None:
        raise UsageError(f"no validation accuracy for {version_key(model_name, dataset_name, bug_id)}: no {path} and "
                         "not one of the paper's released versions; train it with main_train_model.py")
    return value, f"{PAPER_ACCURACIES.name} ({version_key(model_name, dataset_name, bug_id)})"


@lru_cache(maxsize=1)
def _paper_accuracy_table() -> dict[tuple[str, str, int], tuple[float | None, float | None]]:
    import pandas as pd  # deferred: pandas takes a second to load, and only the paper's versions need it

    table = pd.read_csv(PAPER_ACCURACIES)
    fractions = table[["val_acc_percent", "test_acc_percent"]] / 100
    fractions = fractions.astype(object).where(fractions.notna(), None)
    keys = zip(table["dataset"], table["model"], table["bug_id"].astype(int))
    return dict(zip(keys, map(tuple, fractions.itertuples(index=False, name=None))))


def paper_accuracy(dataset_name: str, model_name: str, bug_id: int) -> dict:
    """Validation/test accuracy (fractions) the paper reports for one of its released versions."""
    val_acc, test_acc = _paper_accuracy_table().get((dataset_name.upper(), model_name.lower(), bug_id or 0),
                                                    (None, None))
    return {"val_acc": val_acc, "test_acc": test_acc}
