"""What a parsed command line becomes, and the exit-status contract of the six ``main_*`` scripts.

The checks made before any work (:func:`prepare`), the settings objects a command line becomes (once:
``JobSettings``, ``AttackSettings``, ``storage.settings.Roots``, handed whole to the jobs; the launch's are
``launchers.launch_settings``), the jobs, and the contract: 0 on success, 2 on bad input (one line on stderr, no
traceback), 1 on a real bug. The flags are ``pipeline/flags.py``'s; the grid a command line asks for is
``pipeline/grids.py``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

import utils
from DatasetManager import get_dataset
from mydataset.corruptions import library, library_version
from pipeline.flags import ROOT_FLAGS, destination
from pipeline.grids import Grid, resolve_grid
from pipeline.jobs import Job, JobSettings
from storage import files, settings, shifts
from storage.settings import AttackSettings
from storage.shifts import NO_SHIFT
from utils import UsageError


def prepare(args: argparse.Namespace, writable=()):
    """The checks a script makes before any work: names and pairs, device, datasets present, output folders
    writable, launcher flags; then the run's thread count is set. Returns ``(grid, device)`` (device None for a
    script without ``--device``, or whose jobs run on an engine: only its spelling is checked here).

    A script's parser holds only the flags it uses, so the flags present say what to check: a
    ``--device`` is checked where the jobs run, a ``--data-root`` for the datasets' files.
    """
    check_roots(args)
    grid = resolve_grid(args)
    launcher = vars(args).get("launcher", "local")  # an engine checks its own flags (launchers.launch_settings)
    if launcher == "local":
        check_threads(args.threads)
    torch.set_num_threads(args.threads)  # the driver's own work (and local jobs) with the run's thread count
    device = None
    if "device" in vars(args) and launcher == "local":
        device = utils.choose_device(args.device)  # also where no network runs: an unmet request is refused
    if "data_root" in vars(args):
        check_datasets_available(grid.datasets, args.data_root)
    for flag in ("shifts", "fit_shifts"):  # words (families, all:S) to shifts, checked; the library, if any is asked
        if flag in vars(args):
            setattr(args, flag, checked_shifts(getattr(args, flag), "--" + flag.replace("_", "-")))
    for folder in writable:
        files.check_writable(folder)
    return grid, device


def checked_shifts(texts, flag: str) -> tuple[str, ...]:
    """A shift flag's words as shifts (``storage.shifts.parse``; ``--fit-shifts``: the clean set is always part of
    the fit, so ``none`` is dropped there); with a shift among them, the corruption library must be installed."""
    found = shifts.parse(texts, flag)
    if flag == "--fit-shifts":
        found = tuple(shift for shift in found if shift != NO_SHIFT)
    if any(shift != NO_SHIFT for shift in found):
        library_version()
    return found


def check_corruption_library(shifts) -> None:
    """A step that corrupts inputs under ``shifts`` needs the corruption library to import, not only to be
    installed: checked before any job starts (one line naming the package and the remedy)."""
    if any(shift != NO_SHIFT for shift in shifts):
        library()


def check_threads(threads: int) -> None:
    """More compute threads than this machine has CPUs is refused (torch would try to start them all)."""
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise UsageError(f"--threads {threads}: this machine has {cpus} CPUs; ask for at most {cpus}")


def check_roots(args: argparse.Namespace) -> None:
    """A root that exists must be a folder: a file there is refused naming its flag, before it is read as an
    empty folder (nothing found) or written into."""
    for flag, default, _ in ROOT_FLAGS.values():
        if destination(flag) not in vars(args):
            continue
        path = Path(vars(args)[destination(flag)])
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {path} is not a folder; point {flag} at a folder (or a path not yet there)")
        note_root_elsewhere(flag, path, default)


#: the repository's folder: the default roots are relative to the folder a script runs in, which is usually it
REPOSITORY = Path(__file__).resolve().parent.parent


def note_root_elsewhere(flag: str, path: Path, default: str) -> None:
    """A default root that does not exist in the folder the script runs in but does in the repository: say which
    folder is read (the user ran it from elsewhere, and would otherwise be told to redo steps already done)."""
    here = Path.cwd().resolve()
    if str(path) != default or here == REPOSITORY or path.exists() or not (REPOSITORY / default).is_dir():
        return
    print(f"note: {flag} is {default} in this folder ({here}), where there is none; the repository's is "
          f"{REPOSITORY / default}: run from {REPOSITORY}, or pass {flag} {REPOSITORY / default}", file=sys.stderr)


def check_datasets_available(datasets: Sequence[str], data_root) -> None:
    """Fail before any work when a dataset's files are missing (one line naming them)."""
    for name in datasets:
        get_dataset(name).check_available(Path(data_root))


# ---------------------------------------------------------------------------------------------
# jobs: building them from a command line, launching them, reporting what they did
# ---------------------------------------------------------------------------------------------

def roots_of(args: argparse.Namespace) -> settings.Roots:
    """The roots a command line names; those its script has no flag for keep their defaults."""
    given = {root: vars(args).get(destination(flag)) for root, (flag, _, _) in ROOT_FLAGS.items()}
    return settings.Roots(**{root: path for root, path in given.items() if path is not None})


def attack_settings(args: argparse.Namespace, grid: Grid) -> AttackSettings:
    """The attack a fit, cache or real-time command line asks for (``--max-inputs`` or the preset's)."""
    return AttackSettings(batch_size=args.batch_size, max_inputs=grid.max_inputs, distance=args.distance,
                          fit_shifts=tuple(vars(args).get("fit_shifts", ())))


def job_settings(args: argparse.Namespace, **fields) -> JobSettings:
    """The settings every job of a per-version script shares, with the step's own ``fields``."""
    return JobSettings(device=args.device, force=args.force, quiet=args.quiet, threads=args.threads, **fields)


def make_jobs(step: str, versions, args: argparse.Namespace, settings: JobSettings,
              shift_list=(NO_SHIFT,)) -> list[Job]:
    """One job of ``step`` per ``(dataset, model, bug)`` and shift (shift by shift), all with ``settings``."""
    roots = roots_of(args)
    return [Job(step, dataset, model, bug, roots, settings, shift) for shift in shift_list
            for dataset, model, bug in versions]
