"""Command-line plumbing shared by the six ``main_*`` scripts.

The flags in pieces (each script's parser takes the pieces it uses, as torchvision's reference scripts
do, so a flag a script would ignore is an argparse error there), the checks made before any work, the
settings objects a command line becomes (once: ``JobSettings``, ``AttackSettings``, ``LaunchSettings``,
``layout.Roots``, handed whole to the jobs and launchers), and the exit-status contract: 0 on success, 2 on
bad input (one line on stderr, no traceback), 1 on a real bug. The grid a command line asks for is
``grids.py``'s.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Sequence

import torch

import FaultInjector
import utils
from mydataset import shifts
from pipeline.grids import PRESETS, Grid, resolve_grid
from pipeline.jobs import Job, JobSettings
from storage import files, layout
from storage.settings import (
    ATTACK_BATCH,
    DEEPFOOL,
    NO_SHIFT,
    SEED,
    THREADS,
    AttackSettings,
    DeepFoolSettings,
    LaunchSettings,
    distance_mode,
)
from utils import UsageError


def _number_parser(convert, wording: str, zero_allowed: bool):
    """An argparse type: ``convert`` the text, refuse non-finite, negative (and, if asked, zero) values."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value

    return parse


positive_int = _number_parser(int, "a positive whole number", zero_allowed=False)
non_negative_int = _number_parser(int, "a whole number >= 0", zero_allowed=True)
positive_float = _number_parser(float, "a number > 0", zero_allowed=False)
non_negative_float = _number_parser(float, "a number >= 0", zero_allowed=True)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help unless the help already states it or there is none."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------
# the flags, in pieces: each script's parser takes the pieces it uses, and nothing else
# ---------------------------------------------------------------------------------------------

class _ScriptParser(argparse.ArgumentParser):
    """argparse's parser, pointing to ``--help`` when a flag is not one of the script's."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            message += f" ({self.prog} does not use them: run it with --help to see the flags it takes)"
        super().error(message)


def new_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser, described by the first line of its docstring. Flags are spelt out in full: an
    abbreviation could silently stand for another flag than the one meant (``--mode`` for ``--models``)."""
    return _ScriptParser(description=doc.splitlines()[0], formatter_class=_DefaultsHelpFormatter,
                         allow_abbrev=False)


def attack_step_parser(doc: str) -> argparse.ArgumentParser:
    """The start of the parsers of the steps that attack versions (fit, cache, real-time evaluation): what
    to run, how to attack, where."""
    parser = new_parser(doc)
    add_grid_flags(parser)
    add_attack_flags(parser)
    add_device_flag(parser)
    return parser


def add_grid_flags(parser: argparse.ArgumentParser) -> None:
    """What to run: ``--datasets``, ``--models``, ``--bugs`` and the ``--preset`` that fills in those not given."""
    from DatasetManager import DATASETS
    from ModelManager import MODELS

    parser.add_argument("--datasets", nargs="+", default=None,
                        help=f"datasets, of {', '.join(DATASETS)} (default: the preset's)")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"architectures, of {', '.join(MODELS)} (default: the preset's)")
    parser.add_argument("--bugs", nargs="+", default=None,
                        help=f"fault ids, {FaultInjector.describe_ids()}, ranges allowed (e.g. 0 1-10), or "
                             "'validated': each architecture's faults that main_validate_faults.py found killed and "
                             "not trivial (default: the preset's)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="digits",
                        help="the grid used where --datasets/--models/--bugs are not given: "
                             + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()))


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_flag, default=None,
                        help="cpu, cuda, cuda:N or mps (default: best available)")


