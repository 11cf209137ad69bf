"""The two steps that measure a version's boundary distances: ``fit`` (on the validation split, clean and under
``--fit-shifts``: the failure model and the validation outputs) and ``cache`` (on the test set, clean or under a
shift). They are jobs (``pipeline/jobs.py``): freshness checked by their manifests, inputs checked first, files written
atomically and committed by the manifest, written last."""

from __future__ import annotations

import itertools

import numpy as np

import FaultInjector
import ModelManager
from DatasetManager import shared_cache
from DeepFailGuard import DeepFailGuardTrainer
from distances import costs
from distances.feature import training_feature_mean
from failure_model.figures import save_kde_figure
from failure_model.kde import GaussianKDE
from mydataset import corruptions
from pipeline.jobs import DONE, Job, Outcome, skipped
from storage import caches, layout, manifests
from storage.files import check_writable, is_fresh
from storage.metadata import read_metadata
from storage.settings import DISTANCE_MODES
from storage.shifts import NO_SHIFT
from utils import UsageError, warn

#: the share of labels a mode that walks to the boundary must flip for its distances to be taken as boundary distances
FLIPPED_AT_LEAST = 0.5


def _load_for_attack(job: Job, bug: int):
    """The version's network (its checkpoint must exist: fail fast otherwise) and its data."""
    model = ModelManager.load_version(job.model, job.dataset, bug, job.settings.device, roots=job.roots)
    data = shared_cache(job.roots.data).get(job.dataset, bug, job.settings.attack.max_inputs)
    return model, data


def _ensure_costs(job: Job) -> None:
    """A finished step still costs a version of ours that has no costs for its mode (``costs.ensure``)."""
    mode = job.settings.attack.distance.mode
    if not costs.missing(job.roots.model, job.model, job.dataset, job.bug, mode):
        return
    model, data = _load_for_attack(job, job.bug)
    costs.ensure(job.roots.model, model, data, job.settings.device, mode)


def run_fit(job: Job) -> Outcome:
    """Fit the version's failure model: KDEs of its validation distances, correct vs wrong, and its figure; keep
    what the version answered on validation (labels, softmax, logits, distances, truth) for the methods that fit
    on it. With ``--fit-shifts`` the validation inputs are attacked clean and under each shift, and every file goes
    by the failure model's name (``AttackSettings.failure_model``). The files are committed as a unit by the
    version's manifest, written last."""
    roots, s = job.roots, job.settings
    mode, fitted_as, fit_shifts = s.attack.distance.mode, s.attack.failure_model, s.attack.fit_shifts
    correct_path, wrong_path = layout.kde_paths(roots.info, job.model, job.dataset, job.bug, fitted_as)
    figure_path = layout.kde_figure_path(roots.output, job.model, job.dataset, job.bug, fitted_as)
    validation_paths = layout.validation_paths(roots.info, job.model, job.dataset, job.bug, fitted_as).values()
    manifest = layout.manifest_path(roots.info, "fit", job.model, job.dataset, job.bug, fitted_as)
    data = shared_cache(roots.data).get(job.dataset, job.bug, s.attack.max_inputs)
    made = {"fit_shifts": [corruptions.describe(shift) for shift in fit_shifts]} if fit_shifts else None
    reason = _out_of_date(job, manifest, [correct_path, wrong_path, *validation_paths],
                          len(data.y_val) * (1 + len(fit_shifts)), shift=made)
    if not s.force and reason is None:
        if not figure_path.is_file():  # e.g. a run killed between the KDEs and their figure
            _draw_figure_from_kdes(correct_path, wrong_path, figure_path, job.key)
        _ensure_costs(job)
        return skipped(job)
    model, data = _load_for_attack(job, job.bug)
    costs.ensure(roots.model, model, data, s.device, mode)
    trainer = DeepFailGuardTrainer(s.attack.distance, progress=not s.quiet)
    attacker = s.attack.distance.attacker(model.model_structure, s.device)
    training_feature_mean(attacker, model, data, s.attack.batch_size)
    size = model.metadata["image_size"]
    loaders = [ModelManager.loader_for(model, corruptions.shifted(data, "val", size, shift), "val", s.attack.batch_size)
               for shift in (NO_SHIFT, *fit_shifts)]
    for folder in {correct_path.parent, manifest.parent}:
        check_writable(folder)  # before the manifest goes: a run that cannot write changes nothing
    manifests.discard(manifest)
    fit = trainer.train(model.model_structure, itertools.chain(*loaders), correct_path, wrong_path, device=s.device,
                        attacker=attacker, fitted_as=fitted_as)
    caches.write_validation_outputs(roots.info, job.model, job.dataset, job.bug, fit.result, fit.result.targets,
                                    fitted_as)
    save_kde_figure(fit.distances, fit.correct, fit.correct_kde, fit.wrong_kde, figure_path,
                    title=f"{job.key}: validation distances")
    warnings = _said([*flip_warnings(job.key, job.settings.attack.distance, fit.result.success, "validation"),
                      *_failure_model_warnings(job, fit.correct)])
    manifests.write(manifest, manifests.describe("fit", job.key, fitted_as, len(fit.correct), _checkpoint(job),
                                                 roots.info, [correct_path, wrong_path, *validation_paths],
                                                 shift=made, warnings=warnings))
    return Outcome(job, DONE, {"n_val": len(fit.correct), "correct": int(fit.correct.sum()),
                               "wrong": int((~fit.correct).sum()), "flipped": f"{fit.result.success.mean():.3f}"},
                   note=_redone("fitted", reason, s.force))


