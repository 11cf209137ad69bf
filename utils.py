"""The small remainder every room shares: the usage-error type and warnings, registries, device choice, seeding,
splits.

Files live in ``storage/files.py`` (atomic writes, safe loading), paths in ``storage/layout.py``, defaults and
settings in ``storage/settings.py``, metrics in ``evaluation/metrics.py``; anything specific to a dataset, an
architecture, a fault, the attacker or the failure predictor lives in its own module.
"""

from __future__ import annotations

import importlib
import random
import re
import sys
from typing import Callable

import numpy as np

#: the one seed of the pipeline: splits, faults, training, input sampling and bootstrap intervals start from it
SEED = 42


class UsageError(Exception):
    """Bad input from the user (argument, missing or corrupt file).

    Scripts turn it into one line on stderr and exit status 2; anything else is a real bug.
    """


def warn(message: str) -> None:
    """A result that cannot mean what its column says, said where it is found: one ``warning:`` line on stderr
    (the fact is kept beside the result too, in metadata or a table column, by the caller)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Registry(dict):
    """Classes by their ``name``, in registration order: ``register`` is the decorator a class enters with,
    ``get_class`` the lookup that turns an unknown name into a UsageError listing the known ones.

    ``spelling`` is the names' one case (``str.lower`` for architectures, ``str.upper`` for datasets);
    lookups accept any case.
    """

    def __init__(self, what: str, spelling: Callable[[str], str]):
        super().__init__()
        self.what, self.spelling = what, spelling

    def register(self, cls: type) -> type:
        """Class decorator: enter ``cls`` under its ``name``."""
        self.add(getattr(cls, "name", ""), cls)
        return cls

    def add(self, name: str, entry) -> None:
        """Enter ``entry`` (a class, or a configured instance) under ``name``; a second entry under one name is
        refused, naming both."""
        if not isinstance(name, str) or not name or name != self.spelling(name):
            raise ValueError(f"a {self.what}'s name must be a non-empty {self.spelling.__name__}-case string, got "
                             f"{name!r} ({_label(entry)})")
        if name in self and self[name] is not entry and self[name] != entry:
            raise ValueError(f"{self.what} {name!r} is registered twice ({_label(self[name])}, {_label(entry)}); "
                             "choose another name")
        self[name] = entry

    def get_class(self, name) -> type:
        cls = self.get(self.spelling(str(name)))
        if cls is None:
            raise UsageError(f"unknown {self.what} {name!r}; known: {', '.join(self)}")
        return cls


def resolve(reference):
    """``reference`` itself, or the object a ``"module:name"`` string names, imported now: a registry entry may
    name its code by path, so that the registry is read (``--help``, checks) without importing that code."""
    if not isinstance(reference, str):
        return reference
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _label(entry) -> str:
    """A registry entry as messages name it: its class's name."""
    return entry.__name__ if isinstance(entry, type) else type(entry).__name__


#: the kinds of device the pipeline runs on (``--device``, ``--devices``, the API's ``device=``)
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: a device's spelling: a kind, with an index or not (``cuda:1``); ``auto`` is the best available
DEVICE_SPELLING = re.compile(rf"(?:{'|'.join(DEVICE_TYPES)})(?::\d+)?")


def check_device_spelling(device, flag: str = "--device") -> None:
    """Refuse (a UsageError naming ``flag``) a device request that is not spelled as one: checked without torch,
    so that a command line answers a typo at once."""
    if not (device is None or str(device) == "auto" or (isinstance(device, int) and not isinstance(device, bool))
            or DEVICE_SPELLING.fullmatch(str(device))):
        raise UsageError(f"unknown {flag} {device!r}: use cpu, cuda, cuda:N or mps")


def parse_device(device, flag: str = "--device"):
    """The spelling of a device request checked, not whether this machine has it: ``None`` (or ``auto``) for
    "the best available", else a ``torch.device`` of one of :data:`DEVICE_TYPES`; an int ``n`` (the paper
    repository's habit) is ``cuda:n``. Anything else is a UsageError naming ``flag``."""
    import torch  # deferred: torch takes two seconds to load; the command line checks spellings without it

    if device is None or str(device) == "auto":
        return None
    if isinstance(device, torch.device):
        device = str(device)
    check_device_spelling(device, flag)
    return torch.device(f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else device)


def choose_device(device=None, flag: str = "--device"):
    """The device to run on (a ``torch.device``): ``None`` picks CUDA, then Apple MPS, then CPU; an explicit
    request (:func:`parse_device`) that this machine cannot meet is a UsageError.

    An int ``n`` (the paper repository's habit) means ``cuda:n``, or the CPU where there is no CUDA.
    """
    import torch  # deferred: as in parse_device

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool) and not torch.cuda.is_available():
        return torch.device("cpu")
    device = parse_device(device, flag)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {device} requested but CUDA is not available on this machine; use {flag} cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{flag} mps requested but Apple MPS is not available on this machine; use {flag} cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed every generator the pipeline touches, so a CPU run is reproducible bit for bit."""
    import torch  # deferred: as in parse_device

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stratified_split(y, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(keep, held_out)`` of labels ``y`` (a tensor) with ``fraction`` held out, stratified by label
    where possible."""
    from sklearn.model_selection import train_test_split  # deferred: scikit-learn takes over a second to load

    indices = np.arange(len(y))
    try:
        keep, held = train_test_split(indices, test_size=fraction, stratify=y.numpy(), random_state=seed)
    except ValueError:  # a class with a single example cannot be stratified
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)
