"""Launchers: each takes the same list of jobs and runs them, here or on an engine.

A launcher holds no algorithm: it places jobs and collects their outcomes; what a job does is
``jobs.run_job``. Every launcher leaves the same files as ``local``. The engines pay a worker's start-up
(an interpreter, the torch import, a CUDA context, the dataset) once per worker, not once per job.

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

import argparse
import importlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from jobs import FAILED, Job, Outcome, run_job
from layout import log_folder
from utils import UsageError

REPO = Path(__file__).resolve().parent
CLUSTER_REQUIREMENTS = "envs_requirements/requirements-cluster.txt"
#: how often Ray reruns a job whose actor process died (killed, out of memory, node lost)
RAY_MAX_RETRIES = 3
#: seconds a Ray address has to accept a connection before the launch is refused
RAY_CONNECT_TIMEOUT_S = 10.0
SUBMITTED = "submitted"  # a Slurm job submitted with --no-wait: its outcome is not known here
#: seconds between two looks at the Slurm queue while waiting
SLURM_POLL_S = 0.25  # a look is a few stat() calls
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


def worker_identity() -> str:
    """Where this process runs: host, process id, and the GPUs it may see (when an engine restricted them)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{socket.gethostname()} pid {os.getpid()}" + (f" GPUs {devices}" if devices is not None else "")


def run_guarded(job: Job) -> Outcome:
    """``run_job`` in an engine's worker: an exception the job raises (a bug; bad input is already a failed
    outcome) becomes a failed outcome carrying the traceback, so the worker lives on to run the next job."""
    try:
        outcome = run_job(job)
    except Exception as exc:  # noqa: BLE001 - any bug of one job must not take the other jobs down
        outcome = _failed(job, f"{type(exc).__name__}: {exc}")
        outcome.trace = traceback.format_exc()
    outcome.worker = worker_identity()
    return outcome


# ---------------------------------------------------------------------------------------------
# ray
# ---------------------------------------------------------------------------------------------

def default_gpus_per_job() -> float:
    """One GPU per job where this machine has CUDA, none elsewhere."""
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


class JobWorker:
    """A Ray actor that runs jobs one after another in one long-lived process (its device slot)."""

    def __init__(self):
        from jobs import import_step_modules

        import_step_modules()

    def ready(self) -> str:
        return worker_identity()

    def run(self, job: Job) -> Outcome:
        outcome = run_guarded(job)
        _release_device_memory()
        return outcome


def _release_device_memory() -> None:
    """Give the GPU memory a finished job's tensors held back to the device: another actor may share it."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_ray(jobs: list[Job], options: argparse.Namespace | None = None) -> list[Outcome]:
    """A pool of long-lived actors on a running cluster (``--ray-address``) or a local one started here."""
    import ray

    if not jobs:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        _connect_ray(ray, _option(options, "ray_address"))
    try:
        return RayPool(ray, jobs, options).run()
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


def pool_size(resources: dict, cpus: float, gpus: float, jobs: int) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs the cluster's ``resources`` hold at once, at most
    ``jobs``; a UsageError (one line) where not even one fits."""
    fits = [resources.get("CPU", 0.0) / cpus] if cpus > 0 else []
    if gpus > 0:
        fits.append(resources.get("GPU", 0.0) / gpus)
    slots = int(min(fits) + 1e-9) if fits else jobs
    if slots < 1:
        raise UsageError(f"no job fits the Ray cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} "
                         f"GPUs) at --cpus-per-job {cpus:g} --gpus-per-job {gpus:g}; ask for less per job")
    return min(slots, jobs)