def _draw_figure_from_kdes(correct_path, wrong_path, figure_path, key: str) -> None:
    """The figure of a fitted failure model, from its KDE files alone: their points are the distances."""
    correct_kde, wrong_kde = GaussianKDE.load(correct_path), GaussianKDE.load(wrong_path)
    distances = np.concatenate([correct_kde.points, wrong_kde.points])
    correct = np.arange(len(distances)) < correct_kde.n
    save_kde_figure(distances, correct, correct_kde, wrong_kde, figure_path,
                             title=f"{key}: validation distances")


def run_cache(job: Job) -> Outcome:
    """Cache the version's test-set distances, labels, success flags, softmax and logits in the paper's layout
    (of the test set under the job's shift: in its folder beside the clean cache), committed as a unit by the
    version's manifest (written last, with the ground truth they answer and how the inputs were corrupted)."""
    roots, s, shift = job.roots, job.settings, job.shift
    data = shared_cache(roots.data).get(job.dataset, job.bug, s.attack.max_inputs)
    truth_path = caches.write_ground_truth(roots.info, job.dataset, job.bug, data.y_test.numpy(), shift)
    mode = s.attack.distance.mode
    outputs = list(layout.cache_paths(roots.info, job.model, job.dataset, job.bug, mode, shift).values())
    manifest = layout.manifest_path(roots.info, "cache", job.model, job.dataset, job.bug, mode, shift)
    made = None if shift == NO_SHIFT else corruptions.describe(shift)
    reason = _out_of_date(job, manifest, outputs, len(data.y_test), truth_path, made)
    if not s.force and reason is None:
        _ensure_costs(job)
        return skipped(job)
    model, data = _load_for_attack(job, job.bug)
    costs.ensure(roots.model, model, data, s.device, mode)
    test = corruptions.shifted(data, "test", model.metadata["image_size"], shift)
    loader = ModelManager.loader_for(model, test, "test", s.attack.batch_size)
    attacker = s.attack.distance.attacker(model.model_structure, s.device)
    training_feature_mean(attacker, model, data, s.attack.batch_size)
    check_writable(manifest.parent)  # before the manifest goes: a run that cannot write changes nothing
    manifests.discard(manifest)
    result = attacker.attack_loader(loader, progress=not s.quiet, description=job.label)
    caches.write_version_cache(roots.info, job.model, job.dataset, job.bug, result, mode, shift)
    warnings = _said(flip_warnings(job.key, job.settings.attack.distance, result.success, test_inputs(shift)))
    manifests.write(manifest, manifests.describe("cache", job.key, mode, len(result.labels), _checkpoint(job),
                                                 roots.info, outputs, truth_path, made, warnings))
    accuracy = float((result.labels == data.y_test.numpy()).mean())
    return Outcome(job, DONE, {"n_test": len(result.labels), "test_acc": f"{accuracy:.4f}",
                               "median_d": f"{np.median(result.distances):.4f}"},
                   note=_redone("cached", reason, s.force))


