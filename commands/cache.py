"""What ``main_cache_test_distances.py`` does once its command line is parsed (the script builds the parser, and its
docstring says what the step is)."""


from __future__ import annotations

import launchers
from launchers.running import launch_and_report
from pipeline import cli, grids


def run(args) -> int:
    launch = launchers.launch_settings(args)
    grid, _ = cli.prepare(args, writable=[args.info_root])
    cli.check_corruption_library(args.shifts)
    versions = grids.trained_versions(grid, args.model_root)
    settings = cli.job_settings(args, attack=cli.attack_settings(args, grid))
    return launch_and_report(cli.make_jobs("cache", versions, args, settings, args.shifts), launch)
