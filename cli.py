"""Command-line plumbing shared by the five ``main_*`` scripts.

The common flags, parsing of lists (``--models resnet,alexnet`` or ``--models resnet alexnet``)
and the exit-status contract: 0 on success, 2 on bad input (one line on stderr, no traceback),
1 on a real bug.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import FaultInjector
import layout
import storage
import utils
from layout import version_key
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


def split_list(values: Sequence[str] | None) -> list[str] | None:
    """Accept both ``a,b`` and ``a b`` (and a mix) for list-valued flags."""
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item]


def parse_bug_ids(values: Sequence[str] | None) -> list[int] | None:
    """Fault ids: whole numbers 0-12, or ranges such as ``1-10``."""
    items = split_list(values)
    if items is None:
        return None
    bugs: list[int] = []
    for item in items:
        try:
            if "-" in item[1:]:
                low, high = item.split("-", 1)
                bugs.extend(range(int(low), int(high) + 1))
            else:
                bugs.append(int(item))
        except ValueError:
            raise UsageError(f"--bugs: {item!r} is not a fault id (0 = healthy, 1-12, or a range like 1-10)") from None
    for bug in bugs:
        if bug not in (FaultInjector.HEALTHY, *FaultInjector.FAULT_IDS):
            raise UsageError(f"--bugs: unknown fault {bug}; faults are 0 (healthy) and "
                             f"{FaultInjector.FAULT_IDS[0]}-{FaultInjector.FAULT_IDS[-1]}")
    return list(dict.fromkeys(bugs))


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help unless the help already states it or there is none."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every script shares."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_DefaultsHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="datasets (default: DIGITS; --preset paper: the paper's seven)")
    parser.add_argument("--models", nargs="+", default=None, help="architectures (default depends on --preset)")
    parser.add_argument("--bugs", nargs="+", default=None,
                        help="fault ids, 0 = healthy, ranges allowed (e.g. 0 1-10; default depends on --preset)")
    parser.add_argument("--preset", choices=("digits", "demo", "paper"), default="digits",
                        help="grid of datasets/models/faults used when those flags are not given")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="batch size (default: the dataset's)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs (default: the dataset's)")
    parser.add_argument("--max-inputs", type=positive_int, default=None,
                        help="attack at most this many validation and test inputs per version (a stratified "
                             "sample; default: all, or the preset's)")
    parser.add_argument("--seed", type=non_negative_int, default=utils.SEED, help="random seed")
    parser.add_argument("--force", action="store_true", help="redo work whose output already exists")
    parser.add_argument("--data-root", default=layout.DEFAULT_DATA_ROOT, help="folder of the datasets")
    parser.add_argument("--model-root", default=layout.DEFAULT_MODEL_ROOT, help="folder of checkpoints")
    parser.add_argument("--info-root", default=layout.DEFAULT_INFO_ROOT, help="folder of KDEs and caches")
    parser.add_argument("--output", default=layout.DEFAULT_OUTPUT, help="folder of result CSVs and figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main`` under the exit-status contract."""
    try:
        status = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


# ---------------------------------------------------------------------------------------------
# grids of versions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """A default grid of versions: what runs when ``--datasets/--models/--bugs`` are not given."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    bugs: tuple[int, ...]
    #: training epochs of some architectures (the others: their dataset's default)
    epochs: dict[str, int] = field(default_factory=dict)
    #: validation and test inputs attacked per version (None: all)
    max_inputs: int | None = None


ALL_MODELS = ("resnet", "alexnet", "densenet", "vgg16", "squeezenet")
PRESETS = {
    # every architecture, healthy and with each fault that applies to DIGITS
    "digits": Preset(("DIGITS",), ALL_MODELS, tuple(range(0, 11))),
    # the README's one-command demo, sized for 10 minutes on two CPU cores: three architectures
    # trained briefly (so they make mistakes worth predicting), a trained fault (5: a third of the
    # epochs) and a test-data fault (10: noisy inputs), 40 attacked inputs per split (the attack is
    # most of the time)
    "demo": Preset(("DIGITS",), ("squeezenet", "densenet", "resnet"), (0, 5, 10),
                   epochs={"densenet": 3, "resnet": 2}, max_inputs=40),
    # the paper's grid: seven datasets, five architectures, faults 1-10 (11, 12 on CIFAR10)
    "paper": Preset(("ATS", "CIFAR10", "CTSD", "GTSRB", "TSCD", "TTS", "COVIDX9A"), ALL_MODELS, tuple(range(0, 13))),
}


