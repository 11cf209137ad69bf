"""Launchers: each takes the same list of jobs and runs them, here or on an engine.

A launcher holds no algorithm: it places jobs and collects their outcomes; what a job does is
``jobs.run_job``. Every launcher leaves the same files as ``local``.

- ``local``: in this process, one job after another, in the order given (dependencies come first).
- ``ray``: one Ray task per job (``--cpus-per-job``, ``--gpus-per-job``; fractions allowed). A job that
  needs another job of the same launch (``Job.depends_on``: a derived version needs its healthy
  checkpoint) gets that job's result as an argument, so Ray starts it only after. A worker that dies
  mid-job is retried (``RAY_MAX_RETRIES``; every write is atomic and every step skips finished work,
  so a rerun is safe); an exception raised by a job is a failure, not retried. ``--ray-address`` joins
  a running cluster, otherwise a local one is started for the launch and shut down after it. Inside a
  job with GPUs, Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned, which the default device
  (``auto``) then uses. The workers import this repository's modules from ``PYTHONPATH`` (set to the
  repository's folder for them): on a multi-node cluster the repository and the four roots must be on
  a filesystem every node mounts at the same path; nothing is uploaded.
- ``slurm``: one submitit job array per step (``--slurm-*`` flags). A later step's array waits for the
  arrays of the steps it needs (``afterany``: it runs even if some of them failed, and its jobs then
  fail fast on their missing inputs rather than wait forever). The driver waits with a progress bar,
  or with ``--no-wait`` submits, prints the job ids and returns. Logs: ``{output}/logs/slurm/``. The
  repository and the roots must be on a filesystem shared with the compute nodes, and the nodes must
  run the same Python environment (submitit starts ``sys.executable`` there).

Ray and submitit are optional (``envs_requirements/requirements-cluster.txt``); ``check_engine``
refuses a launcher whose engine is missing before any work starts.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from jobs import FAILED, Job, Outcome, run_job
from layout import log_folder
from utils import UsageError

REPO = Path(__file__).resolve().parent
CLUSTER_REQUIREMENTS = "envs_requirements/requirements-cluster.txt"
#: how often Ray reruns a job whose worker process died (killed, out of memory, node lost)
RAY_MAX_RETRIES = 3
#: seconds a Ray address has to accept a connection before the launch is refused
RAY_CONNECT_TIMEOUT_S = 10.0
SUBMITTED = "submitted"  # a Slurm job submitted with --no-wait: its outcome is not known here
#: seconds between two looks at the Slurm queue while waiting
SLURM_POLL_S = 1.0
SLURM_QUEUE_CHECK_S = 20.0


def run_local(jobs: list[Job], options: argparse.Namespace | None = None) -> list[Outcome]:
    """In process, in order: exactly what the scripts did before there were launchers."""
    quiet = bool(getattr(options, "quiet", False))
    return [run_job(job) for job in tqdm(jobs, desc="jobs", unit="job", disable=quiet)]


# ---------------------------------------------------------------------------------------------
# shared by the engines
# ---------------------------------------------------------------------------------------------

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


def _option(options, name: str, default=None):
    value = getattr(options, name, None) if options is not None else None
    return default if value is None else value


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def _failed(job: Job, reason: str, log: str = "") -> Outcome:
    return Outcome(job, FAILED, reason=_one_line(reason), log=log)


def _upstream(jobs: list[Job], index: int) -> list[int]:
    """Indices of the earlier jobs of this launch that job ``index`` needs."""
    return [i for i in range(index) if jobs[index].depends_on(jobs[i])]


def _worker_pythonpath() -> str:
    """The repository first, then whatever the driver had: the workers import our modules by name."""
    parts = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    return os.pathsep.join(parts)


# ---------------------------------------------------------------------------------------------
# ray
# ---------------------------------------------------------------------------------------------

def default_gpus_per_job() -> float:
    """One GPU per job where this machine has CUDA, none elsewhere."""
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def _run_after(job: Job, *upstream) -> Outcome:
    """The Ray task: ``upstream`` (the results of the jobs it needs) only orders it after them."""
    return run_job(job)


def run_ray(jobs: list[Job], options: argparse.Namespace | None = None) -> list[Outcome]:
    """One Ray task per job on a running cluster (``--ray-address``) or a local one started here."""
    import ray

    if not jobs:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        _connect_ray(ray, _option(options, "ray_address"))
    try:
        return _run_ray_tasks(ray, jobs, options)
    finally:
        if started_here:
            ray.shutdown()


def _connect_ray(ray, address: str | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = dict(runtime_env={"env_vars": {"PYTHONPATH": _worker_pythonpath()}}, log_to_driver=False,
                    logging_level=logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
    try:
        if address:
            ray.init(address=address, **settings)
        else:  # a cluster of this machine alone, for this launch
            ray.init(include_dashboard=False, **settings)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise UsageError(f"cannot connect to {where}: {_one_line(exc)}; check --ray-address "
                         "(`ray status` on the head node prints it)") from None


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse an address where nothing answers, at once: ``ray.init`` would retry it for minutes.

    ``auto`` (a cluster on this machine, found by Ray) is left to Ray; ``host:port`` and ``ray://host:port``
    must accept a TCP connection within ``timeout`` seconds.
    """
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379); `ray status` on the "
                         "head node prints the address")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"--ray-address {address}: nothing answers there ({reason}); start the cluster "
                         "(`ray start --head` on its head node) or check the address (`ray status` prints it)"
                         ) from None


