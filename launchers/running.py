"""Running a launch: the jobs handed to the launcher the settings name, and the status table and exit status of
what they did."""

from __future__ import annotations

import sys

from launchers.base import LAUNCHERS, LaunchSettings
from pipeline.jobs import Job, Outcome, print_outcomes
from utils import UsageError, resolve


def launch(jobs: list[Job], settings: LaunchSettings | None = None) -> list[Outcome]:
    """Run ``jobs`` with the launcher ``settings.launcher`` names (default: ``local``); outcomes in the order of
    ``jobs``."""
    settings = settings or LaunchSettings()
    return resolve(LAUNCHERS.get_class(settings.launcher).run)(jobs, settings)


def launch_and_report(jobs: list[Job], settings: LaunchSettings, failures_only: bool = False) -> int:
    """Run the jobs with the chosen launcher, print one status table (of the failed jobs only, with
    ``failures_only``: hundreds of trainings make a table that says nothing), and return the exit status.

    A failed job does not stop the others. Exit 1 if any failed for a real bug; a failure from bad
    input (a missing or corrupt file) is a UsageError (exit 2) naming the first such reason.
    """
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