class RayPool:
    """One launch's jobs on a pool of ``JobWorker`` actors: each job to a free actor once the jobs it needs
    have finished, in the order given. (Ray's ``ActorPool`` hands out work in submission order only: it knows
    neither dependencies nor replacing an actor.)"""

    def __init__(self, ray, jobs: list[Job], options):
        self.ray, self.jobs, self.options = ray, jobs, options
        cpus = float(_option(options, "cpus_per_job", jobs[0].settings.threads))
        gpus = _option(options, "gpus_per_job")
        gpus = default_gpus_per_job() if gpus is None else float(gpus)
        self.size = pool_size(ray.cluster_resources(), cpus, gpus, len(jobs))
        # an actor is restarted whenever its process dies, and the job it was running retried on it; a job's
        # own exception is returned as a failed outcome (run_guarded), never retried
        self.actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                      max_task_retries=RAY_MAX_RETRIES)(JobWorker)
        self.upstream = [_upstream(jobs, index) for index in range(len(jobs))]
        self.outcomes: list[Outcome | None] = [None] * len(jobs)
        self.starting: dict = {}  # ready() reference -> actor
        self.running: dict = {}  # run() reference -> (job index, actor)
        self.idle: list = []
        self.actors: list = []
        #: what each actor that started said of itself (``worker_identity``), in the order they were ready
        self.workers: list[str] = []
        self.start_failure = ""

    def run(self) -> list[Outcome]:
        for _ in range(self.size):
            self._start_actor()
        waiting = list(range(len(self.jobs)))
        with tqdm(total=len(self.jobs), desc="jobs (ray)", unit="job",
                  disable=bool(_option(self.options, "quiet"))) as self.bar:
            try:
                while waiting or self.running:
                    waiting = self._dispatch(waiting)
                    if not self.running and not self.starting:
                        for index in waiting:  # no actor could start
                            self._finish(index, _failed(self.jobs[index], "not run: no Ray worker could start: "
                                                        f"{self.start_failure}"))
                        break
                    if self.running or self.starting:
                        done, _ = self.ray.wait([*self.running, *self.starting], num_returns=1)
                        self._collect(done[0])
            finally:
                for actor in self.actors:
                    self.ray.kill(actor, no_restart=True)
        for outcome in self.outcomes:
            if outcome.trace:
                outcome.log = self._write_log(outcome)
        return self.outcomes

    def _start_actor(self) -> None:
        actor = self.actor_class.remote()
        self.actors.append(actor)
        self.starting[actor.ready.remote()] = actor

    def _dispatch(self, waiting: list[int]) -> list[int]:
        """Send every job that may start (the jobs it needs finished) to a free actor; the rest keep waiting."""
        still = []
        for index in waiting:
            upstream = self.upstream[index]
            if not self.idle or any(self.outcomes[i] is None for i in upstream):
                still.append(index)
                continue
            broken = [self.jobs[i] for i in upstream if self.outcomes[i].trace]
            if broken:
                self._finish(index, _failed(self.jobs[index], f"not run: {broken[0].name} failed"))
                continue
            actor = self.idle.pop(0)
            self.running[actor.run.remote(self.jobs[index])] = (index, actor)
        return still

    def _collect(self, ref) -> None:
        errors = self.ray.exceptions
        if ref in self.starting:
            actor = self.starting.pop(ref)
            try:
                self.workers.append(self.ray.get(ref))
                self.idle.append(actor)
            except errors.RayError as exc:
                self.start_failure = self.start_failure or _one_line(exc)
            return
        index, actor = self.running.pop(ref)
        try:
            outcome = self.ray.get(ref)
        except errors.RayError as exc:  # the actor died under the job, once more than it may be retried
            outcome = _failed(self.jobs[index], f"its Ray worker died {RAY_MAX_RETRIES + 1} times (killed or out of "
                              "memory?)")
            outcome.trace = str(exc)
            self.idle.append(actor)  # restarted by Ray (max_restarts=-1)
        else:
            if outcome.trace:  # the job raised: its process may be unusable (a CUDA error), start a new one
                self.ray.kill(actor, no_restart=True)
                if sum(o is None for o in self.outcomes) > len(self.running) + 1:  # jobs are left for it
                    self._start_actor()
            else:
                self.idle.append(actor)
        self._finish(index, outcome)

    def _finish(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self.bar.update(1)

    def _write_log(self, outcome: Outcome) -> str:
        """The failure's full text in ``{output}/logs/ray/{step}_{key}.log``; its path, or "" if unwritable."""
        job = outcome.job
        log = log_folder(job.roots.output, "ray") / f"{job.step}_{job.key}.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{job.name}\n{outcome.worker}\n\n{outcome.trace}\n")
        except OSError:
            return ""
        return str(log)


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


#: ``--slurm-jobs-per-task``'s default: jobs per array task, but a training (minutes to hours) runs alone
AUTO_JOBS_PER_TASK = 8


def jobs_per_task_flag(text: str) -> int | None:
    """``--slurm-jobs-per-task``: a positive count, or ``auto`` (None)."""
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of jobs or 'auto', got {text!r}")
    return int(text)


