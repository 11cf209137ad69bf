"""Distribution shift: the ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) at severities 1-5, applied to
the inputs of every version of a set (unlike faults 10-12, which change one version's test data).

The corruptions come from ``corrupt-tta`` (a maintained port of ImageNet-C's code to current NumPy, OpenCV and
scikit-image). They are applied at the resolution a version sees, after the loader's resize, with ImageNet-C's
parameters (tuned for 224-pixel images: at 32 pixels the blurs and the elastic transform are relatively
stronger). A grey image is corrupted as three equal channels and read back as their mean. The library draws from
NumPy's global generator and, for impulse noise, scikit-image's; each image gets its own seed from (``seed``,
corruption, severity, index) for both, so a rerun, and any batch order, corrupts every image identically, and the
caller's generator state is restored after.

A shift is named ``corruption:severity`` (``gaussian_noise:5``); on the command line a family (``noise:3``) or
``all:S`` stands for each of its corruptions, and ``none`` for the clean test set.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import replace

import numpy as np
import torch

from storage.settings import NO_SHIFT, SEED
from utils import UsageError

LIBRARY = "corrupt-tta"
#: the corruptions by family, as ImageNet-C groups them (its "extra" spatter and saturate join weather and digital)
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("gaussian_blur", "glass_blur", "defocus_blur", "motion_blur", "zoom_blur"),
    "weather": ("fog", "frost", "snow", "spatter"),
    "digital": ("contrast", "brightness", "saturate", "jpeg_compression", "pixelate", "elastic_transform"),
}
CORRUPTIONS = tuple(name for members in FAMILIES.values() for name in members)
SEVERITIES = (1, 2, 3, 4, 5)
#: the shifted sets a process keeps corrupted in memory (the versions of one shift share them)
KEPT_SETS = 8


def add_flags(parser, evaluation: bool = True, fit: bool = True) -> None:
    """``--shifts`` (the cache step and the evaluations: which test sets) and ``--fit-shifts`` (the fit step and
    the evaluations: which failure model)."""
    if evaluation:
        parser.add_argument("--shifts", nargs="+", default=[NO_SHIFT], metavar="NAME:SEVERITY",
                            help="test sets under shift: a corruption (gaussian_noise:5), a family (noise:3, blur, "
                                 "weather, digital) or all:S for each of its corruptions at severity S, none for the "
                                 "clean test set (default: none); each shift's cache lives beside the clean one")
    if fit:
        parser.add_argument("--fit-shifts", nargs="+", default=[], metavar="NAME:SEVERITY",
                            help="fit the failure models on the validation inputs clean and under these shifts too "
                                 "(same words as --shifts); such a failure model is used only with the same "
                                 "--fit-shifts, and should be judged on shifts of other families")


def parse(texts, flag: str = "--shifts") -> tuple[str, ...]:
    """``NAME:SEVERITY`` words (a corruption, a family or ``all``; ``none`` for the clean test set) as shifts
    ``corruption:severity``, each once, in one canonical order (clean first, then by severity, then corruption):
    the same list whatever order they were typed in. A bad word is a UsageError naming the choices."""
    found = set()
    for text in texts:
        word = str(text).strip().lower()
        if word == NO_SHIFT:
            found.add(NO_SHIFT)
            continue
        name, _, severity = word.partition(":")
        if not severity.isdigit() or int(severity) not in SEVERITIES:
            raise UsageError(f"{flag} {text!r}: expected NAME:SEVERITY with a severity in 1-5 (e.g. gaussian_noise:5, "
                             "noise:3, all:3), or none")
        if name == "all":
            names = CORRUPTIONS
        elif name in FAMILIES:
            names = FAMILIES[name]
        elif name in CORRUPTIONS:
            names = (name,)
        else:
            raise UsageError(f"{flag} {text!r}: unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}, "
                             f"a family ({', '.join(FAMILIES)}) or all")
        found.update(f"{n}:{severity}" for n in names)
    return tuple(sorted(found, key=order))


def checked(texts, flag: str) -> tuple[str, ...]:
    """:func:`parse` of a flag's words (``--fit-shifts``: the clean set is always part of the fit, so ``none`` is
    dropped there); with a shift among them, the corruption library must be installed."""
    found = parse(texts, flag)
    if flag == "--fit-shifts":
        found = tuple(shift for shift in found if shift != NO_SHIFT)
    if any(shift != NO_SHIFT for shift in found):
        library_version()
    return found


def tag(shift_list) -> str:
    """The shifts a failure model was fitted under, short: per severity, a whole family by its name, else each
    corruption (``noise3+blur3``, ``fog3``); the inverse of what ``settings.mode_flag`` turns back into words."""
    words = []
    for level in SEVERITIES:
        names = {split(s)[0] for s in shift_list if s != NO_SHIFT and split(s)[1] == level}
        for group, members in FAMILIES.items():
            if set(members) <= names:
                words.append(f"{group}{level}")
                names -= set(members)
        words += [f"{name}{level}" for name in CORRUPTIONS if name in names]
    return "+".join(words)


def order(shift: str) -> tuple:
    """Where a shift stands in the canonical order: the clean set, then by severity, then by corruption."""
    if shift == NO_SHIFT:
        return (0, 0, 0)
    name, severity = split(shift)
    return (1, severity, CORRUPTIONS.index(name))


def split(shift: str) -> tuple[str, int]:
    """``("gaussian_noise", 5)`` of ``gaussian_noise:5``."""
    name, _, severity = shift.partition(":")
    return name, int(severity)


def family(shift: str) -> str:
    """The family of a shift's corruption (``none`` for the clean set)."""
    if shift == NO_SHIFT:
        return NO_SHIFT
    name = split(shift)[0]
    return next(group for group, members in FAMILIES.items() if name in members)


