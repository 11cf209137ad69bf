"""The steps that make versions: ``train`` (a version trained with its fault, faults 0-9 and 13 and up, or
re-measured with ``--mode evaluate``) and ``derive`` (faults 10-12: the healthy weights measured on the faulty test
set). Each records the version's costs in its metadata (``distances/costs.py``) as it measures it."""

from __future__ import annotations

import FaultInjector
import ModelManager
from distances import costs
from pipeline.jobs import DONE, Job, Outcome, skipped
from storage import layout
from utils import UsageError


def run_train(job: Job) -> Outcome:
    """Train a version (or, with ``mode="evaluate"``, re-measure it); ``derive`` measures a test-data fault."""
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
        return skipped(job, **_train_cells(model))
    measure = costs.record_unless_inherited if job.step == "derive" else costs.record
    model = ModelManager.create_model(job.model, job.dataset, s.mode, job.bug, device=s.device, settings=s.training,
                                      roots=roots, progress=not s.quiet, measure=measure)
    note = "evaluated" if s.mode == "evaluate" or job.step == "derive" else "trained"
    if s.mode == "train" and reason not in (None, "missing"):
        note += f" ({reason})"
    return Outcome(job, DONE, _train_cells(model), note=note)


def _train_cells(model) -> dict:
    return {"epochs": model.metadata.get("epochs", ""), "val_acc": _fraction(model.val_acc),
            "test_acc": _fraction(model.test_acc), "train_s": model.metadata.get("train_seconds", "")}


def _fraction(value) -> str:
    return f"{value:.4f}" if value is not None else "-"