def _is_training(job: Job) -> bool:
    return job.step == "train" and getattr(job.settings, "mode", "train") == "train"


def pack_tasks(jobs: list[Job], per_task: int | None = None) -> list[list[int]]:
    """The launch's jobs grouped into array tasks, each a list of job indices in the order given.

    Jobs that depend on each other (a healthy training and the versions derived from it) are kept in one
    task where the limit allows, so that they need no second array. ``per_task``: at most that many jobs per
    task; None (``auto``): at most ``AUTO_JOBS_PER_TASK`` jobs, of which at most one is a training.
    """
    limit = per_task or AUTO_JOBS_PER_TASK
    trainings = per_task or 1

    def fits(task: list[int], more: list[int]) -> bool:
        together = task + more
        return len(together) <= limit and sum(_is_training(jobs[i]) for i in together) <= max(trainings, 1)

    tasks: list[list[int]] = []
    current: list[int] = []
    for group in _dependency_groups(jobs):
        if current and not fits(current, group):
            tasks.append(current)
            current = []
        if fits(current, group):
            current += group
            continue
        for index in group:  # a group too big for one task: split in order, later parts wait for earlier ones
            if current and not fits(current, [index]):
                tasks.append(current)
                current = []
            current.append(index)
    if current:
        tasks.append(current)
    return [sorted(task) for task in tasks]  # the order given (which puts every job after those it needs)


def _dependency_groups(jobs: list[Job]) -> list[list[int]]:
    """The jobs joined by ``depends_on`` (connected), each group in the order given, groups by first job."""
    group_of = list(range(len(jobs)))

    def root(i: int) -> int:
        while group_of[i] != i:
            i = group_of[i]
        return i

    for index in range(len(jobs)):
        for earlier in _upstream(jobs, index):
            group_of[root(index)] = root(earlier)
    groups: dict[int, list[int]] = {}
    for index in range(len(jobs)):
        groups.setdefault(root(index), []).append(index)
    return sorted(groups.values(), key=lambda group: group[0])


def task_needs(jobs: list[Job], tasks: list[list[int]]) -> list[set[int]]:
    """Per task, the other tasks holding a job that one of its jobs needs."""
    task_of = {index: t for t, task in enumerate(tasks) for index in task}
    return [{task_of[i] for index in task for i in _upstream(jobs, index)} - {t} for t, task in enumerate(tasks)]


def array_waves(needs: list[set[int]]) -> list[int]:
    """Per task, the array (0, 1, ...) it is submitted in: the one after every array holding a task it needs
    (tasks come in dependency order, so a task needs only earlier ones)."""
    wave: list[int] = []
    for needed in needs:
        wave.append(1 + max((wave[t] for t in needed), default=-1))
    return wave


def run_packed(jobs: list[Job]) -> list[Outcome]:
    """One Slurm array task: its jobs in order in this one process. A job that raises is reported for itself
    (its traceback on this task's stderr) and the others still run, but those that need it."""
    outcomes: list[Outcome] = []
    for index, job in enumerate(jobs):
        broken = [jobs[i] for i in _upstream(jobs, index) if outcomes[i].trace]
        if broken:
            outcome = _failed(job, f"not run: {broken[0].name} failed")
            outcome.worker = worker_identity()
        else:
            outcome = run_guarded(job)
        if outcome.trace:
            print(f"{job.name} failed:\n{outcome.trace}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def run_slurm(jobs: list[Job], options: argparse.Namespace | None = None) -> list[Outcome]:
    """Array tasks of several jobs each (``pack_tasks``); a task needing another task's job goes to a later
    array that starts after the arrays it needs."""
    import submitit

    if not jobs:
        return []
    tasks = pack_tasks(jobs, _option(options, "slurm_jobs_per_task"))
    needs = task_needs(jobs, tasks)
    waves = array_waves(needs)
    folder = log_folder(Path(jobs[0].roots.output).resolve(), "slurm") / "%j"
    handles: list = [None] * len(tasks)
    arrays: list[str] = []
    labels: list[str] = []
    for wave in range(max(waves) + 1):
        members = [t for t in range(len(tasks)) if waves[t] == wave]
        after = sorted({arrays[waves[n]] for t in members for n in needs[t]})
        steps = "+".join(dict.fromkeys(jobs[i].step for t in members for i in tasks[t]))
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**_slurm_parameters(steps, options, after, jobs[0].settings.threads))
        try:
            submitted = executor.map_array(run_packed, [[jobs[i] for i in tasks[t]] for t in members])
        except Exception as exc:  # noqa: BLE001 - sbatch refused the array: its message is what matters
            raise UsageError(f"sbatch refused the {steps} array: {_one_line(exc)}") from None
        for t, handle in zip(members, submitted):
            handles[t] = handle
        arrays.append(submitted[0].job_id.split("_")[0])
        labels.append(f"{steps} {arrays[-1]}")
    if _option(options, "no_wait", False):
        print(f"submitted Slurm job array(s): {', '.join(labels)} ({len(tasks)} task(s) for {len(jobs)} job(s)); "
              f"logs in {folder.parent}", file=sys.stderr)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        for task, handle in zip(tasks, handles):
            for index in task:
                outcomes[index] = Outcome(jobs[index], SUBMITTED, note=f"submitted: Slurm job {handle.job_id}")
        return outcomes
    try:
        return _wait_slurm(jobs, tasks, handles, arrays, options)
    except KeyboardInterrupt:
        print(f"the Slurm job arrays keep running; stop them with: scancel {' '.join(arrays)}", file=sys.stderr)
        raise