@dataclass(frozen=True)
class Grid:
    datasets: list[str]
    models: list[str]
    bugs: list[int]
    epochs: int | None = None  # --epochs: every architecture
    preset_epochs: dict[str, int] = field(default_factory=dict)
    max_inputs: int | None = None

    def versions(self, dataset: str) -> list[tuple[str, int]]:
        """``(model, bug)`` pairs that apply to ``dataset``, healthy ones first."""
        from DatasetManager import get_dataset

        unsupported = get_dataset(dataset).unsupported_faults
        return [(model, bug) for bug in sorted(self.bugs) for model in self.models if bug not in unsupported]

    def epochs_for(self, model: str) -> int | None:
        return self.epochs or self.preset_epochs.get(model)


def resolve_grid(args: argparse.Namespace) -> Grid:
    """The versions a command line asks for, every name checked before any work starts."""
    from DatasetManager import get_dataset
    from FaultInjector import validate_bug_id
    from ModelManager import get_model_class

    preset = PRESETS[args.preset]
    datasets = [get_dataset(name).name for name in (split_list(args.datasets) or preset.datasets)]
    models = [get_model_class(name).name for name in (split_list(args.models) or preset.models)]
    explicit_bugs = parse_bug_ids(args.bugs)
    if explicit_bugs is not None:
        for dataset in datasets:
            for bug in explicit_bugs:
                validate_bug_id(bug, get_dataset(dataset))
    bugs = explicit_bugs if explicit_bugs is not None else list(preset.bugs)
    return Grid(list(dict.fromkeys(datasets)), list(dict.fromkeys(models)), bugs, getattr(args, "epochs", None),
                dict(preset.epochs), args.max_inputs or preset.max_inputs)


def prepare(args: argparse.Namespace, writable=(), needs_data: bool = True):
    """The checks a script makes before any work: names, device, datasets present, output folders
    writable. Returns ``(grid, device)``."""
    grid = resolve_grid(args)
    if getattr(args, "launcher", "local") == "local":
        device = utils.choose_device(args.device)  # also where no network runs: a request that cannot be met is refused
    else:  # the jobs run elsewhere (a GPU node, say): only the spelling can be checked on the driver
        device = _parse_device(args.device)
    if needs_data:
        check_datasets_available(grid.datasets, args.data_root)
    for folder in writable:
        storage.check_writable(folder)
    return grid, device


def _parse_device(device):
    import torch

    if device is None or str(device) == "auto":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or mps") from exc


def check_datasets_available(datasets: Sequence[str], data_root) -> None:
    """Fail before any work when a dataset's files are missing (one line naming them)."""
    from pathlib import Path

    from DatasetManager import get_dataset

    for name in datasets:
        get_dataset(name).check_available(Path(data_root))


