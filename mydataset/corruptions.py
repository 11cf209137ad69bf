"""Applying a distribution shift: the ImageNet-C corruptions (the names are ``storage/shifts.py``'s) on the inputs
of every version of a set (unlike faults 10-12, which change one version's test data).

The corruptions come from ``corrupt-tta`` (a maintained port of ImageNet-C's code to current NumPy, OpenCV and
scikit-image). They are applied at the resolution a version sees, after the loader's resize, with ImageNet-C's
parameters (tuned for 224-pixel images: at 32 pixels the blurs and the elastic transform are relatively
stronger). A grey image is corrupted as three equal channels and read back as their mean. The library draws from
NumPy's global generator and, for impulse noise, scikit-image's; each image gets its own seed from (``seed``,
corruption, severity, index) for both, so a rerun, and any batch order, corrupts every image identically, and the
caller's generator state is restored after.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from mydataset.base import resize_batch
from storage.shifts import CORRUPTIONS, NO_SHIFT, family, split
from utils import SEED, UsageError

LIBRARY = "corrupt-tta"
#: the shifted sets a process keeps corrupted in memory (the versions of one shift share them)
KEPT_SETS = 8


def library_version() -> str:
    """The installed corruption library's version; not installed is a UsageError saying how to install it."""
    try:
        return version(LIBRARY)
    except PackageNotFoundError:
        raise UsageError(f"shifts need the {LIBRARY} package: pip install -r envs_requirements/requirements.txt "
                         f"(or pip install {LIBRARY}==0.1.7)") from None


@functools.cache
def library():
    """The corruption library (imported on first use, by name: it loads OpenCV and scikit-image);
    installed but failing to import (a broken install, a missing system library) is a UsageError naming the
    package, the error and the remedy."""
    installed = library_version()
    try:
        return importlib.import_module("corrupt_tta")
    except (ImportError, OSError) as exc:
        raise UsageError(f"shifts need the {LIBRARY} package, which is installed ({installed}) but fails to import: "
                         f"{type(exc).__name__}: {exc}; reinstall it with its dependencies (pip install "
                         f"--force-reinstall {LIBRARY}=={installed}), or install the system library the error names "
                         "(OpenCV needs libGL: apt-get install libgl1)") from None


def describe(shift: str, seed: int = SEED) -> dict:
    """What a shifted cache records of how its inputs were made (its manifest): the corruption, its severity and
    family, the library and its version, and the seed."""
    name, level = split(shift)
    return {"shift": shift, "corruption": name, "severity": level, "family": family(shift), "library": LIBRARY,
            "version": library_version(), "seed": seed}


@contextlib.contextmanager
def _seeded_library(seed: int):
    """The corruption library with every random draw from ``seed``: NumPy's global generator (most corruptions;
    the caller's state is restored after) and the generator scikit-image's ``random_noise`` takes (impulse noise,
    which otherwise draws from a fresh unseeded one: a rerun would corrupt differently)."""
    module = library().corruptions
    state, random_noise = np.random.get_state(), module.random_noise
    np.random.seed(seed)
    module.random_noise = functools.partial(random_noise, rng=seed)
    try:
        yield module
    finally:
        module.random_noise = random_noise
        np.random.set_state(state)


def image_seed(seed: int, shift: str, index: int) -> int:
    """The seed of one image's corruption: from the run's seed, the corruption, its severity and the image's
    index, so that images, shifts and reruns never share or change their noise."""
    name, level = split(shift)
    return int(np.random.SeedSequence([seed, CORRUPTIONS.index(name), level, index]).generate_state(1)[0])


def corrupt_images(images: torch.Tensor, shift: str, seed: int = SEED, first_index: int = 0) -> torch.Tensor:
    """``images`` (N×C×H×W in [0, 1], C = 1 or 3) under ``shift``, same shape and dtype; image ``i`` is corrupted
    with :func:`image_seed` of ``first_index + i``."""
    corrupt = library().corrupt

    name, level = split(shift)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UsageError(f"shifts corrupt N×C×H×W images with 1 or 3 channels, got shape {tuple(images.shape)}")
    pixels = (images.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty(pixels.shape, dtype=np.float64)
    for i, image in enumerate(pixels):
        with _seeded_library(image_seed(seed, shift, first_index + i)):
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
            corrupted = np.clip(np.asarray(corrupt(rgb, severity=level, corruption_name=name), np.float64), 0, 255)
        out[i] = corrupted.mean(axis=2, keepdims=True) if image.shape[2] == 1 else corrupted
    return torch.from_numpy(out / 255.0).permute(0, 3, 1, 2).to(images.dtype).contiguous()


def shifted(data, split_name: str, image_size: int | None, shift: str, seed: int = SEED):
    """``data`` (a ``DatasetManager.MyData``) seen at ``image_size`` with its ``split_name`` split (``test`` or
    ``val``) under ``shift`` (the clean data at that size for ``none``); each set of images is corrupted once per
    process (the versions of a shift that see one size share it)."""
    sized = data.at(image_size=image_size)
    if shift == NO_SHIFT:
        return sized
    images = getattr(data, f"x_{split_name}")
    key = (hashlib.blake2b(images.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest(),
           tuple(images.shape), sized.image_size, shift, seed)
    if key not in _KEPT:
        if len(_KEPT) >= KEPT_SETS:
            _KEPT.pop(next(iter(_KEPT)))  # the oldest: jobs come shift by shift
        _KEPT[key] = corrupt_images(resize_batch(images, sized.image_size), shift, seed)
    return replace(sized, **{f"x_{split_name}": _KEPT[key]})


#: the corrupted sets this process keeps, by (images' digest, shape, size, shift, seed)
_KEPT: dict = {}
