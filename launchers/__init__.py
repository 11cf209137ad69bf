"""Launchers: each takes the same list of jobs and runs them, here or on an engine.

A launcher holds no algorithm: it places jobs and collects their outcomes; what a job does is
``pipeline.runner.run_job``. Each is one module and one entry of the registry (``launchers/base.py``: the
registry, the settings, the flags built from it; the built-ins' options in ``options.py``): ``local.py``,
``ray_pool.py``, ``slurm_arrays.py``; ``common.py`` holds what the engines share. Every launcher leaves
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

Ray and submitit are optional (``envs_requirements/requirements-cluster.txt``); each engine's check refuses
it where its engine is missing, before any work starts. This package's face loads no engine (the built-in table
names their code by path): a script reads it for its flags before it imports the pipeline. A launch runs with
``launchers.running.launch_and_report``.
"""

from launchers.base import (
    CLUSTER_REQUIREMENTS,
    LAUNCHERS,
    Launcher,
    LaunchSettings,
    add_launcher_flags,
    launch_settings,
    option,
    register_launcher,
)
from launchers.options import RayOptions, SlurmOptions

#: the built-in launchers, local first (the default); their code is imported when a launch uses it
LAUNCHER_TABLE: tuple[Launcher, ...] = tuple(register_launcher(launcher) for launcher in (
    Launcher("local", "launchers.local:run_local", "in this process, in order (the default)"),
    Launcher("ray", "launchers.ray_pool:run_ray", "a pool of Ray workers, one per device slot (a local cluster, or "
             f"--ray-address; pip install -r {CLUSTER_REQUIREMENTS})", RayOptions, "launchers.ray_pool:check_ray"),
    Launcher("slurm", "launchers.slurm_arrays:run_slurm", "Slurm job arrays whose tasks run several jobs each "
             f"(submitit; pip install -r {CLUSTER_REQUIREMENTS})", SlurmOptions, "launchers.slurm_arrays:check_slurm"),
))

__all__ = ["CLUSTER_REQUIREMENTS", "LAUNCHERS", "LAUNCHER_TABLE", "LaunchSettings", "Launcher", "add_launcher_flags",
           "launch_settings", "option", "register_launcher"]
