"""What a command line asks to run: the presets, and the grid of versions resolved from ``--datasets``,
``--models``, ``--bugs`` and ``--preset``, every name checked and every pair supported before any work starts.

A grid is in the canonical order whatever order the flags were typed in: datasets and architectures in their
registries' order, faults ascending. An (architecture, fault) pair the architecture cannot carry
(``FaultInjector.unsupported_reason``: fault 1 without a reduced variant, say) is dropped from a preset's grid
with one note, and refused when both were named on the command line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import FaultInjector
from DatasetManager import DATASETS, get_dataset, paper_datasets
from evaluation.fault_validation import dropped_faults, validated_faults
from ModelManager import MODELS, get_model_class
from pipeline.presets import PRESETS, Preset
from storage.layout import FAULT_VALIDATION_CSV, checkpoint_path, version_key
from storage.settings import DEFAULT_OUTPUT
from utils import UsageError, warn


def split_list(values: Sequence[str] | None, flag: str = "") -> list[str] | None:
    """Accept both ``a,b`` and ``a b`` (and a mix) for list-valued flags; a flag given with nothing in it is
    refused (an empty list would otherwise read as "the preset's")."""
    if values is None:
        return None
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items:
        raise UsageError(f"{flag or 'a list flag'} names nothing; name at least one, or leave the flag out for "
                         "the preset's")
    return items


#: ``--bugs validated``: the faults ``main_validate_faults.py`` found killed and not trivial, per architecture
VALIDATED = "validated"


def parse_bug_ids(values: Sequence[str] | None) -> list[int] | None:
    """Fault ids: whole numbers (0 = healthy), or ranges such as ``1-10``; each one a registered fault.
    (``validated`` is read by ``resolve_grid``, which knows where the validation table is.)"""
    items = split_list(values, "--bugs")
    if items is None:
        return None
    bugs: list[int] = []
    for item in (item for item in items if item.lower() != VALIDATED):
        try:
            if "-" in item[1:]:
                low, high = (int(end) for end in item.split("-", 1))
                if high < low:
                    raise UsageError(f"--bugs: {item} is an empty range; use {high}-{low} (the smaller id first)")
                bugs.extend(range(low, high + 1))
            else:
                bugs.append(int(item))
        except ValueError:
            raise UsageError(f"--bugs: {item!r} is not a fault id ({FaultInjector.describe_ids()}, or a range "
                             "like 1-10)") from None
    for bug in bugs:
        try:
            FaultInjector.validate_bug_id(bug)
        except UsageError as exc:
            raise UsageError(f"--bugs: {exc}") from None
    return sorted(set(bugs))


def resolved(preset: Preset) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """A preset's ``(datasets, models, bugs)``, every ``None`` read from its registry now."""
    return (preset.datasets or paper_datasets(), preset.models or tuple(MODELS),
            preset.bugs or (FaultInjector.HEALTHY, *FaultInjector.fault_ids(preset.families)))


@dataclass(frozen=True)
class Grid:
    """The versions a command line asks for, in canonical order."""

    datasets: list[str]
    models: list[str]
    bugs: list[int]
    epochs: int | None = None  # --epochs: every architecture
    preset_epochs: dict[str, int] = field(default_factory=dict)
    max_inputs: int | None = None
    #: ``--bugs validated``: the faults each ``(dataset, model, training epochs)`` keeps (besides healthy and those
    #: named), from ``fault_validation.csv``
    validated: dict[tuple[str, str, int], tuple[int, ...]] | None = None
    named_bugs: tuple[int, ...] = ()

    def versions(self, dataset: str) -> list[tuple[str, int]]:
        """``(model, bug)`` pairs that apply to ``dataset`` and that each architecture can carry, healthy first."""
        unsupported = get_dataset(dataset).unsupported_faults
        return [(model, bug) for bug in self.bugs for model in self.models if bug not in unsupported
                and not FaultInjector.unsupported_reason(bug, get_model_class(model))
                and self._validated(dataset, model, bug)]

    def _validated(self, dataset: str, model: str, bug: int) -> bool:
        return self.validated is None or bug in self.named or \
            bug in self.validated.get((dataset, model, self.training_epochs(dataset, model)), ())

    @property
    def named(self) -> tuple[int, ...]:
        """With ``validated``, the ids named beside it (healthy always): kept for every architecture."""
        return (FaultInjector.HEALTHY, *self.named_bugs)

    def epochs_for(self, model: str) -> int | None:
        return self.epochs or self.preset_epochs.get(model)

    def training_epochs(self, dataset: str, model: str) -> int:
        """The epochs a version of ``model`` on ``dataset`` trains for here (asked for, or the dataset's recipe):
        a fault validated with another recipe says nothing of this one."""
        return self.epochs_for(model) or get_dataset(dataset).training_defaults(model).epochs


