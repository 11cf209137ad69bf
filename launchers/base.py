"""The launchers' registry, the settings a launch runs with, and the flags and checks every launcher gets.

A launcher is one :class:`Launcher` entry of :data:`LAUNCHERS`: its name, the function that runs a list of jobs,
its options (a frozen dataclass whose fields, declared with :func:`option`, are its command-line flags, grouped
under its name in ``--help``) and the check that its engine can run here. ``--launcher`` and the options' flags
are built from the registry, and a flag of another launcher than the one chosen is refused naming both: adding a
launcher is its module and one :func:`register_launcher` line. An entry may name its run function and check by
``"module:name"`` (imported when a launch uses them): the registry loads no engine, and the command line that
reads it answers at once. Running a launch is ``launchers/running.py``'s.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Callable

from utils import Registry, UsageError, resolve

if TYPE_CHECKING:
    from pipeline.jobs import Job, Outcome

CLUSTER_REQUIREMENTS = "envs_requirements/requirements-cluster.txt"


@dataclass(frozen=True)
class NoOptions:
    """The options of a launcher that takes none (``local``)."""


@dataclass(frozen=True)
class Launcher:
    """One way of running a launch's jobs (``--launcher NAME``)."""

    name: str
    #: ``run(jobs, settings) -> outcomes``, one per job, in the jobs' order (or its ``"module:name"``)
    run: Callable[[list[Job], LaunchSettings], list[Outcome]] | str
    #: one line for ``--help``
    description: str
    #: its options: a frozen dataclass whose fields (:func:`option`) are its flags, with their defaults
    options: type = NoOptions
    #: ``check(settings)`` refuses (a UsageError) before any work what this machine or the options cannot do (or
    #: its ``"module:name"``)
    check: Callable[[LaunchSettings], None] | str | None = None


#: every launcher by name, in registration order (``local`` first: the default)
LAUNCHERS = Registry("launcher", str.lower)


def register_launcher(launcher: Launcher) -> Launcher:
    """Enter a launcher in :data:`LAUNCHERS`; its options' flags must be new (a flag names one option of one
    launcher)."""
    taken = {f.name for other in LAUNCHERS.values() if other.name != launcher.name for f in fields(other.options)}
    clashing = [f.name for f in fields(launcher.options) if f.name in taken]
    if clashing:
        raise ValueError(f"launcher {launcher.name!r}: option(s) {', '.join(clashing)} belong to another launcher")
    LAUNCHERS.add(launcher.name, launcher)
    return launcher


def option(default, flag: str, help: str, **argparse_options):
    """A launcher option: a dataclass field whose flag is ``flag`` (its destination is the field's name), with
    ``help`` and whatever else ``argparse.add_argument`` takes (``type``, ``metavar``, ``action``)."""
    return field(default=default, metadata={"flag": flag, "help": help, "argparse": argparse_options})


@dataclass(frozen=True)
class LaunchSettings:
    """Where a launch's jobs run and how: ``--launcher``, ``--quiet`` and the chosen launcher's options, built once
    from the command line (:func:`launch_settings`) and handed whole to the launcher."""

    launcher: str = "local"
    quiet: bool = False
    #: the launcher's options (an instance of its ``Launcher.options``; None: their defaults)
    options: object = None

    def __post_init__(self):
        if self.options is None:
            object.__setattr__(self, "options", LAUNCHERS.get_class(self.launcher).options())


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and every registered launcher's options, a group each (the per-version scripts)."""
    parser.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local", type=str.lower,
                        help="where the per-version jobs run: " + "; ".join(
                            f"{launcher.name}: {launcher.description}" for launcher in LAUNCHERS.values()))
    for launcher in LAUNCHERS.values():
        if not fields(launcher.options):
            continue
        group = parser.add_argument_group(f"--launcher {launcher.name}")
        for item in fields(launcher.options):
            kwargs = dict(item.metadata["argparse"])
            default = list(item.default) if kwargs.get("action") == "append" else item.default
            group.add_argument(item.metadata["flag"], dest=item.name, default=default, help=item.metadata["help"],
                               **kwargs)


def launch_settings(args: argparse.Namespace) -> LaunchSettings:
    """The launch a command line asks for; a flag of a launcher other than the chosen one (``--cpus-per-job``
    with ``--launcher local``, say) is refused naming both, and the chosen launcher checks what it was given."""
    given = vars(args)
    chosen = LAUNCHERS.get_class(given.get("launcher", "local"))
    for launcher in LAUNCHERS.values():
        for item in fields(launcher.options):
            default = item.default if item.default is not MISSING else None
            if launcher is not chosen and item.name in given and _as_value(given[item.name]) != default:
                flag = item.metadata["flag"]
                raise UsageError(f"{flag} is a --launcher {launcher.name} flag; --launcher {chosen.name} cannot honour "
                                 f"it (use --launcher {launcher.name}, or leave {flag} out)")
    options = chosen.options(**{item.name: _as_value(given[item.name]) for item in fields(chosen.options)
                                if item.name in given})
    settings = LaunchSettings(chosen.name, bool(given.get("quiet", False)), options)
    if chosen.check is not None:
        resolve(chosen.check)(settings)
    return settings


def _as_value(value):
    """An option's value as its field holds it (a repeated flag's list as a tuple)."""
    return tuple(value) if isinstance(value, list) else value
