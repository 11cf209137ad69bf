"""Launchers: each takes the same list of jobs and runs them, here or on an engine.

A launcher holds no algorithm: it places jobs and collects their outcomes; what a job does is
``jobs.run_job``. Every launcher leaves the same files as ``local``.

- ``local``: in this process, one job after another, in the order given (dependencies come first).
"""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

from jobs import Job, Outcome, run_job


def run_local(jobs: list[Job], options: argparse.Namespace | None = None) -> list[Outcome]:
    """In process, in order: exactly what the scripts did before there were launchers."""
    quiet = bool(getattr(options, "quiet", False))
    return [run_job(job) for job in tqdm(jobs, desc="jobs", unit="job", disable=quiet)]


LAUNCHERS = {"local": run_local}


def launch(jobs: list[Job], options: argparse.Namespace) -> list[Outcome]:
    """Run ``jobs`` with the launcher ``options.launcher`` names; outcomes in the order of ``jobs``."""
    return LAUNCHERS[getattr(options, "launcher", "local") or "local"](jobs, options)