def resolve_grid(args: argparse.Namespace) -> Grid:
    """The versions a command line asks for, every name and pair checked before any work starts."""
    preset = PRESETS[args.preset]
    preset_datasets, preset_models, preset_bugs = resolved(preset)
    named_datasets, named_models = split_list(args.datasets, "--datasets"), split_list(args.models, "--models")
    datasets = {get_dataset(name).name for name in (named_datasets or preset_datasets)}
    models = {get_model_class(name).name for name in (named_models or preset_models)}
    named_bugs = parse_bug_ids(args.bugs)
    wants_validated = named_bugs is not None and any(item.lower() == VALIDATED for item in split_list(args.bugs))
    table = validation_table(args, datasets, models) if wants_validated else None
    validated = validated_faults(table) if table is not None else None
    explicit_ids = tuple(named_bugs or ())
    if validated is not None:
        named_bugs = sorted({*explicit_ids, FaultInjector.HEALTHY, *(b for bugs in validated.values() for b in bugs)})
    if named_bugs is not None:
        for dataset in datasets:
            for bug in named_bugs:
                FaultInjector.validate_bug_id(bug, get_dataset(dataset))
    grid = Grid([name for name in DATASETS if name in datasets], [name for name in MODELS if name in models],
                named_bugs if named_bugs is not None else sorted(set(preset_bugs)), getattr(args, "epochs", None),
                dict(preset.epochs), getattr(args, "max_inputs", None) or preset.max_inputs, validated, explicit_ids)
    check_pairs(grid, explicit=named_models is not None and named_bugs is not None and validated is None)
    if validated is not None:
        note_unvalidated(grid)
        for line in dropped_faults(table, {(d, m, grid.training_epochs(d, m)) for d in grid.datasets
                                           for m in grid.models}):
            warn(line)
    return grid


def validation_table(args: argparse.Namespace, datasets, models) -> Path:
    """``--bugs validated``'s table: ``fault_validation.csv`` of ``--output`` (or, for a script writing elsewhere,
    the default output), whose killed, non-trivial faults of each ``(dataset, model, epochs)`` the grid keeps;
    without one, a UsageError naming the command that makes it."""
    folders = dict.fromkeys(p for p in (getattr(args, "output", None), DEFAULT_OUTPUT) if p)
    found = next((Path(f) / FAULT_VALIDATION_CSV for f in folders if (Path(f) / FAULT_VALIDATION_CSV).is_file()), None)
    if found is None:
        where = " or ".join(str(Path(f) / FAULT_VALIDATION_CSV) for f in folders)
        raise UsageError(f"--bugs validated needs {where}; make it with: python main_validate_faults.py --datasets "
                         f"{' '.join(sorted(datasets))} --models {' '.join(sorted(models))}")
    if getattr(args, "output", None) and found.parent != Path(args.output):
        print(f"note: --bugs validated reads {found}", file=sys.stderr)
    return found


def note_unvalidated(grid: Grid) -> None:
    """One note naming the architectures the validation table does not cover at the epochs they train for here
    (they keep only healthy and the ids named beside ``validated``)."""
    missing = [f"{model} on {dataset} at {grid.training_epochs(dataset, model)} epochs" for dataset in grid.datasets
               for model in grid.models if (dataset, model, grid.training_epochs(dataset, model)) not in grid.validated]
    if missing:
        print(f"note: the fault validation does not cover {', '.join(missing)}: only healthy and the ids named beside "
              "'validated' run there", file=sys.stderr)


def check_pairs(grid: Grid, explicit: bool) -> None:
    """Refuse an (architecture, fault) pair an architecture cannot carry when both were named on the command line
    (``explicit``); otherwise say in one note which pairs the grid drops, and why."""
    unsupported = {}
    for model in grid.models:
        for bug in grid.bugs:
            reason = FaultInjector.unsupported_reason(bug, get_model_class(model))
            if reason:
                unsupported[model, bug] = reason
    if not unsupported:
        return
    if explicit:
        (model, bug), reason = next(iter(unsupported.items()))
        raise UsageError(f"--models {model} --bugs {bug}: {model} cannot carry fault {bug} "
                         f"({FaultInjector.fault_name(bug)}): {reason}; leave that pair out")
    pairs = "; ".join(f"{model} x fault {bug}, as {reason}" for (model, bug), reason in unsupported.items())
    print(f"note: dropping {len(unsupported)} (architecture, fault) pair(s) the architecture cannot carry: {pairs}",
          file=sys.stderr)


def trained_versions(grid: Grid, model_root) -> list[tuple[str, str, int]]:
    """The grid's ``(dataset, model, bug)`` versions whose checkpoint exists.

    Missing ones are listed on stderr and skipped (the paper's release lacks a few); if none of the
    requested versions exists, that is a UsageError.
    """
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