def device_flag(text: str) -> str:
    """``--device``'s (and ``--devices``') spelling, checked while parsing (``utils.parse_device``); whether
    this machine has it is checked where the jobs run."""
    try:
        utils.parse_device(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps") from None
    return text


#: the four roots: ``layout.Roots`` field -> (its flag, its default, what it holds)
ROOT_FLAGS = {
    "data": ("--data-root", layout.DEFAULT_DATA_ROOT, "folder of the datasets"),
    "model": ("--model-root", layout.DEFAULT_MODEL_ROOT, "folder of checkpoints and their metadata"),
    "info": ("--info-root", layout.DEFAULT_INFO_ROOT, "folder of failure models (KDEs) and test caches"),
    "output": ("--output", layout.DEFAULT_OUTPUT, "folder of result CSVs and figures"),
}


def _destination(flag: str) -> str:
    """argparse's attribute for a flag: ``--data-root`` -> ``data_root``."""
    return flag.lstrip("-").replace("-", "_")


def add_root_flags(parser: argparse.ArgumentParser, *roots: str, output_help: str | None = None) -> None:
    """The roots a script reads or writes, of ``data``, ``model``, ``info`` and ``output``."""
    for root in roots:
        flag, default, text = ROOT_FLAGS[root]
        parser.add_argument(flag, default=default, help=output_help if root == "output" and output_help else text)


def add_run_flags(parser: argparse.ArgumentParser, force: bool = True) -> None:
    """``--threads``, ``--quiet``, and ``--force`` for the scripts that skip finished work."""
    if force:
        parser.add_argument("--force", action="store_true", help="redo work whose output already exists")
    parser.add_argument("--threads", type=positive_int, default=THREADS,
                        help="CPU threads each job computes with, on every launcher (results depend on it: float "
                             "rounding; Ray and Slurm reserve as many CPUs per job unless told otherwise)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """What training asks for (``settings.TrainSettings``); unset numbers keep the dataset's recipe."""
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs (default: the dataset's recipe for each architecture, or the preset's)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="training batch size (default: the dataset's recipe for each architecture)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="learning rate (default: the dataset's recipe for each architecture)")
    parser.add_argument("--seed", type=non_negative_int, default=SEED, help="random seed of training")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="side length the versions see (default: the dataset's, at least the model's minimum)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed-precision (bfloat16) training; a trained version is kept, add --force to retrain "
                             "(default: on with CUDA, off elsewhere)")


def add_training_job_flags(parser: argparse.ArgumentParser, output_help: str) -> None:
    """What a script whose jobs train versions takes after its own flags: training, device, run, roots, launcher."""
    add_training_flags(parser)
    add_device_flag(parser)
    add_run_flags(parser)
    add_root_flags(parser, "data", "model", "output", output_help=output_help)
    add_launcher_flags(parser)


def add_attack_flags(parser: argparse.ArgumentParser) -> None:
    """How DeepFool attacks the inputs (``settings.AttackSettings``)."""
    parser.add_argument("--batch-size", type=positive_int, default=ATTACK_BATCH,
                        help="inputs attacked together (finished inputs leave the batch)")
    parser.add_argument("--max-inputs", type=positive_int, default=None,
                        help="attack at most this many validation and test inputs per version (a stratified "
                             "sample; default: all, or the preset's)")
    add_distance_flag(parser)


def add_distance_flag(parser: argparse.ArgumentParser) -> None:
    """Which boundary distance the failure models are fitted on and the versions are judged by."""
    parser.add_argument("--distance", type=distance_flag, default=DEEPFOOL,
                        help="the boundary distance: deepfool (default, the paper's: 10 candidate classes, up to 50 "
                             "steps), deepfool:K (the top K classes), first-order[:K] (one linearisation, no "
                             "iteration: cheaper), feature[:K] (at the penultimate layer: one forward pass); each "
                             "mode's failure models and caches live beside the others'")


def distance_flag(text: str) -> DeepFoolSettings:
    """``--distance``'s value as ``settings.DeepFoolSettings`` (argparse turns the error into exit status 2)."""
    try:
        return distance_mode(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main`` under the exit-status contract."""
    try:
        status = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        attacks = sys.modules.get("distances.concurrent")
        if attacks is not None and attacks.interrupted_attacks():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # every write is atomic and done or undone by now, every lock released
        sys.exit(130)
    sys.exit(status or 0)


def prepare(args: argparse.Namespace, writable=()):
    """The checks a script makes before any work: names and pairs, device, datasets present, output folders
    writable, launcher flags; then the run's thread count is set. Returns ``(grid, device)`` (device None for a
    script without ``--device``, or whose jobs run on an engine: only its spelling is checked here).

    A script's parser holds only the flags it uses, so the flags present say what to check: a
    ``--device`` is checked where the jobs run, a ``--data-root`` for the datasets' files.
    """
    check_roots(args)
    grid = resolve_grid(args)
    launcher = launch_settings(args).launcher if "launcher" in vars(args) else "local"  # engine flags checked now
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
            setattr(args, flag, shifts.checked(getattr(args, flag), "--" + flag.replace("_", "-")))
    for folder in writable:
        files.check_writable(folder)
    return grid, device


def check_threads(threads: int) -> None:
    """More compute threads than this machine has CPUs is refused (torch would try to start them all)."""
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise UsageError(f"--threads {threads}: this machine has {cpus} CPUs; ask for at most {cpus}")


def check_roots(args: argparse.Namespace) -> None:
    """A root that exists must be a folder: a file there is refused naming its flag, before it is read as an
    empty folder (nothing found) or written into."""
    from pathlib import Path

    for flag, _, _ in ROOT_FLAGS.values():
        if _destination(flag) not in vars(args):
            continue
        path = Path(vars(args)[_destination(flag)])
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {path} is not a folder; point {flag} at a folder (or a path not yet there)")


def check_datasets_available(datasets: Sequence[str], data_root) -> None:
    """Fail before any work when a dataset's files are missing (one line naming them)."""
    from pathlib import Path

    from DatasetManager import get_dataset

    for name in datasets:
        get_dataset(name).check_available(Path(data_root))


# ---------------------------------------------------------------------------------------------
# jobs: building them from a command line, launching them, reporting what they did
# ---------------------------------------------------------------------------------------------

def roots_of(args: argparse.Namespace) -> layout.Roots:
    """The roots a command line names; those its script has no flag for keep their defaults."""
    given = {root: vars(args).get(_destination(flag)) for root, (flag, _, _) in ROOT_FLAGS.items()}
    return layout.Roots(**{root: path for root, path in given.items() if path is not None})


def attack_settings(args: argparse.Namespace, grid: Grid) -> AttackSettings:
    """The attack a fit, cache or real-time command line asks for (``--max-inputs`` or the preset's)."""
    return AttackSettings(batch_size=args.batch_size, max_inputs=grid.max_inputs, deepfool=args.distance,
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


def launch_and_report(jobs: list, settings: LaunchSettings, failures_only: bool = False) -> int:
    """Run the jobs with the chosen launcher, print one status table (of the failed jobs only, with
    ``failures_only``: hundreds of trainings make a table that says nothing), and return the exit status.

    A failed job does not stop the others. Exit 1 if any failed for a real bug; a failure from bad
    input (a missing or corrupt file) is a UsageError (exit 2) naming the first such reason.
    """
    from launchers import launch
    from pipeline.jobs import print_outcomes

    outcomes = launch(jobs, settings)
    failed = [o for o in outcomes if o.status == "failed"]
    print_outcomes(failed if failures_only else outcomes)
    bugs = [o for o in failed if not o.usage_error]
    if bugs:
        print(f"{len(bugs)} job(s) failed with an error (see the table and logs above)", file=sys.stderr)
        return 1
    if failed:
        more = f" ({len(failed) - 1} more failed job(s) in the table above)" if len(failed) > 1 else ""
        raise UsageError(f"{failed[0].reason}{more}")
    return 0


# the per-version scripts' launcher flags (``launchers/flags.py``), named here with the other flags
from launchers.flags import add_launcher_flags, launch_settings  # noqa: E402, F401
