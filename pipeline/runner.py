"""Running one job in this process: its thread count, its version's lock, its step. Every launcher calls
:func:`run_job` (in the driver, or in an engine's worker); a UsageError is a failed outcome, not an exception."""

from __future__ import annotations

import contextlib
import os
import time

import torch

import FaultInjector
from pipeline.attack_steps import run_cache, run_fit
from pipeline.jobs import FAILED, Job, Outcome
from pipeline.training_steps import run_train
from storage import layout
from storage.shifts import NO_SHIFT
from utils import UsageError

#: the per-version lock files live in this folder of the model root (train) and the info root (fit, cache)
LOCK_FOLDER = ".locks"
#: what runs each step
RUNNERS = {"train": run_train, "derive": run_train, "fit": run_fit, "cache": run_cache}


def run_job(job: Job) -> Outcome:
    """Run one job in this process, with its thread count, under its version's lock; a UsageError becomes a
    failed outcome."""
    started = time.perf_counter()
    try:
        cpus = os.cpu_count() or 1
        if job.settings.threads > cpus:
            raise UsageError(f"--threads {job.settings.threads}: the machine running {job.name} has {cpus} CPUs")
        torch.set_num_threads(job.settings.threads)
        with version_lock(job):
            outcome = RUNNERS[job.step](job)
    except UsageError as exc:
        outcome = Outcome(job, FAILED, reason=str(exc), usage_error=True)
    outcome.seconds = time.perf_counter() - started
    return outcome


@contextlib.contextmanager
def version_lock(job: Job):
    """Hold the version's lock while its step runs, so two launches over the same roots never work on the
    same version at once: the second waits, then finds the work fresh and skips it.

    The lock file lives beside what the step writes (``{root}/.locks/``); ``filelock`` is optional: without
    it (the laptop install) the step runs unlocked, as one launch at a time needs no lock.
    """
    try:
        from filelock import FileLock  # deferred: optional (the cluster requirements), the laptop runs unlocked
    except ImportError:
        yield
        return
    root = job.roots.model if job.step in ("train", "derive") else job.roots.info
    folder = os.path.join(root, LOCK_FOLDER)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write to {root}: {exc.strerror or exc}; choose a writable folder") from exc
    # train and derive of one architecture share the healthy checkpoint: one lock for both
    bug = FaultInjector.checkpoint_fault(job.bug) if job.step in ("train", "derive") else job.bug
    name = f"{job.step if job.step in ('fit', 'cache') else 'train'}_{layout.version_key(job.model, job.dataset, bug)}"
    name += f"_{layout.shift_folder(job.shift)}" if job.shift != NO_SHIFT else ""
    with FileLock(os.path.join(folder, f"{name}.lock")):
        yield
