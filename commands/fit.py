"""What ``main_train_DeepFailGuard.py`` does once its command line is parsed (the script builds the parser, and its
docstring says what the step is)."""


from __future__ import annotations

import FaultInjector
import launchers
from launchers.running import launch_and_report
from pipeline import cli, grids


def run(args) -> int:
    launch = launchers.launch_settings(args)
    grid, _ = cli.prepare(args, writable=[args.info_root, args.output])
    cli.check_corruption_library(args.fit_shifts)
    # one failure model per checkpoint: faults 10-12 reuse the healthy one
    trained = grids.trained_versions(grid, args.model_root)
    versions = list(dict.fromkeys((d, m, FaultInjector.checkpoint_fault(b)) for d, m, b in trained))
    settings = cli.job_settings(args, attack=cli.attack_settings(args, grid))
    return launch_and_report(cli.make_jobs("fit", versions, args, settings), launch)
