"""What ``main_validate_faults.py`` does once its command line is parsed (the script builds the parser, and its
docstring says what the step is)."""


from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import FaultInjector
import launchers
import ModelManager
from evaluation import fault_validation as fv
from launchers.running import launch_and_report
from pipeline import cli
from pipeline.grids import parse_bug_ids
from pipeline.jobs import Job, step_of
from storage import layout
from storage.metadata import read_metadata
from storage.settings import TrainSettings
from utils import UsageError, warn


class Validation:
    """One command line's validation: its grid, seeds and settings, the jobs that train a sample, and the
    accuracies they measured."""

    def __init__(self, args: argparse.Namespace, grid):
        self.args, self.grid = args, grid
        self.seeds = fv.seed_list(args.seeds, args.seed)
        self.launch = launchers.launch_settings(args)
        self.faults = {(dataset, model): [bug for m, bug in grid.versions(dataset) if m == model and bug]
                       for dataset in grid.datasets for model in grid.models}

    def training(self, model: str, seed: int, value: float | None = None) -> TrainSettings:
        a = self.args
        return TrainSettings(epochs=self.grid.epochs_for(model), lr=a.lr, batch_size=a.batch_size, seed=seed,
                             image_size=a.image_size, amp=a.amp, fault_parameter=value)

    def root(self, seed: int, search: str | None = None) -> str:
        return layout.seed_model_root(self.args.model_root, seed, self.args.seed, search)

    def jobs(self, versions, search: str | None = None, value: float | None = None) -> list[Job]:
        """Each ``(dataset, model, bug)`` at every seed, in the order given (healthy first)."""
        roots = cli.roots_of(self.args)
        return [Job(step_of(bug), dataset, model, bug, replace(roots, model=self.root(seed, search)),
                    cli.job_settings(self.args, training=self.training(model, seed, value)))
                for dataset, model, bug in versions for seed in self.seeds]

    def run(self, jobs: list[Job]) -> int:
        """Launch, report the failed jobs; the exit status (a failure from bad input is a UsageError)."""
        return launch_and_report(jobs, self.launch, failures_only=True)

    def accuracies(self, dataset: str, model: str, bug: int, search: str | None = None,
                   value: float | None = None) -> list[float] | None:
        """The test accuracy of the version at every seed, or None while a seed lacks one trained as asked."""
        found = []
        for seed in self.seeds:
            root = self.root(seed, search)
            if ModelManager.training_status(root, model, dataset, bug, self.training(model, seed, value)) is not None:
                return None
            found.append(float(read_metadata(layout.metadata_path(root, model, dataset, bug))["test_acc"]))
        return found

    def num_classes(self, dataset: str, model: str) -> int:
        return int(read_metadata(layout.metadata_path(self.root(self.seeds[0]), model, dataset, 0))["num_classes"])


def run(args) -> int:
    grid, _ = cli.prepare(args, writable=[args.model_root, args.output])
    validation = Validation(args, grid)
    too_few = fv.seeds_warning(len(validation.seeds))
    if too_few:
        warn(too_few)
    searched = searched_faults(args.search, validation)
    versions = [(dataset, model, bug) for (dataset, model), bugs in validation.faults.items() for bug in [0, *bugs]]
    status = validation.run(validation.jobs(versions))
    rows, incomplete = [], []
    for (dataset, model), bugs in validation.faults.items():
        healthy = validation.accuracies(dataset, model, 0)
        for bug in bugs:
            faulty = validation.accuracies(dataset, model, bug) if healthy else None
            if faulty is None:
                incomplete.append(layout.version_key(model, dataset, bug))
                continue
            rows.append(fv.summary(dataset, model, bug, healthy, faulty, validation.num_classes(dataset, model),
                                   grid.training_epochs(dataset, model), FaultInjector.parameter_value(bug)))
    path = layout.result_path(args.output, layout.FAULT_VALIDATION_CSV)
    if rows:
        table = fv.merge_rows(path, rows)
        print_table(table[table.set_index(list(fv.KEY)).index.isin([tuple(r[k] for k in fv.KEY) for r in rows])])
        print(f"wrote {path} ({len(rows)} fault(s) at {len(validation.seeds)} seeds)")
    if incomplete:
        print(f"note: {len(incomplete)} version(s) lack a seed, so they have no row yet (rerun to resume): "
              f"{', '.join(incomplete[:6])}{' ...' if len(incomplete) > 6 else ''}", file=sys.stderr)
        status = status or 1
    if searched:
        status = search(validation, searched, {(r["dataset"], r["model"], r["bug"]): r for r in rows}) or status
    return status