def _run_ray_tasks(ray, jobs: list[Job], options) -> list[Outcome]:
    cpus = float(_option(options, "cpus_per_job", jobs[0].settings.threads))
    gpus = _option(options, "gpus_per_job")
    gpus = default_gpus_per_job() if gpus is None else float(gpus)
    settings = dict(num_cpus=cpus, num_gpus=gpus, max_retries=RAY_MAX_RETRIES, retry_exceptions=False)
    if gpus > 0:  # a fresh process per GPU job: CUDA binds a process to the GPUs it first saw
        settings["max_calls"] = 1
    task = ray.remote(**settings)(_run_after)
    refs = []
    for index, job in enumerate(jobs):
        refs.append(task.remote(job, *(refs[i] for i in _upstream(jobs, index))))
    position = {ref: index for index, ref in enumerate(refs)}
    outcomes: list[Outcome | None] = [None] * len(jobs)
    errors: dict[int, BaseException] = {}
    pending = list(refs)
    with tqdm(total=len(jobs), desc="jobs (ray)", unit="job", disable=bool(_option(options, "quiet"))) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                index = position[ref]
                try:
                    outcomes[index] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    errors[index] = exc
                bar.update(1)
    for index in sorted(errors):
        outcomes[index] = _ray_failure(jobs, index, errors, ray)
    return outcomes


def _ray_failure(jobs, index: int, errors: dict, ray) -> Outcome:
    """A task that raised or whose worker died after every retry: one line, the full text in a log file."""
    job, error = jobs[index], errors[index]
    failed_upstream = [jobs[i] for i in _upstream(jobs, index) if i in errors]  # Ray passed their error on
    if failed_upstream:
        return _failed(job, f"not run: {failed_upstream[0].name} failed")
    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        cause = error.cause
        reason = f"{type(cause).__name__}: {cause}"
    elif isinstance(error, ray.exceptions.WorkerCrashedError):
        reason = f"its Ray worker died {RAY_MAX_RETRIES + 1} times (killed or out of memory?)"
    else:
        reason = f"{type(error).__name__}: {error}"
    log = log_folder(job.roots.output, "ray") / f"{job.step}_{job.key}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{job.name}\n\n{error}\n")
    except OSError:
        log = ""
    return _failed(job, reason, str(log))


# ---------------------------------------------------------------------------------------------
# slurm
# ---------------------------------------------------------------------------------------------

def parse_sbatch_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (e.g. ``account=abc``, ``qos=high``): an sbatch option without its dashes."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option, e.g. account=myproject), got {text!r}")
    return key.replace("-", "_"), value


def run_slurm(jobs: list[Job], options: argparse.Namespace | None = None) -> list[Outcome]:
    """One submitit job array per step; later steps' arrays start after the arrays they need."""
    import submitit

    if not jobs:
        return []
    steps = list(dict.fromkeys(job.step for job in jobs))
    folder = log_folder(Path(jobs[0].roots.output).resolve(), "slurm") / "%j"
    handles: list = [None] * len(jobs)
    array_of_step: dict[str, str] = {}
    for step in steps:
        indices = [i for i, job in enumerate(jobs) if job.step == step]
        needs = [array_of_step[s] for s in array_of_step
                 if any(jobs[i].depends_on(other) for i in indices for other in jobs if other.step == s)]
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**_slurm_parameters(step, options, needs, jobs[0].settings.threads))
        try:
            submitted = executor.map_array(run_job, [jobs[i] for i in indices])
        except Exception as exc:  # noqa: BLE001 - sbatch refused the array: its message is what matters
            raise UsageError(f"sbatch refused the {step} array: {_one_line(exc)}") from None
        for i, handle in zip(indices, submitted):
            handles[i] = handle
        array_of_step[step] = submitted[0].job_id.split("_")[0]
    if _option(options, "no_wait", False):
        print("submitted Slurm job array(s): " + ", ".join(f"{step} {job_id}" for step, job_id in
                                                           array_of_step.items()) + f"; logs in {folder.parent}",
              file=sys.stderr)
        return [Outcome(job, SUBMITTED, note=f"submitted: Slurm job {handle.job_id}")
                for job, handle in zip(jobs, handles)]
    try:
        return _wait_slurm(jobs, handles, list(array_of_step.values()), options)
    except KeyboardInterrupt:
        print(f"the Slurm job arrays keep running; stop them with: scancel {' '.join(array_of_step.values())}",
              file=sys.stderr)
        raise


