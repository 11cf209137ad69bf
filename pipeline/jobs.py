"""The grid's per-version work as small picklable jobs, and what running one reports (``pipeline/runner.py`` runs
them; ``pipeline/training_steps.py`` and ``pipeline/attack_steps.py`` are the steps).

A job is a description — step, dataset, model, fault, settings, the four roots — that any process
can run: in the driver (``local``), on a Ray worker or as a Slurm array task (``launchers/``).
Each step checks freshness (a finished version is skipped), checks its inputs (a missing upstream
file fails fast with one line instead of waiting), does the work and writes atomically. Jobs share
nothing but files.

| step | needs | writes |
|---|---|---|
| ``train`` (faults 0-9) | the dataset | checkpoint + metadata |
| ``derive`` (faults 10-12) | the healthy version's checkpoint | metadata measured on the faulty test set |
| ``fit`` | the version's checkpoint | the two KDE files + figure + the validation outputs |
| ``cache`` | the version's checkpoint | its cache (labels, success, softmax, logits, distances) + ground truth |
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from storage import layout
from storage.settings import THREADS, AttackSettings, Roots, TrainSettings
from storage.shifts import NO_SHIFT

STEPS = ("train", "derive", "fit", "cache")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
#: the status table's columns after "version" and before "status", per step
COLUMNS = {
    "train": ("epochs", "val_acc", "test_acc", "train_s"),
    "derive": ("epochs", "val_acc", "test_acc", "train_s"),
    "fit": ("n_val", "correct", "wrong", "flipped"),
    "cache": ("n_test", "test_acc", "median_d"),
}


@dataclass(frozen=True)
class JobSettings:
    """What a step's flags asked for, built once by the script: the same object for every job of a launch
    (but a training job's epochs, which a preset may set per architecture)."""

    device: str | None = None
    force: bool = False
    quiet: bool = False
    #: CPU threads the job computes with, wherever it runs (``--threads``)
    threads: int = THREADS
    #: the train step's ``--mode``: train missing versions, or re-measure existing ones ("evaluate")
    mode: str = "train"
    training: TrainSettings = field(default_factory=TrainSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)


@dataclass(frozen=True)
class Job:
    """One step of one version, with the step's settings."""

    step: str
    dataset: str
    model: str
    bug: int
    roots: Roots
    settings: JobSettings = field(default_factory=JobSettings, hash=False, compare=False)
    #: the cache step's test set: clean (``none``) or under a shift (``storage/shifts.py``)
    shift: str = NO_SHIFT

    @property
    def key(self) -> str:
        return layout.version_key(self.model, self.dataset, self.bug)

    @property
    def label(self) -> str:
        """The version, and the shift its test set is under (``resnet_DIGITS fog:3``)."""
        return self.key if self.shift == NO_SHIFT else f"{self.key} {self.shift}"

    @property
    def name(self) -> str:
        return f"{self.step} {self.label}"

    def depends_on(self, other: "Job") -> bool:
        """A derived version needs its healthy checkpoint; fit and cache need the version's checkpoint."""
        if (other.dataset, other.model, other.roots.model) != (self.dataset, self.model, self.roots.model) \
                or other.step not in ("train", "derive"):
            return False
        if self.step == "derive":
            return other.step == "train" and other.bug == layout.checkpoint_fault(self.bug)  # the healthy version
        if self.step in ("fit", "cache"):
            return other.bug in (self.bug, layout.checkpoint_fault(self.bug))
        return False


@dataclass
class Outcome:
    """What a job did: its status, the table cells it reports, and why it failed."""

    job: Job
    status: str
    cells: dict = field(default_factory=dict)
    note: str = ""  # e.g. "up to date", "settings changed: ..."
    reason: str = ""  # a failure's one line
    log: str = ""  # where the failure's full output is (launchers that keep logs)
    seconds: float = 0.0
    usage_error: bool = False  # bad input (exit 2) rather than a bug (exit 1)
    #: the traceback of an exception the job raised, or the engine's word on a worker that died under it: the job
    #: did not finish, so the jobs that need it are not run (the launcher writes it to the failure's log)
    trace: str = ""
    #: where it ran (host, process, the GPUs that process may see), set by the engines' workers
    worker: str = ""


def print_outcomes(outcomes: list) -> None:
    """One table per step: version, the step's measurements, status (with a failure's reason and log)."""
    for step in dict.fromkeys(o.job.step for o in outcomes):
        columns = COLUMNS[step]
        widths = [max(6, len(c)) for c in columns]
        first = max(28, *(len(o.job.label) + 1 for o in outcomes if o.job.step == step))
        print(f"{'version':<{first}} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths)) + "  status")
        for o in (o for o in outcomes if o.job.step == step):
            cells = " ".join(f"{o.cells.get(c, '')!s:>{w}}" for c, w in zip(columns, widths))
            print(f"{o.job.label:<{first}} {cells}  {status_text(o)}")
    sys.stdout.flush()


def status_text(outcome) -> str:
    """A job's status cell: skipped and why, its failure's first line and log, or what it did."""
    if outcome.status == "skipped":
        return f"skipped ({outcome.note})"
    if outcome.status == "failed":
        reason = outcome.reason.splitlines()[0] if outcome.reason else "failed"
        return f"FAILED: {reason}" + (f" [log: {outcome.log}]" if outcome.log else "")
    return outcome.note or "done"


def step_of(bug: int) -> str:
    """Training step of a version: test-data faults are derived from the healthy weights, not trained."""
    import FaultInjector  # deferred: the fault table loads torch; an engine's worker imports the jobs without it

    return "derive" if FaultInjector.is_test_data_only(bug) else "train"


def skipped(job: Job, note: str = "up to date", **cells) -> Outcome:
    """The outcome of a job whose work was finished already."""
    return Outcome(job, SKIPPED, cells, note=note)
