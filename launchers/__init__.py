"""Launchers: each takes the same list of jobs and runs them, here or on an engine.

A launcher holds no algorithm: it places jobs and collects their outcomes; what a job does is
``jobs.run_job``. ``local`` is here; the engines are ``launchers/ray_pool.py`` and
``launchers/slurm_arrays.py``, and ``launchers/common.py`` holds what they share. Every launcher leaves
the same files as ``local``. The engines pay a worker's start-up (an interpreter, the torch import, a
CUDA context, the dataset) once per worker, not once per job.

- ``local``: in this process, one job after another, in the order given (dependencies come first).
- ``ray``: a pool of long-lived Ray actors (``JobWorker``), one per device slot: as many as the cluster
  has room for at ``--cpus-per-job`` and ``--gpus-per-job`` each (fractions allowed), never more than
  there are jobs. Each actor holds its CPUs and GPUs for the whole launch (Ray sets its
  ``CUDA_VISIBLE_DEVICES`` to the GPUs it was given, which the default device ``auto`` then uses) and
  keeps its imports, CUDA context and dataset cache from one job to the next. Jobs go to free actors in
  the order given, a job only after the jobs of this launch it needs (``Job.depends_on``: a derived version
  needs its healthy checkpoint). An actor that dies mid-job (killed, out of memory, node lost) is restarted
  by Ray and the job retried on it, up to ``RAY_MAX_RETRIES`` times (every write is atomic and every step
  skips finished work, so a rerun is safe); an exception raised by a job is a failure, not retried, and
  the actor it raised in is replaced (the exception may have left its CUDA context unusable).
  ``--ray-address`` joins a running cluster, otherwise a local one is started for the launch and shut
  down after it. The workers import this repository's modules from ``PYTHONPATH`` (set to the
  repository's folder for them): on a multi-node cluster the repository and the four roots must be on a
  filesystem every node mounts at the same path; nothing is uploaded.
- ``slurm``: submitit job arrays whose elements (array tasks) each run several jobs in one process, in
  order (``--slurm-jobs-per-task``; by default a training alone, other jobs eight to a task, a healthy
  training together with the derived versions that need it). A job that fails is reported for itself
  and the others of its task still run. Jobs that need a job of another task go to a later array,
  which waits for the arrays it needs (``afterany``: it runs even if some of them failed, and its jobs then
  fail fast on their missing inputs rather than wait forever). The driver waits with a progress bar,
  or with ``--no-wait`` submits, prints the job ids and returns. Logs: ``{output}/logs/slurm/``. The
  repository and the roots must be on a filesystem shared with the compute nodes, and the nodes must
  run the same Python environment (submitit starts ``sys.executable`` there).

Ray and submitit are optional (``envs_requirements/requirements-cluster.txt``); ``check_engine``
refuses a launcher whose engine is missing before any work starts.
"""

from __future__ import annotations

import importlib
import shutil

from tqdm.auto import tqdm

from launchers.ray_pool import run_ray
from launchers.slurm_arrays import AUTO_JOBS_PER_TASK, jobs_per_task_flag, parse_sbatch_option, run_slurm
from pipeline.jobs import Job, Outcome, run_job
from storage.settings import DEFAULT_LAUNCH, LaunchSettings
from utils import UsageError

__all__ = ["AUTO_JOBS_PER_TASK", "CLUSTER_REQUIREMENTS", "LAUNCHERS", "check_engine", "jobs_per_task_flag", "launch",
           "parse_sbatch_option"]

CLUSTER_REQUIREMENTS = "envs_requirements/requirements-cluster.txt"


def run_local(jobs: list[Job], settings: LaunchSettings = DEFAULT_LAUNCH) -> list[Outcome]:
    """In process, in order: exactly what the scripts did before there were launchers."""
    return [run_job(job) for job in tqdm(jobs, desc="jobs", unit="job", disable=settings.quiet)]


def check_engine(launcher: str) -> None:
    """Refuse (UsageError: one line, exit 2) a launcher whose engine cannot be used here."""
    if launcher == "local":
        return
    module = "ray" if launcher == "ray" else "submitit"
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"--launcher {launcher} needs the Python package {module!r} ({exc}); install it with "
                         f"`pip install -r {CLUSTER_REQUIREMENTS}`") from None
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm needs the Slurm client (`sbatch` not found on PATH); run on a Slurm "
                         "login node, or use --launcher local or ray")


LAUNCHERS = {"local": run_local, "ray": run_ray, "slurm": run_slurm}


def launch(jobs: list[Job], settings: LaunchSettings = DEFAULT_LAUNCH) -> list[Outcome]:
    """Run ``jobs`` with the launcher ``settings.launcher`` names; outcomes in the order of ``jobs``."""
    return LAUNCHERS[settings.launcher](jobs, settings)