def _slurm_parameters(steps: str, options, needs: list[str], threads: int) -> dict:
    extra = dict(_option(options, "slurm_sbatch_option", None) or [])
    if needs:
        after = "afterany:" + ":".join(needs)
        extra["dependency"] = f"{extra['dependency']},{after}" if extra.get("dependency") else after
    parameters = dict(name=f"dfg-{steps}", timeout_min=int(_option(options, "slurm_time", 240)),
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


def _wait_slurm(jobs: list[Job], tasks: list[list[int]], handles: list, arrays: list[str],
                options) -> list[Outcome]:
    """Poll until every task has written its result; a task that left the queue without one (time limit,
    cancelled, node failure) fails its jobs, rather than hang. Only the result files and ``squeue`` are read:
    submitit's own ``done()`` asks ``sacct``, which clusters without accounting answer with an error on
    the terminal at every poll, and which never tells such a task from a pending one there."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    finished = [False] * len(tasks)
    missing_since: dict[int, float] = {}
    last_queue_check = time.monotonic()

    def finish(t: int, results: list[Outcome]) -> None:
        finished[t] = True
        for index, outcome in zip(tasks[t], results):
            outcomes[index] = outcome
        bar.update(len(tasks[t]))

    with tqdm(total=len(jobs), desc="jobs (slurm)", unit="job", disable=bool(_option(options, "quiet"))) as bar:
        while not all(finished):
            for t, handle in enumerate(handles):
                if not finished[t] and handle.paths.result_pickle.exists():
                    finish(t, _slurm_results([jobs[i] for i in tasks[t]], handle))
            if all(finished):
                break
            if time.monotonic() - last_queue_check > SLURM_QUEUE_CHECK_S:
                last_queue_check = time.monotonic()
                queued = _slurm_queue(arrays)
                for t, handle in enumerate(handles):
                    if finished[t] or queued is None or handle.job_id in queued:
                        missing_since.pop(t, None)
                        continue
                    first_seen = missing_since.setdefault(t, last_queue_check)
                    if last_queue_check - first_seen >= SLURM_QUEUE_CHECK_S and \
                            not handle.paths.result_pickle.exists():
                        reason = (f"Slurm job {handle.job_id} left the queue without a result (time limit, cancelled "
                                  "or node failure?)")
                        finish(t, [_failed(jobs[i], reason, str(handle.paths.stderr)) for i in tasks[t]])
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


def _slurm_results(jobs: list[Job], handle) -> list[Outcome]:
    """A finished task's outcomes (a failure's log: the task's stderr, where ``run_packed`` wrote its traceback);
    if the task itself failed (its process could not run the jobs), each of its jobs failed for that reason."""
    try:
        outcomes = handle.result()
    except Exception as exc:  # noqa: BLE001 - the task's own exception, reported by submitit as text
        return [_failed(job, _exception_line(str(exc)), str(handle.paths.stderr)) for job in jobs]
    for outcome in outcomes:
        if outcome.trace:
            outcome.log = str(handle.paths.stderr)
    return outcomes


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
