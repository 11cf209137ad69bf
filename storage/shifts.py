"""The shifts a run can name: the ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) by family, their
severities, the canonical order of shifts and the short tag a failure model fitted under shifts is named by.

Words only: applying a shift to images is ``mydataset/corruptions.py``'s. A shift is named ``corruption:severity``
(``gaussian_noise:5``); on the command line a family (``noise:3``) or ``all:S`` stands for each of its corruptions,
and ``none`` for the clean test set.
"""

from __future__ import annotations

from utils import UsageError

#: the ``shift`` of the clean test set
NO_SHIFT = "none"
#: the corruptions by family, as ImageNet-C groups them (its "extra" spatter and saturate join weather and digital)
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("gaussian_blur", "glass_blur", "defocus_blur", "motion_blur", "zoom_blur"),
    "weather": ("fog", "frost", "snow", "spatter"),
    "digital": ("contrast", "brightness", "saturate", "jpeg_compression", "pixelate", "elastic_transform"),
}
CORRUPTIONS = tuple(name for members in FAMILIES.values() for name in members)
SEVERITIES = (1, 2, 3, 4, 5)


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