def searched_faults(requested: list[str] | None, validation: Validation) -> list[int]:
    """The faults ``--search`` names (every parametric fault of the grid when it names none), each parametric
    and in the grid, else a UsageError before any training."""
    if requested is None:
        return []
    in_grid = sorted({bug for bugs in validation.faults.values() for bug in bugs})

    bugs = parse_bug_ids(requested) if requested else [b for b in in_grid if FaultInjector.FAULTS[b].parameter]
    for bug in bugs:
        if not bug or FaultInjector.FAULTS[bug].parameter is None:
            raise UsageError(f"--search {bug}: fault {bug} ({FaultInjector.fault_name(bug)}) has no parameter to "
                             "search; parametric faults: " + ", ".join(
                                 str(b) for b in FaultInjector.fault_ids() if FaultInjector.FAULTS[b].parameter))
        if bug not in in_grid:
            raise UsageError(f"--search {bug}: fault {bug} is not in the grid; add it to --bugs")
    if not bugs:
        raise UsageError("--search: the grid has no parametric fault; add one to --bugs")
    return bugs


def search(validation: Validation, bugs: list[int], defaults: dict) -> int:
    """Bisect each fault's parameter for the weakest value still killed (``fault_validation.bisect``, with
    ``--search-steps`` halvings), starting from the validation at its default value; write ``fault_search.csv``."""
    status, rows = 0, []
    for (dataset, model), faults in validation.faults.items():
        healthy = validation.accuracies(dataset, model, 0)
        for bug in (b for b in bugs if b in faults):
            default = defaults.get((dataset, model, bug))
            if default is None or healthy is None:
                print(f"note: no search for fault {bug} on {model}: its validation is incomplete", file=sys.stderr)
                continue
            found, failed = search_one(validation, (dataset, model, bug), healthy, default)
            rows, status = rows + found, status or failed
    if rows:
        path = layout.result_path(validation.args.output, layout.FAULT_SEARCH_CSV)
        table = fv.merge_rows(path, rows, fv.SEARCH_COLUMNS, (*fv.KEY, "value"))
        print(table.to_string(index=False, columns=["model", "bug", "parameter", "value", "faulty_mean", "p_value",
                                                     "effect_size", "killed", "weakest_killing"]))
        print(f"wrote {path}")
    return status


def search_one(validation: Validation, version: tuple[str, str, int], healthy: list[float],
               default: dict) -> tuple[list[dict], int]:
    """One fault's bisection: the rows of every value measured (the default's from the validation), the weakest
    killing one marked, and the exit status of its trainings."""
    dataset, model, bug = version
    parameter = FaultInjector.FAULTS[bug].parameter
    points, status = {parameter.default: default}, 0

    def killed_at(value: float) -> bool | None:
        nonlocal status
        label = fv.search_label(bug, value)
        status = validation.run(validation.jobs([version], label, value)) or status
        faulty = validation.accuracies(dataset, model, bug, label, value)
        if faulty is None:
            return None
        points[value] = fv.summary(dataset, model, bug, healthy, faulty, validation.num_classes(dataset, model),
                                   validation.grid.training_epochs(dataset, model), value)
        return points[value]["killed"]

    weakest = fv.bisect(parameter, default["killed"], killed_at, validation.args.search_steps)
    return [{**row, "weakest_killing": value == weakest} for value, row in points.items()], status


def print_table(table) -> None:
    shown = table.assign(healthy=table["healthy_mean"].map("{:.4f}".format),
                         faulty=table["faulty_mean"].map("{:.4f}".format), p=table["p_value"].map("{:.4f}".format),
                         A12=table["effect_size"].map("{:.2f}".format))
    print(shown.to_string(index=False, columns=["dataset", "model", "bug", "fault", "seeds", "healthy", "faulty", "p",
                                                "A12", "killed", "trivial"]))
