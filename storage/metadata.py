"""A version's metadata file (``{key}.json``), read and checked field by field.

What training writes there is read back to rebuild the network (``structure_fault``, ``num_classes``), to size
its inputs (``image_size``), to decide on retraining (``settings``) and as the failure model's prior
(``val_acc``). A file edited by hand or damaged is refused with one line naming the file and the field, never a
traceback deep inside the code that used it. Fields a file lacks (older metadata) are not required here.
"""

from __future__ import annotations

import math
from pathlib import Path

from storage.files import read_json
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
