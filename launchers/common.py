"""What the engines share: their check that the engine is installed, the failed outcome, a job's place among the
jobs it needs, and how an engine's worker runs a job (``run_guarded``)."""

from __future__ import annotations

import importlib
import os
import socket
import traceback
from pathlib import Path

from launchers.base import CLUSTER_REQUIREMENTS
from pipeline.jobs import FAILED, Job, Outcome
from utils import UsageError

REPO = Path(__file__).resolve().parents[1]


def require_module(module: str, launcher: str) -> None:
    """Refuse (one line, exit 2) a launcher whose engine's Python package cannot be imported here."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"--launcher {launcher} needs the Python package {module!r} ({exc}); install it with "
                         f"`pip install -r {CLUSTER_REQUIREMENTS}`") from None


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def failed(job: Job, reason: str, log: str = "") -> Outcome:
    return Outcome(job, FAILED, reason=one_line(reason), log=log)


def upstream(jobs: list[Job], index: int) -> list[int]:
    """Indices of the earlier jobs of this launch that job ``index`` needs."""
    return [i for i in range(index) if jobs[index].depends_on(jobs[i])]


def worker_pythonpath() -> str:
    """The repository first, then whatever the driver had: the workers import our modules by name."""
    parts = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    return os.pathsep.join(parts)


def worker_identity() -> str:
    """Where this process runs: host, process id, and the GPUs it may see (when an engine restricted them)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{socket.gethostname()} pid {os.getpid()}" + (f" GPUs {devices}" if devices is not None else "")


def run_guarded(job: Job) -> Outcome:
    """``run_job`` in an engine's worker: an exception the job raises (a bug; bad input is already a failed
    outcome) becomes a failed outcome carrying the traceback, so the worker lives on to run the next job."""
    from pipeline.runner import run_job  # deferred: the steps load torch; an engine's worker comes up without it

    try:
        outcome = run_job(job)
    except Exception as exc:  # noqa: BLE001 - any bug of one job must not take the other jobs down
        outcome = failed(job, f"{type(exc).__name__}: {exc}")
        outcome.trace = traceback.format_exc()
    outcome.worker = worker_identity()
    return outcome