def severity(shift: str) -> int:
    """A shift's severity; 0 for the clean test set."""
    return 0 if shift == NO_SHIFT else split(shift)[1]


def library_version() -> str:
    """The installed corruption library's version; not installed is a UsageError saying how to install it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LIBRARY)
    except PackageNotFoundError:
        raise UsageError(f"shifts need the {LIBRARY} package: pip install -r envs_requirements/requirements.txt "
                         f"(or pip install {LIBRARY}==0.1.7)") from None


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
    import corrupt_tta.corruptions as library

    state, random_noise = np.random.get_state(), library.random_noise
    np.random.seed(seed)
    library.random_noise = functools.partial(random_noise, rng=seed)
    try:
        yield
    finally:
        library.random_noise = random_noise
        np.random.set_state(state)


def image_seed(seed: int, shift: str, index: int) -> int:
    """The seed of one image's corruption: from the run's seed, the corruption, its severity and the image's
    index, so that images, shifts and reruns never share or change their noise."""
    name, level = split(shift)
    return int(np.random.SeedSequence([seed, CORRUPTIONS.index(name), level, index]).generate_state(1)[0])


def corrupt_images(images: torch.Tensor, shift: str, seed: int = SEED, first_index: int = 0) -> torch.Tensor:
    """``images`` (N×C×H×W in [0, 1], C = 1 or 3) under ``shift``, same shape and dtype; image ``i`` is corrupted
    with :func:`image_seed` of ``first_index + i``."""
    library_version()
    from corrupt_tta import corrupt

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
        from DatasetManager import resize_batch

        if len(_KEPT) >= KEPT_SETS:
            _KEPT.pop(next(iter(_KEPT)))  # the oldest: jobs come shift by shift
        _KEPT[key] = corrupt_images(resize_batch(images, sized.image_size), shift, seed)
    return replace(sized, **{f"x_{split_name}": _KEPT[key]})


#: the corrupted sets this process keeps, by (images' digest, shape, size, shift, seed)
_KEPT: dict = {}