# ---------------------------------------------------------------------------------------------
# health: what a step finds its files cannot mean, said where it is found and kept in the manifest
# ---------------------------------------------------------------------------------------------

def flip_warnings(key: str, distance, success, inputs: str) -> list[str]:
    """An attack in ``distance``'s mode that flipped no label of ``key``'s ``inputs``, or under half of them in a
    mode that walks to the boundary (``DistanceMode.reaches_boundary``): its distances are not distances to the
    boundary. (The cache step keeps the line in its manifest; the real-time evaluation finds it itself.)"""
    if success is None or not len(success):
        return []
    rate, walks = float(np.mean(success)), DISTANCE_MODES.get_class(distance.name).reaches_boundary
    if rate > 0 and not (walks and rate < FLIPPED_AT_LEAST):
        return []
    return [f"{key}: the {distance.mode} attack flipped the label of {rate:.1%} of its {len(success)} {inputs} "
            "inputs: its distances are not distances to the decision boundary (a version at chance, or an attack "
            "stopped short: more --steps?)"]


def test_inputs(shift: str) -> str:
    """How the flip warning names a test set under ``shift``."""
    return "test" if shift == NO_SHIFT else f"{shift} test"


def _failure_model_warnings(job: Job, correct: np.ndarray) -> list[str]:
    """A failure model fitted without a wrong (or without a correct) validation input: it cannot tell them apart."""
    right, wrong = int(correct.sum()), int((~correct).sum())
    if right and wrong:
        return []
    missing = "wrong" if right else "correct"
    return [f"{job.key}: its failure model was fitted on {right} correct and {wrong} wrong validation inputs: with no "
            f"{missing} one it cannot predict a failure, and failure_prediction.csv leaves its failure-model scores "
            "empty (more validation inputs: --max-inputs)"]


def _said(warnings: list[str]) -> list[str]:
    for line in warnings:
        warn(line)
    return warnings


# ---------------------------------------------------------------------------------------------
# freshness: is a version's fit or cache up to date?
# ---------------------------------------------------------------------------------------------

def _checkpoint(job: Job) -> str | None:
    """The fingerprint of the checkpoint the job reads, checked against what its metadata records. A checkpoint
    that is not the one recorded is loaded first, so that a hostile or broken file is refused for what it is."""
    try:
        return manifests.checkpoint_fingerprint(job.roots.model, job.model, job.dataset, job.bug, verify=True)
    except UsageError:
        ModelManager.load_version(job.model, job.dataset, job.bug, "cpu", roots=job.roots)
        raise


def _out_of_date(job: Job, manifest, outputs, inputs: int, ground_truth=None, shift: dict | None = None) -> str | None:
    """None when the version's files of this step are up to date, else why not (``manifests.mismatch``, or one of
    ``outputs`` missing: a file the mode keeps since its manifest was written, the ``feature`` mode's features). The
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
    reason = manifests.mismatch(found, job.roots.info, checkpoint, inputs, ground_truth, shift)
    absent = [path for path in outputs if not path.is_file()]  # a file the step keeps now, its manifest predates
    return reason or (f"{absent[0].name} is missing" if absent else None)


#: why a version's step runs the first time (or after a run killed before its manifest)
MISSING = "missing"


def _redone(done: str, reason: str | None, forced: bool) -> str:
    """The status of a step that ran: why, where it redid finished work."""
    if reason in (None, MISSING):
        return f"{done} (forced)" if forced and reason is None else done
    return f"{done} ({reason})"
