"""What ``main_test_DeepFailGuard_from_cached.py`` does once its command line is parsed (the script builds the
parser, and its docstring says what the step is)."""


from __future__ import annotations

import sys

import evaluation
from evaluation import paper, selective
from pipeline import cli
from storage import files, layout
from storage.settings import AttackSettings, mode_flag
from storage.shifts import NO_SHIFT
from utils import UsageError


def run(args) -> int:
    grid, _ = cli.prepare(args, writable=[args.output])
    with files.folder_lock(args.output, "an evaluation (main_test_DeepFailGuard_from_cached.py)"):
        return evaluate(args, grid)


def evaluate(args, grid) -> int:
    published = None
    if paper.configurations_mode(args) == "paper":
        published = paper.select_published(paper.read_published(args.paper_results), grid)
        needed = paper.versions_needed(published)
        for dataset in grid.datasets:
            if dataset not in needed:
                paper.note(f"{dataset}: the paper published no configuration of it")
    if published is not None and args.shifts != (NO_SHIFT,):
        raise UsageError("--configurations paper compares the clean test set with the paper's figures; leave out "
                         "--shifts (or evaluate the shifts with --configurations grid)")
    failure_model = AttackSettings(distance=args.distance, fit_shifts=args.fit_shifts).failure_model
    by_shift, bugs_by_dataset = {}, {}
    for shift in args.shifts:
        records_by_dataset, truths_by_dataset = {}, {}
        for dataset in grid.datasets:
            versions = grid.versions(dataset)
            bugs_by_dataset[dataset] = sorted({bug for _, bug in versions})
            if published is not None:
                if dataset not in needed:
                    continue
                versions = needed[dataset]
            records, truths_by_dataset[dataset], missing = evaluation.load_cached_versions(
                args.info_root, args.model_root, dataset, versions, args.distance, shift, failure_model)
            for record in records.values():
                record.module.posterior_rule = paper.posterior_rule(args.posterior)
            if missing:
                under = "" if shift == NO_SHIFT else f" (under {shift})"
                print(f"note: {dataset}: no {args.distance.mode} test cache{under} for {len(missing)} version(s): "
                      f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}", file=sys.stderr)
            records_by_dataset[dataset] = records
        by_shift[shift] = records_by_dataset, truths_by_dataset
    # a shift asked for that no version has a cache of is refused, alone or beside others: its rows would be missing
    empty = [shift for shift, (records_by_dataset, _) in by_shift.items() if not any(records_by_dataset.values())]
    if published is None and empty:
        mode, shift = args.distance.mode, empty[0]
        example = layout.cache_path(args.info_root, grid.models[0], grid.datasets[0], 0, "distances", mode,
                                    shift=shift)
        which = "the clean test set (none)" if shift == NO_SHIFT else f"the test set under {shift}"
        raise UsageError(f"no {mode} test cache of {which} for any requested version (e.g. {example}); run "
                         f"main_cache_test_distances.py{mode_flag(mode)} --shifts {shift} with the same "
                         "--datasets/--models/--bugs first")
    records_by_dataset, truths_by_dataset = next(iter(by_shift.values()))
    if published is not None:
        paper.evaluate_and_compare(published, records_by_dataset, truths_by_dataset, args.output, args.posterior,
                                   progress=not args.quiet)
        return 0
    evaluation.evaluate_and_report(records_by_dataset, truths_by_dataset, grid.models, bugs_by_dataset, args.output,
                                  progress=not args.quiet, abstention=selective.from_args(args), by_shift=by_shift)
    return 0
