"""What ``main_train_model.py`` does once its command line is parsed (the script builds the parser, and its
docstring says what the step is)."""


from __future__ import annotations

from dataclasses import replace

import FaultInjector
import launchers
from launchers.running import launch_and_report
from pipeline import cli
from pipeline.jobs import step_of
from storage.settings import TrainSettings


def run(args) -> int:
    launch = launchers.launch_settings(args)
    grid, _ = cli.prepare(args, writable=[args.model_root])  # bad requests refused before hours of work
    versions = [(dataset, model, bug) for dataset in grid.datasets for model, bug in grid.versions(dataset)]
    if args.mode == "train":
        versions = with_healthy_versions(versions)
    training = TrainSettings(lr=args.lr, batch_size=args.batch_size, seed=args.seed, image_size=args.image_size,
                             amp=args.amp)
    jobs = []
    for dataset, model, bug in versions:
        settings = cli.job_settings(args, mode=args.mode, training=replace(training, epochs=grid.epochs_for(model)))
        jobs += cli.make_jobs(step_of(bug) if args.mode == "train" else "train", [(dataset, model, bug)], args,
                              settings)
    return launch_and_report(jobs, launch)


def with_healthy_versions(versions: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The versions, each derived one (faults 10-12) preceded by the healthy version it is derived from."""
    wanted = []
    for dataset, model, bug in versions:
        if FaultInjector.is_test_data_only(bug):
            wanted.append((dataset, model, FaultInjector.HEALTHY))
        wanted.append((dataset, model, bug))
    datasets = list(dict.fromkeys(dataset for dataset, _, _ in versions))
    return sorted(dict.fromkeys(wanted), key=lambda v: (datasets.index(v[0]), v[2] != FaultInjector.HEALTHY))
