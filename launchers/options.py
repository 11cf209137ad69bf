"""The engines' options, each launcher's flags as a frozen dataclass (``launchers.option`` fields): declared apart
from the engines' code so that the command line builds and checks them without loading Ray, submitit or torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from launchers.base import option
from pipeline.flags import non_negative_float, non_negative_int, positive_float, positive_int


@dataclass(frozen=True)
class RayOptions:
    """The ``ray`` launcher's flags."""

    ray_address: str | None = option(None, "--ray-address", "join this running Ray cluster (host:port; default: "
                                     "$RAY_ADDRESS, else start a local one)")
    cpus_per_job: float | None = option(None, "--cpus-per-job", "CPUs Ray reserves per job (default: --threads)",
                                        type=positive_float)
    gpus_per_job: float | None = option(None, "--gpus-per-job", "GPUs Ray reserves per job, fractions allowed "
                                        "(default: 1 where this machine has CUDA, else 0)", type=non_negative_float)


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


@dataclass(frozen=True)
class SlurmOptions:
    """The ``slurm`` launcher's flags."""

    slurm_partition: str | None = option(None, "--slurm-partition", "Slurm partition (default: the cluster's default)")
    slurm_time: int = option(240, "--slurm-time", "time limit of each Slurm array task (all of its jobs), minutes "
                             "(default 240)", type=positive_int)
    slurm_jobs_per_task: int | None = option(
        None, "--slurm-jobs-per-task", "jobs one Slurm array task runs one after another in one process, paying the "
        f"start-up once (default: auto: up to {AUTO_JOBS_PER_TASK}, but a training alone)", type=jobs_per_task_flag,
        metavar="N|auto")
    slurm_cpus_per_job: int | None = option(None, "--slurm-cpus-per-job", "CPUs per Slurm array task (default: "
                                            "--threads)", type=positive_int)
    slurm_gpus_per_job: int = option(0, "--slurm-gpus-per-job", "GPUs per Slurm array task (gres; default 0)",
                                     type=non_negative_int)
    slurm_array_parallelism: int | None = option(None, "--slurm-array-parallelism", "at most this many tasks of one "
                                                 "array run at once (default: Slurm's limit)", type=positive_int)
    slurm_sbatch_options: tuple[tuple[str, str], ...] = option(
        (), "--slurm-sbatch-option", "extra sbatch option, repeatable (e.g. account=myproject; default: none)",
        type=parse_sbatch_option, action="append", metavar="KEY=VALUE")
    no_wait: bool = option(False, "--no-wait", "submit, print the job ids and exit instead of waiting for the jobs",
                           action="store_true")
