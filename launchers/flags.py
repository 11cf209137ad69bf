"""``--launcher`` and its engines' flags, and the ``LaunchSettings`` a command line asks for (``cli`` names them
with the other flags)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from storage.settings import DEFAULT_LAUNCH, LaunchSettings
from utils import UsageError


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and its engines' options (the per-version scripts); defaults are ``LaunchSettings``'."""
    from launchers import AUTO_JOBS_PER_TASK, LAUNCHERS, jobs_per_task_flag, parse_sbatch_option
    from pipeline.cli import non_negative_float, non_negative_int, positive_float, positive_int

    default = DEFAULT_LAUNCH
    parser.add_argument("--launcher", choices=tuple(LAUNCHERS), default=default.launcher, type=_launcher_with_engine,
                        help="where the per-version jobs run: in this process, on Ray, or as Slurm job arrays "
                             "(ray, slurm: pip install -r envs_requirements/requirements-cluster.txt; the repository "
                             "and the roots on a filesystem the workers share)")
    engines = parser.add_argument_group("--launcher ray / slurm")
    engines.add_argument("--ray-address", default=default.ray_address,
                         help="join this running Ray cluster (host:port; default: $RAY_ADDRESS, else start a "
                              "local one)")
    engines.add_argument("--cpus-per-job", type=positive_float, default=default.cpus_per_job,
                         help="CPUs Ray reserves per job (default: --threads)")
    engines.add_argument("--gpus-per-job", type=non_negative_float, default=default.gpus_per_job,
                         help="GPUs Ray reserves per job, fractions allowed (default: 1 where this machine has CUDA, "
                              "else 0)")
    engines.add_argument("--slurm-partition", default=default.slurm_partition,
                         help="Slurm partition (default: the cluster's default)")
    engines.add_argument("--slurm-time", type=positive_int, default=default.slurm_time,
                         help="time limit of each Slurm array task (all of its jobs), minutes")
    engines.add_argument("--slurm-jobs-per-task", type=jobs_per_task_flag, default=default.slurm_jobs_per_task,
                         metavar="N|auto",
                         help="jobs one Slurm array task runs one after another in one process, paying the start-up "
                              f"once (default: auto: up to {AUTO_JOBS_PER_TASK}, but a training alone)")
    engines.add_argument("--slurm-cpus-per-job", type=positive_int, default=default.slurm_cpus_per_job,
                         help="CPUs per Slurm array task (default: --threads)")
    engines.add_argument("--slurm-gpus-per-job", type=non_negative_int, default=default.slurm_gpus_per_job,
                         help="GPUs per Slurm array task (gres)")
    engines.add_argument("--slurm-array-parallelism", type=positive_int, default=default.slurm_array_parallelism,
                         help="at most this many tasks of one array run at once (default: Slurm's limit)")
    engines.add_argument("--slurm-sbatch-option", dest="slurm_sbatch_options", type=parse_sbatch_option,
                         action="append", default=list(default.slurm_sbatch_options), metavar="KEY=VALUE",
                         help="extra sbatch option, repeatable (e.g. account=myproject; default: none)")
    engines.add_argument("--no-wait", action="store_true",
                         help="slurm: submit, print the job ids and exit instead of waiting for the jobs")


def _launcher_with_engine(name: str) -> str:
    """``--launcher``'s value, refused while parsing (UsageError: one line, exit 2) when its engine is missing."""
    from launchers import LAUNCHERS, check_engine

    if name in LAUNCHERS:
        check_engine(name)
    return name


def launch_settings(args: argparse.Namespace) -> LaunchSettings:
    """The launch a command line asks for, as one ``LaunchSettings``; an engine flag given to a launcher that
    cannot honour it (``--cpus-per-job`` with ``--launcher local``, say) is refused naming both."""
    given = {field.name: vars(args)[field.name] for field in fields(LaunchSettings) if field.name in vars(args)}
    given["slurm_sbatch_options"] = tuple(given.get("slurm_sbatch_options", ()))
    settings = LaunchSettings(**given)
    for name, engine in settings.engine_fields().items():
        if engine != settings.launcher and getattr(settings, name) != getattr(DEFAULT_LAUNCH, name):
            flag = "--slurm-sbatch-option" if name == "slurm_sbatch_options" else "--" + name.replace("_", "-")
            raise UsageError(f"{flag} is a --launcher {engine} flag; --launcher {settings.launcher} cannot honour it "
                             f"(use --launcher {engine}, or leave {flag} out)")
    if settings.launcher == "ray":
        from launchers.ray_pool import check_job_size

        check_job_size(settings)
    return settings