def _slurm_parameters(step: str, options, needs: list[str], threads: int) -> dict:
    extra = dict(_option(options, "slurm_sbatch_option", None) or [])
    if needs:
        after = "afterany:" + ":".join(needs)
        extra["dependency"] = f"{extra['dependency']},{after}" if extra.get("dependency") else after
    parameters = dict(name=f"dfg-{step}", timeout_min=int(_option(options, "slurm_time", 240)),
                      cpus_per_task=int(_option(options, "slurm_cpus_per_job", threads)),
                      slurm_setup=[f"export PYTHONPATH={_worker_pythonpath()}"],
                      slurm_additional_parameters=extra)
    gpus = int(_option(options, "slurm_gpus_per_job", 0))
    if gpus:
        parameters["slurm_gres"] = f"gpu:{gpus}"
    if _option(options, "slurm_partition"):
        parameters["slurm_partition"] = options.slurm_partition
    if _option(options, "slurm_array_parallelism"):
        parameters["slurm_array_parallelism"] = int(options.slurm_array_parallelism)
    return parameters


def _wait_slurm(jobs: list[Job], handles: list, arrays: list[str], options) -> list[Outcome]:
    """Poll until every task has written its result; a task that left the queue without one (time limit,
    cancelled, node failure) is a failure, not a hang. Only the result files and ``squeue`` are read:
    submitit's own ``done()`` asks ``sacct``, which clusters without accounting answer with an error on
    the terminal at every poll, and which never tells such a task from a pending one there."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    missing_since: dict[int, float] = {}
    last_queue_check = time.monotonic()
    with tqdm(total=len(jobs), desc="jobs (slurm)", unit="job", disable=bool(_option(options, "quiet"))) as bar:
        while any(outcome is None for outcome in outcomes):
            for index, handle in enumerate(handles):
                if outcomes[index] is None and handle.paths.result_pickle.exists():
                    outcomes[index] = _slurm_outcome(jobs[index], handle)
                    bar.update(1)
            if all(outcome is not None for outcome in outcomes):
                break
            if time.monotonic() - last_queue_check > SLURM_QUEUE_CHECK_S:
                last_queue_check = time.monotonic()
                queued = _slurm_queue(arrays)
                for index, handle in enumerate(handles):
                    if outcomes[index] is not None or queued is None or handle.job_id in queued:
                        missing_since.pop(index, None)
                        continue
                    first_seen = missing_since.setdefault(index, last_queue_check)
                    if last_queue_check - first_seen >= SLURM_QUEUE_CHECK_S and \
                            not handle.paths.result_pickle.exists():
                        outcomes[index] = _failed(jobs[index], f"Slurm job {handle.job_id} left the queue without "
                                                  "a result (time limit, cancelled or node failure?)",
                                                  str(handle.paths.stderr))
                        bar.update(1)
            time.sleep(SLURM_POLL_S)
    return outcomes


def _slurm_queue(arrays: list[str]) -> set[str] | None:
    """The ids (``ARRAY_TASK``) of these arrays' tasks still in the queue; None if squeue did not answer."""
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # squeue answers "Invalid job id" once every job of the list has left the queue
        return set() if "Invalid job id" in result.stderr else None
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def _slurm_outcome(job: Job, handle) -> Outcome:
    try:
        return handle.result()
    except Exception as exc:  # noqa: BLE001 - the task's own exception, reported by submitit as text
        return _failed(job, _exception_line(str(exc)), str(handle.paths.stderr))


def _exception_line(message: str) -> str:
    """The last line of the traceback that submitit's failure message quotes (the exception itself)."""
    lines = [line.rstrip() for line in message.splitlines()]
    if "Traceback (most recent call last):" in message:
        start = max(i for i, line in enumerate(lines) if line.startswith("Traceback"))
        body = [line for line in lines[start + 1:] if line and not line.startswith(" ")]
        for line in body:
            if not line.startswith("-----"):
                return line
    return _one_line(message)


LAUNCHERS = {"local": run_local, "ray": run_ray, "slurm": run_slurm}


def launch(jobs: list[Job], options: argparse.Namespace) -> list[Outcome]:
    """Run ``jobs`` with the launcher ``options.launcher`` names; outcomes in the order of ``jobs``."""
    return LAUNCHERS[getattr(options, "launcher", "local") or "local"](jobs, options)
