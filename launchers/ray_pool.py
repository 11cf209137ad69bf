"""The ``ray`` launcher: a pool of long-lived actors, one per device slot, that run the launch's jobs."""

from __future__ import annotations

import logging
import os
import socket
import sys

from tqdm.auto import tqdm

from launchers.base import LaunchSettings
from launchers.common import failed, one_line, require_module, run_guarded, upstream, worker_identity, worker_pythonpath
from launchers.options import RayOptions
from pipeline.jobs import Job, Outcome
from storage.layout import log_folder
from utils import UsageError

#: how often Ray reruns a job whose actor process died (killed, out of memory, node lost)
RAY_MAX_RETRIES = 3
#: seconds a Ray address has to accept a connection before the launch is refused
RAY_CONNECT_TIMEOUT_S = 10.0


def default_gpus_per_job() -> float:
    """One GPU per job where this machine has CUDA, none elsewhere."""
    import torch  # deferred: a pool's actors come up without torch (their first job loads it); the driver asks

    return 1.0 if torch.cuda.is_available() else 0.0


class JobWorker:
    """A Ray actor that runs jobs one after another in one long-lived process (its device slot)."""

    def ready(self) -> str:
        return worker_identity()

    def run(self, job: Job) -> Outcome:
        outcome = run_guarded(job)
        _release_device_memory()
        return outcome


def _release_device_memory() -> None:
    """Give the GPU memory a finished job's tensors held back to the device: another actor may share it.
    (No ``gc.collect()``: with torch and torchvision imported it takes 0.2 s, measured, and a job's tensors
    are freed as it returns.)"""
    torch = sys.modules.get("torch")  # an actor whose jobs never loaded torch holds no device memory
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_ray(jobs: list[Job], settings: LaunchSettings) -> list[Outcome]:
    """A pool of long-lived actors on a running cluster (``--ray-address``) or a local one started here."""
    import ray  # deferred: an optional engine, imported only to launch on it

    if not jobs:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        _connect_ray(ray, settings.options.ray_address)
    try:
        return RayPool(ray, jobs, settings).run()
    finally:
        if started_here:
            ray.shutdown()


def _connect_ray(ray, address: str | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = dict(runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}}, log_to_driver=False,
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
        if _refused_for_token(exc):
            raise UsageError(f"{where} wants token authentication, which Ray does not turn on for an explicit "
                             "address: set RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token, "
                             "$RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN)") from None
        raise UsageError(f"cannot connect to {where}: {one_line(exc)}; check --ray-address "
                         "(`ray status` on the head node prints it)") from None


def _refused_for_token(exc: BaseException | None) -> bool:
    """Whether Ray's connection error came from a missing or wrong authentication token (it arrives wrapped,
    sometimes only as the text of a chained error)."""
    while exc is not None:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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


#: the finest fraction of a resource Ray accepts
RAY_RESOURCE_UNIT = 1e-4


def check_ray(settings: LaunchSettings) -> None:
    """Ray installed, and a job size it accepts (:func:`check_job_size`)."""
    require_module("ray", "ray")
    check_job_size(settings.options)


def check_job_size(settings: RayOptions) -> None:
    """Refuse, before Ray starts, a job size Ray would reject (a nonzero fraction finer than ``RAY_RESOURCE_UNIT``,
    more than one GPU but not a whole number) or, for a cluster started here, one this machine cannot hold."""
    for flag, value in (("--cpus-per-job", settings.cpus_per_job), ("--gpus-per-job", settings.gpus_per_job)):
        if value is not None and 0 < value < RAY_RESOURCE_UNIT:
            raise UsageError(f"{flag} {value:g}: Ray counts resources in steps of {RAY_RESOURCE_UNIT:g}; ask for at "
                             f"least {RAY_RESOURCE_UNIT:g}")
    if settings.gpus_per_job is not None and settings.gpus_per_job > 1 and settings.gpus_per_job % 1:
        raise UsageError(f"--gpus-per-job {settings.gpus_per_job:g}: more than one GPU per job must be a whole "
                         "number (Ray's rule)")
    if settings.ray_address or os.environ.get("RAY_ADDRESS"):
        return  # another cluster's size is known once connected (pool_size)
    import torch  # deferred: a pool's actors come up without torch (their first job loads it); the driver asks

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    if settings.cpus_per_job is not None and settings.cpus_per_job > cpus:
        raise UsageError(f"--cpus-per-job {settings.cpus_per_job:g}: the local Ray cluster would have {cpus} CPUs; "
                         f"ask for at most {cpus}, or join a larger cluster with --ray-address")
    if settings.gpus_per_job is not None and settings.gpus_per_job > max(gpus, 0) and settings.gpus_per_job > 0:
        raise UsageError(f"--gpus-per-job {settings.gpus_per_job:g}: this machine has {gpus} GPU(s); ask for at "
                         "most that, or join a cluster with --ray-address")


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

    def __init__(self, ray, jobs: list[Job], settings: LaunchSettings):
        self.ray, self.jobs, self.settings = ray, jobs, settings
        options = settings.options
        cpus = float(jobs[0].settings.threads if options.cpus_per_job is None else options.cpus_per_job)
        gpus = default_gpus_per_job() if options.gpus_per_job is None else float(options.gpus_per_job)
        self.size = pool_size(ray.cluster_resources(), cpus, gpus, len(jobs))
        # an actor is restarted whenever its process dies, and the job it was running retried on it; a job's
        # own exception is returned as a failed outcome (run_guarded), never retried
        self.actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                      max_task_retries=RAY_MAX_RETRIES)(JobWorker)
        self.upstream = [upstream(jobs, index) for index in range(len(jobs))]
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
                  disable=self.settings.quiet) as self.bar:
            try:
                while waiting or self.running:
                    waiting = self._dispatch(waiting)
                    if not self.running and not self.starting:
                        for index in waiting:  # no actor could start
                            self._finish(index, failed(self.jobs[index], "not run: no Ray worker could start: "
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
            needed = self.upstream[index]
            if not self.idle or any(self.outcomes[i] is None for i in needed):
                still.append(index)
                continue
            broken = [self.jobs[i] for i in needed if self.outcomes[i].trace]
            if broken:
                self._finish(index, failed(self.jobs[index], f"not run: {broken[0].name} failed"))
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
                self.start_failure = self.start_failure or one_line(exc)
            return
        index, actor = self.running.pop(ref)
        try:
            outcome = self.ray.get(ref)
        except errors.RayError as exc:  # the actor died under the job, once more than it may be retried
            outcome = failed(self.jobs[index], f"its Ray worker died {RAY_MAX_RETRIES + 1} times (killed or out of "
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
