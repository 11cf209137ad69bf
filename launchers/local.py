"""The ``local`` launcher: in this process, one job after another, in the order given (dependencies come first):
exactly what the scripts did before there were launchers, and what every other launcher's files are compared to."""

from __future__ import annotations

from tqdm.auto import tqdm

from launchers.base import LaunchSettings
from pipeline.jobs import Job, Outcome
from pipeline.runner import run_job


def run_local(jobs: list[Job], settings: LaunchSettings) -> list[Outcome]:
    return [run_job(job) for job in tqdm(jobs, desc="jobs", unit="job", disable=settings.quiet)]