def trained_versions(grid: Grid, model_root) -> list[tuple[str, str, int]]:
    """The grid's ``(dataset, model, bug)`` versions whose checkpoint exists.

    Missing ones are listed on stderr and skipped (the paper's release lacks a few); if none of the
    requested versions exists, that is a UsageError.
    """
    from layout import checkpoint_path

    wanted = [(dataset, model, bug) for dataset in grid.datasets for model, bug in grid.versions(dataset)]
    found = [v for v in wanted if checkpoint_path(model_root, v[1], v[0], v[2]).is_file()]
    missing = [v for v in wanted if v not in found]
    if not found:
        example = checkpoint_path(model_root, wanted[0][1], wanted[0][0], wanted[0][2]) if wanted else model_root
        raise UsageError(f"no checkpoint found for the requested versions (e.g. {example}); "
                         "run main_train_model.py with the same --datasets/--models/--bugs first")
    if missing:
        names = ", ".join(version_key(m, d, b) for d, m, b in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        print(f"note: skipping {len(missing)} version(s) without a checkpoint: {names}{more}", file=sys.stderr)
    return found


# ---------------------------------------------------------------------------------------------
# jobs: building them from a command line, launching them, reporting what they did
# ---------------------------------------------------------------------------------------------

def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and its engines' options (the per-version scripts)."""
    from launchers import LAUNCHERS, parse_sbatch_option

    parser.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local", type=_launcher_with_engine,
                        help="where the per-version jobs run: in this process, on Ray, or as Slurm job arrays "
                             "(ray, slurm: pip install -r envs_requirements/requirements-cluster.txt; the repository "
                             "and the roots on a filesystem the workers share)")
    engines = parser.add_argument_group("--launcher ray / slurm")
    engines.add_argument("--ray-address", default=None,
                         help="join this running Ray cluster (host:port; default: $RAY_ADDRESS, else start a "
                              "local one)")
    engines.add_argument("--cpus-per-job", type=positive_float, default=1.0, help="CPUs Ray reserves per job")
    engines.add_argument("--gpus-per-job", type=non_negative_float, default=None,
                         help="GPUs Ray reserves per job, fractions allowed (default: 1 where this machine has CUDA, "
                              "else 0)")
    engines.add_argument("--slurm-partition", default=None, help="Slurm partition (default: the cluster's default)")
    engines.add_argument("--slurm-time", type=positive_int, default=240, help="time limit of each Slurm job, minutes")
    engines.add_argument("--slurm-cpus-per-job", type=positive_int, default=1, help="CPUs per Slurm job")
    engines.add_argument("--slurm-gpus-per-job", type=non_negative_int, default=0,
                         help="GPUs per Slurm job (gres; default: 0)")
    engines.add_argument("--slurm-array-parallelism", type=positive_int, default=None,
                         help="at most this many jobs of one array run at once (default: Slurm's limit)")
    engines.add_argument("--slurm-sbatch-option", type=parse_sbatch_option, action="append", default=[],
                         metavar="KEY=VALUE",
                         help="extra sbatch option, repeatable (e.g. account=myproject; default: none)")
    engines.add_argument("--no-wait", action="store_true",
                         help="slurm: submit, print the job ids and exit instead of waiting for the jobs")


def _launcher_with_engine(name: str) -> str:
    """``--launcher``'s value, refused while parsing (UsageError: one line, exit 2) when its engine is missing."""
    from launchers import LAUNCHERS, check_engine

    if name in LAUNCHERS:
        check_engine(name)
    return name


def roots_of(args: argparse.Namespace):
    from jobs import Roots

    return Roots(str(args.data_root), str(args.model_root), str(args.info_root), str(args.output))


def make_jobs(step: str, versions, args: argparse.Namespace, **settings) -> list:
    """One job of ``step`` per ``(dataset, model, bug)``; ``settings``: what the step's flags asked for."""
    from jobs import Job

    common = dict(device=args.device, force=args.force, quiet=args.quiet, batch_size=args.batch_size)
    roots = roots_of(args)
    return [Job(step, dataset, model, bug, roots, dict(common, **settings)) for dataset, model, bug in versions]


def launch_and_report(jobs: list, args: argparse.Namespace) -> int:
    """Run the jobs with the chosen launcher, print one status table, and return the exit status.

    A failed job does not stop the others. Exit 1 if any failed for a real bug; a failure from bad
    input (a missing or corrupt file) is a UsageError (exit 2) naming the first such reason.
    """
    from launchers import launch

    outcomes = launch(jobs, args)
    print_outcomes(outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    bugs = [o for o in failed if not o.usage_error]
    if bugs:
        print(f"{len(bugs)} job(s) failed with an error (see the table and logs above)", file=sys.stderr)
        return 1
    if failed:
        more = f" ({len(failed) - 1} more failed job(s) in the table above)" if len(failed) > 1 else ""
        raise UsageError(f"{failed[0].reason}{more}")
    return 0


def print_outcomes(outcomes: list) -> None:
    """One table per step: version, the step's measurements, status (with a failure's reason and log)."""
    from jobs import COLUMNS

    for step in dict.fromkeys(o.job.step for o in outcomes):
        columns = COLUMNS[step]
        widths = [max(6, len(c)) for c in columns]
        print(f"{'version':<28} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths)) + "  status")
        for o in (o for o in outcomes if o.job.step == step):
            cells = " ".join(f"{o.cells.get(c, '')!s:>{w}}" for c, w in zip(columns, widths))
            print(f"{o.job.key:<28} {cells}  {status_text(o)}")
    sys.stdout.flush()


def status_text(outcome) -> str:
    if outcome.status == "skipped":
        return f"skipped ({outcome.note})"
    if outcome.status == "failed":
        reason = outcome.reason.splitlines()[0] if outcome.reason else "failed"
        return f"FAILED: {reason}" + (f" [log: {outcome.log}]" if outcome.log else "")
    return outcome.note or "done"
