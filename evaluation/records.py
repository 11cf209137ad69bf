"""Load: what each version answered, read from its caches (or handed in by the real-time evaluation), checked
before anything is computed, and the one canonical order of versions.

A version contributes its test labels, DeepFool distances (softmax probabilities and logits where cached), its
failure model and, where the fit step kept them, its validation outputs. What a score or method learns from one
version is computed once and reused by every set it belongs to. The test truth is never in a record.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np

from DeepFailGuard import Assessment, DeepFailGuardModule
from distances import costs
from ModelManager import MODELS
from selection import SCORES
from storage import caches, layout, manifests
from storage.caches import VALIDATION_REMEDY, CachedAnswers
from storage.layout import CACHE_REMEDY
from storage.metadata import read_metadata
from storage.settings import DEEPFOOL, DistanceSettings
from storage.shifts import NO_SHIFT
from utils import UsageError


@dataclass
class VersionRecord:
    """What one version answered on a test set (and, where kept, on validation), and its failure model."""

    dataset: str
    model: str
    bug: int
    labels: np.ndarray
    distances: np.ndarray
    module: DeepFailGuardModule
    test_set: str  # which ground truth the labels answer ("" or "bug11"/"bug12")
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    #: what the version answered on validation, with the validation truth (None: not kept, as in the paper's release)
    validation: CachedAnswers | None = None
    #: what running it costs (``distances/costs.py``; None: not recorded, as for the paper's release) and its
    #: distance mode
    costs: dict | None = None
    mode: str = DEEPFOOL.mode
    #: the shift the test inputs were under (``storage/shifts.py``; ``none``: the clean test set)
    shift: str = NO_SHIFT
    #: what the distance mode measured besides on each test input (``DistanceMode.outputs``; the ``feature`` mode's
    #: fDBD parts and features)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: what the steps that made the version's files warned of them (at chance, an attack that flipped too few
    #: labels, a degenerate failure model), one line each
    warnings: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    #: what scores and methods learned from the validation outputs alone (:meth:`learn`); the records of one version
    #: under each shift of an evaluation share it (:meth:`share_learning`)
    _learned: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def test(self) -> CachedAnswers:
        return CachedAnswers(self.labels, self.distances, self.probabilities, self.logits, None, self.outputs)

    @cached_property
    def assessment(self) -> Assessment:
        """P(correct) and the ablation score of every test input: computed once, reused by every set."""
        return self.module.assess(self.distances)

    def assess(self, answers: CachedAnswers) -> Assessment:
        """The failure model's scores of ``answers`` (the test answers' are cached)."""
        return self.assessment if answers is self.test else self.module.assess(answers.distances)

    @property
    def confidence(self) -> np.ndarray:
        return self.assessment.confidence

    @property
    def val_acc(self) -> float:
        return self.module.val_acc

    def flops(self, attacked: bool) -> float:
        """FLOPs per input of running this version: its attack in its distance mode (which includes the forward
        pass) when ``attacked``, else the forward pass alone; NaN where its costs are not recorded."""
        return costs.member_flops(self.costs, self.mode if attacked else None)

    def has(self, need: str) -> bool:
        """Whether this version has an output a score or method needs (``selection.NEEDS``): one of its own, or one
        its distance mode measured."""
        return getattr(self, need, None) is not None or need in self.outputs

    def fitted(self, key: str, fit):
        """``fit(self)``, computed once per version and kept: what a score or method learns from this version."""
        if ("fit", key) not in self._cache:
            self._cache["fit", key] = fit(self)
        return self._cache["fit", key]

    def learn(self, key: str, fit):
        """``fit(self)`` where it reads only the validation outputs and the failure model (a score's fit, its
        cross-fitted validation scores): computed once per version and, after :meth:`share_learning`, shared by its
        records under every shift, which have the same validation outputs. :meth:`fitted` is per record: what it
        keeps may read the test answers."""
        if key not in self._learned:
            self._learned[key] = fit(self)
        return self._learned[key]

    def share_learning(self, other: "VersionRecord") -> bool:
        """Share ``other``'s :meth:`learn` results where it is this version with the same failure model and the
        same validation outputs (the same version under another shift); whether it did."""
        same = ((self.dataset, self.model, self.bug, self.mode) == (other.dataset, other.model, other.bug, other.mode)
                and self.module.val_acc == other.module.val_acc
                and self.validation is not None and other.validation is not None
                and same_answers(self.validation, other.validation))
        if same:
            self._learned = other._learned
        return same

    def score(self, name: str) -> np.ndarray:
        """The registered score ``name`` of every test input, fitted on this version's validation outputs."""
        if ("score", name) not in self._cache:
            score = SCORES[name]
            self._cache["score", name] = score.compute(self.learn(f"score {name}", score.fit), self.test, self)
        return self._cache["score", name]

    def probability_score(self, name: str) -> np.ndarray:
        """A probability score read for calibration: the paper's P(correct) (``--posterior paper``) exceeds 1 in
        its fallback (``log(1 + d)·a``), so failure prediction and calibration see it clipped to [0, 1],
        decisions the raw score."""
        return np.clip(self.score(name), 0.0, 1.0)


