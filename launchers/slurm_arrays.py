"""The ``slurm`` launcher: submitit job arrays whose tasks each run several jobs in one process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from launchers.base import LaunchSettings
from launchers.common import failed, one_line, require_module, run_guarded, upstream, worker_identity, worker_pythonpath
from launchers.options import AUTO_JOBS_PER_TASK, SlurmOptions
from pipeline.jobs import Job, Outcome
from storage.layout import log_folder
from utils import UsageError

SUBMITTED = "submitted"  # a Slurm job submitted with --no-wait: its outcome is not known here
#: seconds between two looks at the Slurm queue while waiting
SLURM_POLL_S = 0.25  # a look is a few stat() calls
SLURM_QUEUE_CHECK_S = 20.0


def check_slurm(settings: LaunchSettings) -> None:
    """submitit installed, and a Slurm client (``sbatch``) on PATH."""
    require_module("submitit", "slurm")
    if shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm needs the Slurm client (`sbatch` not found on PATH); run on a Slurm "
                         "login node, or use --launcher local or ray")


def _is_training(job: Job) -> bool:
    return job.step == "train" and job.settings.mode == "train"


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
        for earlier in upstream(jobs, index):
            group_of[root(index)] = root(earlier)
    groups: dict[int, list[int]] = {}
    for index in range(len(jobs)):
        groups.setdefault(root(index), []).append(index)
    return sorted(groups.values(), key=lambda group: group[0])


def task_needs(jobs: list[Job], tasks: list[list[int]]) -> list[set[int]]:
    """Per task, the other tasks holding a job that one of its jobs needs."""
    task_of = {index: t for t, task in enumerate(tasks) for index in task}
    return [{task_of[i] for index in task for i in upstream(jobs, index)} - {t} for t, task in enumerate(tasks)]


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
        broken = [jobs[i] for i in upstream(jobs, index) if outcomes[i].trace]
        if broken:
            outcome = failed(job, f"not run: {broken[0].name} failed")
            outcome.worker = worker_identity()
        else:
            outcome = run_guarded(job)
        if outcome.trace:
            print(f"{job.name} failed:\n{outcome.trace}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def run_slurm(jobs: list[Job], settings: LaunchSettings) -> list[Outcome]:
    """Array tasks of several jobs each (``pack_tasks``); a task needing another task's job goes to a later
    array that starts after the arrays it needs."""
    import submitit  # deferred: an optional engine, imported only to launch on it

    if not jobs:
        return []
    tasks = pack_tasks(jobs, settings.options.slurm_jobs_per_task)
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
        executor.update_parameters(**_slurm_parameters(steps, settings.options, after, jobs[0].settings.threads))
        try:
            submitted = executor.map_array(run_packed, [[jobs[i] for i in tasks[t]] for t in members])
        except Exception as exc:  # noqa: BLE001 - sbatch refused the array: its message is what matters
            raise UsageError(f"sbatch refused the {steps} array: {one_line(exc)}") from None
        for t, handle in zip(members, submitted):
            handles[t] = handle
        arrays.append(submitted[0].job_id.split("_")[0])
        labels.append(f"{steps} {arrays[-1]}")
    if settings.options.no_wait:
        print(f"submitted Slurm job array(s): {', '.join(labels)} ({len(tasks)} task(s) for {len(jobs)} job(s)); "
              f"logs in {folder.parent}", file=sys.stderr)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        for task, handle in zip(tasks, handles):
            for index in task:
                outcomes[index] = Outcome(jobs[index], SUBMITTED, note=f"submitted: Slurm job {handle.job_id}")
        return outcomes
    try:
        return _wait_slurm(jobs, tasks, handles, arrays, settings.quiet)
    except KeyboardInterrupt:
        print(f"the Slurm job arrays keep running; stop them with: scancel {' '.join(arrays)}", file=sys.stderr)
        raise


def _slurm_parameters(steps: str, settings: SlurmOptions, needs: list[str], threads: int) -> dict:
    extra = dict(settings.slurm_sbatch_options)
    if needs:
        after = "afterany:" + ":".join(needs)
        extra["dependency"] = f"{extra['dependency']},{after}" if extra.get("dependency") else after
    cpus = threads if settings.slurm_cpus_per_job is None else settings.slurm_cpus_per_job
    parameters = dict(name=f"dfg-{steps}", timeout_min=settings.slurm_time, cpus_per_task=cpus,
                      slurm_setup=[f"export PYTHONPATH={worker_pythonpath()}"],
                      slurm_additional_parameters=extra)
    if settings.slurm_gpus_per_job:
        parameters["slurm_gres"] = f"gpu:{settings.slurm_gpus_per_job}"
    if settings.slurm_partition:
        parameters["slurm_partition"] = settings.slurm_partition
    if settings.slurm_array_parallelism:
        parameters["slurm_array_parallelism"] = settings.slurm_array_parallelism
    return parameters


def _wait_slurm(jobs: list[Job], tasks: list[list[int]], handles: list, arrays: list[str],
                quiet: bool) -> list[Outcome]:
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

    with tqdm(total=len(jobs), desc="jobs (slurm)", unit="job", disable=quiet) as bar:
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
                        finish(t, [failed(jobs[i], reason, str(handle.paths.stderr)) for i in tasks[t]])
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
        return [failed(job, _exception_line(str(exc)), str(handle.paths.stderr)) for job in jobs]
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
    return one_line(message)
