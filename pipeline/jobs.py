"""The grid's per-version work as small picklable jobs, and the one function that runs any of them.

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

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import FaultInjector
from storage import layout, manifests
from storage.files import is_fresh
from storage.layout import Roots
from storage.metadata import read_metadata
from storage.settings import NO_SHIFT, THREADS, AttackSettings, TrainSettings
from utils import UsageError

STEPS = ("train", "derive", "fit", "cache")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
#: the per-version lock files live in this folder of the model root (train) and the info root (fit, cache)
LOCK_FOLDER = ".locks"
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
    #: the cache step's test set: clean (``none``) or under a shift (``shifts.py``)
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
            return other.step == "train" and other.bug == FaultInjector.HEALTHY
        if self.step in ("fit", "cache"):
            return other.bug in (self.bug, FaultInjector.checkpoint_fault(self.bug))
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
    return "derive" if FaultInjector.is_test_data_only(bug) else "train"


def run_job(job: Job) -> Outcome:
    """Run one job in this process, with its thread count, under its version's lock; a UsageError becomes a
    failed outcome."""
    import torch

    started = time.perf_counter()
    try:
        cpus = os.cpu_count() or 1
        if job.settings.threads > cpus:
            raise UsageError(f"--threads {job.settings.threads}: the machine running {job.name} has {cpus} CPUs")
        torch.set_num_threads(job.settings.threads)
        with version_lock(job):
            outcome = RUNNERS[job.step](job)
    except UsageError as exc:
        outcome = Outcome(job, FAILED, reason=str(exc), usage_error=True)
    outcome.seconds = time.perf_counter() - started
    return outcome


@contextlib.contextmanager
def version_lock(job: Job):
    """Hold the version's lock while its step runs, so two launches over the same roots never work on the
    same version at once: the second waits, then finds the work fresh and skips it.

    The lock file lives beside what the step writes (``{root}/.locks/``); ``filelock`` is optional: without
    it (the laptop install) the step runs unlocked, as one launch at a time needs no lock.
    """
    try:
        from filelock import FileLock
    except ImportError:
        yield
        return
    root = job.roots.model if job.step in ("train", "derive") else job.roots.info
    folder = os.path.join(root, LOCK_FOLDER)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write to {root}: {exc.strerror or exc}; choose a writable folder") from exc
    # train and derive of one architecture share the healthy checkpoint: one lock for both
    bug = FaultInjector.checkpoint_fault(job.bug) if job.step in ("train", "derive") else job.bug
    name = f"{job.step if job.step in ('fit', 'cache') else 'train'}_{layout.version_key(job.model, job.dataset, bug)}"
    name += f"_{layout.shift_folder(job.shift)}" if job.shift != NO_SHIFT else ""
    with FileLock(os.path.join(folder, f"{name}.lock")):
        yield


def import_step_modules() -> None:
    """Import what the steps import when they first run: an engine's worker calls this when it starts, so that
    its first job does not pay the imports (torchvision's alone take seconds) and every job's time is its own."""
    import Attacker  # noqa: F401
    import DeepFailGuard  # noqa: F401
    import ModelManager  # noqa: F401
    from evaluation import figures as plotting  # noqa: F401
    from failure_model import kde  # noqa: F401


def _datasets(data_root: str):
    """The process's dataset cache for ``data_root``: jobs of one dataset in one worker load it once."""
    from DatasetManager import shared_cache

    return shared_cache(data_root)


def _skipped(job: Job, note: str = "up to date", **cells) -> Outcome:
    return Outcome(job, SKIPPED, cells, note=note)


# ---------------------------------------------------------------------------------------------
# the training steps (the fit and cache steps, which measure distances, are ``attack_steps.py``'s)
# ---------------------------------------------------------------------------------------------

def run_train(job: Job) -> Outcome:
    """Train a version (or, with ``mode="evaluate"``, re-measure it); ``derive`` measures a test-data fault."""
    import ModelManager

    s, roots = job.settings, job.roots
    if job.step == "derive" and s.mode == "train" and \
            not ModelManager.is_trained(roots.model, job.model, job.dataset, FaultInjector.HEALTHY):
        healthy = layout.checkpoint_path(roots.model, job.model, job.dataset, FaultInjector.HEALTHY)
        raise UsageError(f"{job.key} needs the healthy version's checkpoint {healthy}, which does not exist (did its "
                         "train job fail?)")
    reason = ModelManager.training_status(roots.model, job.model, job.dataset, job.bug, s.training)
    if job.step == "derive" and s.mode == "train" and reason not in (None, "missing"):
        raise UsageError(f"{job.key} reuses the healthy version's weights, trained with other settings ({reason}); "
                         "train the healthy version with these settings first (did its train job fail?)")
    if s.mode == "train" and not s.force and reason is None:
        model = ModelManager.create_model(job.model, job.dataset, "load", job.bug, device="cpu", roots=roots)
        return _skipped(job, **_train_cells(model))
    model = ModelManager.create_model(job.model, job.dataset, s.mode, job.bug, device=s.device, settings=s.training,
                                      roots=roots, progress=not s.quiet)
    note = "evaluated" if s.mode == "evaluate" or job.step == "derive" else "trained"
    if s.mode == "train" and reason not in (None, "missing"):
        note += f" ({reason})"
    return Outcome(job, DONE, _train_cells(model), note=note)


def _train_cells(model) -> dict:
    return {"epochs": model.metadata.get("epochs", ""), "val_acc": _fraction(model.val_acc),
            "test_acc": _fraction(model.test_acc), "train_s": model.metadata.get("train_seconds", "")}


def _fraction(value) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _checkpoint(job: Job) -> str | None:
    """The fingerprint of the checkpoint the job reads, checked against what its metadata records. A checkpoint
    that is not the one recorded is loaded first, so that a hostile or broken file is refused for what it is."""
    import ModelManager

    try:
        return manifests.checkpoint_fingerprint(job.roots.model, job.model, job.dataset, job.bug, verify=True)
    except UsageError:
        ModelManager.load_version(job.model, job.dataset, job.bug, "cpu", roots=job.roots)
        raise


def _out_of_date(job: Job, manifest, outputs, inputs: int, ground_truth=None, shift: dict | None = None) -> str | None:
    """None when the version's files of this step are up to date, else why not (``manifests.mismatch``). The
    paper's released versions (no metadata of ours) have no manifest: for them, make's rule on the files' times."""
    metadata = layout.metadata_path(job.roots.model, job.model, job.dataset, FaultInjector.checkpoint_fault(job.bug))
    if not manifests.is_ours(metadata):
        checkpoint = layout.checkpoint_path(job.roots.model, job.model, job.dataset, job.bug)
        sources = [checkpoint, *([ground_truth] if ground_truth is not None else [])]
        return None if is_fresh(outputs, sources) else "missing or older than the checkpoint"
    read_metadata(metadata)  # a damaged version is refused here, not taken as up to date
    checkpoint = _checkpoint(job)
    try:
        found = manifests.read(manifest)
    except UsageError as exc:
        return str(exc).split(";")[0]
    if found is None:
        return MISSING
    return manifests.mismatch(found, job.roots.info, checkpoint, inputs, ground_truth, shift)


#: why a version's step runs the first time (or after a run killed before its manifest)
MISSING = "missing"


def _redone(done: str, reason: str | None, forced: bool) -> str:
    """The status of a step that ran: why, where it redid finished work."""
    if reason in (None, MISSING):
        return f"{done} (forced)" if forced and reason is None else done
    return f"{done} ({reason})"


def _run_fit(job: Job) -> Outcome:
    from pipeline.attack_steps import run_fit

    return run_fit(job)


def _run_cache(job: Job) -> Outcome:
    from pipeline.attack_steps import run_cache

    return run_cache(job)


RUNNERS = {"train": run_train, "derive": run_train, "fit": _run_fit, "cache": _run_cache}