def share_learning(records: dict, others: dict) -> None:
    """Each record of ``records`` shares what was learned from its validation outputs with its version's record in
    ``others`` (the same versions under another shift), where they are the same
    (:meth:`VersionRecord.share_learning`)."""
    for key, record in records.items():
        if key in others and others[key] is not record:
            record.share_learning(others[key])


def same_answers(first: CachedAnswers, second: CachedAnswers) -> bool:
    """Whether two sets of cached answers hold the same arrays (every field and every extra output)."""
    def arrays(answers):
        named = {f.name: getattr(answers, f.name) for f in fields(answers) if f.name != "outputs"}
        return named | {f"outputs {name}": array for name, array in answers.outputs.items()}

    one, other = arrays(first), arrays(second)
    return one.keys() == other.keys() and all(
        (one[name] is None) == (other[name] is None) and (one[name] is None or np.array_equal(one[name], other[name]))
        for name in one)


def canonical_key(version: tuple[str, int]) -> tuple:
    """Where a ``(model, bug)`` version stands in the canonical order: the architectures' registry order (names
    not registered after them, alphabetically), then the fault id. Version sets, their members, the region of
    competence and every table follow it, whatever order the flags were typed in."""
    model, bug = version
    names = list(MODELS)
    return (names.index(model), "", bug) if model in names else (len(names), model, bug)


def canonical(versions):
    """``versions`` (``(model, bug)`` pairs, or records) in the canonical order."""
    return sorted(versions, key=lambda v: canonical_key((v.model, v.bug) if isinstance(v, VersionRecord) else v))


def load_cached_record(info_root, model_root, dataset: str, model: str, bug: int, num_classes: int | None = None,
                       distance: DistanceSettings = DEEPFOOL, shift: str = NO_SHIFT,
                       failure_model: str | None = None) -> VersionRecord | None:
    """A version's cached answers on the test set under ``shift`` (labels checked against ``num_classes`` where
    known) and its failure model (``failure_model``: fitted under shift, else on ``distance``'s mode) and
    validation outputs; None when that cache does not exist."""
    answers = caches.read_version_cache(info_root, model, dataset, bug, num_classes, distance.mode, shift)
    if answers is None:
        return None
    fitted_as = failure_model or distance.mode
    module = DeepFailGuardModule.of_version(None, info_root, model_root, dataset, model, bug, distance=distance,
                                            failure_model=fitted_as)
    return VersionRecord(dataset, model, bug, answers.labels, answers.distances, module, layout.test_set_of(bug),
                         answers.probabilities, answers.logits,
                         caches.read_validation_outputs(info_root, model, dataset, bug, num_classes, fitted_as),
                         costs.read(model_root, model, dataset, bug), distance.mode, shift, answers.outputs,
                         recorded_warnings(info_root, model_root, dataset, model, bug, distance.mode, fitted_as, shift,
                                           module))


def recorded_warnings(info_root, model_root, dataset: str, model: str, bug: int, mode: str, fitted_as: str,
                      shift: str, module: DeepFailGuardModule, live_attack: list[str] | None = None) -> list[str]:
    """What was warned of a version, once each: its training's (metadata), its fit's (manifest), its test
    attack's (the cache's manifest, or ``live_attack``: what the real-time evaluation found attacking it), and a
    degenerate failure model (also of the paper's, which have no manifests)."""
    metadata = layout.metadata_path(model_root, model, dataset, bug)
    found = list(read_metadata(metadata).get("warnings", [])) if metadata.is_file() else []
    steps = (("fit", fitted_as),) + ((("cache", mode),) if live_attack is None else ())
    for step, measured in steps:
        manifest = manifests.read(layout.manifest_path(info_root, step, model, dataset, bug, measured,
                                                       shift if step == "cache" else NO_SHIFT))
        found += manifest.warnings if manifest is not None else []
    found += live_attack or []
    if module.degenerate and not any("failure model" in line for line in found):
        found.append(f"{layout.version_key(model, dataset, bug)}: its {module.degenerate}")
    return list(dict.fromkeys(found))


def load_cached_versions(info_root, model_root, dataset: str, versions, distance: DistanceSettings = DEEPFOOL,
                         shift: str = NO_SHIFT, failure_model: str | None = None
                         ) -> tuple[dict[tuple[str, int], VersionRecord], dict[str, np.ndarray], list[str]]:
    """The cached records of a dataset's ``(model, bug)`` versions that have a cache of the test set under
    ``shift``, the ground truth of each test set they answer, and the versions without such a cache
    (``model/bugN``). Every record is checked: its arrays, against the others (``check_dataset``), and against its
    manifests (``manifests.check_version``)."""
    num_classes = caches.recorded_num_classes(info_root, model_root, dataset)
    records, missing = {}, []
    for model, bug in versions:
        record = load_cached_record(info_root, model_root, dataset, model, bug, num_classes, distance, shift,
                                    failure_model)
        if record is None:
            missing.append(f"{model}/bug{bug}")
        else:
            records[(model, bug)] = record
    truths = {test_set: caches.read_ground_truth(info_root, dataset, test_set, shift)
              for test_set in sorted({r.test_set for r in records.values()})}
    check_dataset(dataset, records, truths)  # what the files say of themselves first, then their manifests
    for record in canonical(records.values()):
        manifests.check_version(info_root, model_root, "fit", record.model, dataset, record.bug,
                                failure_model or distance.mode)
        manifests.check_version(info_root, model_root, "cache", record.model, dataset, record.bug, distance.mode,
                                shift)
    return records, truths, missing


def check_dataset(dataset: str, records: dict[tuple[str, int], VersionRecord], truths: dict[str, np.ndarray]) -> None:
    """Refuse (one line naming the files' step) a dataset whose records cannot be compared: answers of another
    length than their ground truth, softmax or logits of different widths, validation outputs of different
    validation splits. Validation outputs that do not fit the test cache (another number of classes, no input)
    are set aside first, with a note: the methods that learn from them skip that version, the rest run."""
    ordered = canonical(records.values())
    for record in ordered:
        _check_lengths(record, truths[record.test_set], dataset)
    widths = {f"{r.model} bug {r.bug}{where}": array.shape[1] for r in ordered
              for where, array in (("", r.probabilities), (" logits", r.logits)) if array is not None}
    if len(set(widths.values())) > 1:
        raise UsageError(f"{dataset}: the versions' softmax probabilities (and logits) have different numbers of "
                         f"classes {widths}; the cache is inconsistent, {CACHE_REMEDY}")
    classes = next(iter(widths.values()), None)
    for record in ordered:
        reason = _unfit_validation(record, classes)
        if reason:
            print(f"note: {dataset}: {record.model} bug {record.bug}'s validation outputs {reason}: the methods that "
                  f"learn from them skip it; {VALIDATION_REMEDY}", file=sys.stderr)
            record.validation = None
    kept = {f"{r.model} bug {r.bug}": r.validation.truth for r in ordered if r.validation is not None}
    if kept:
        first_name, first = next(iter(kept.items()))
        for name, truth in kept.items():
            if not np.array_equal(truth, first):
                raise UsageError(f"{dataset}: the validation outputs of {name} and {first_name} answer different "
                                 f"validation splits (another --max-inputs?); {VALIDATION_REMEDY}")


def _unfit_validation(record: VersionRecord, classes: int | None) -> str | None:
    """Why a version's validation outputs cannot stand beside its test answers (None: they can)."""
    validation = record.validation
    if validation is None:
        return None
    if not len(validation.labels):
        return "hold no input"
    width = validation.probabilities.shape[1]
    if classes is not None and width != classes:
        return f"have {width} classes where its test cache has {classes}"
    return None


def _check_lengths(record: VersionRecord, truth: np.ndarray, where: str) -> None:
    n = len(truth)
    for what, array in (("labels", record.labels), ("distances", record.distances),
                        ("probabilities", record.probabilities), ("logits", record.logits)):
        if array is not None and len(array) != n:
            raise UsageError(f"{where}: {record.model} bug {record.bug} has {len(array)} {what} but the ground "
                             f"truth has {n} inputs; the cache is inconsistent, {CACHE_REMEDY}")
