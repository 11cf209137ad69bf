"""The failure predictor and the selector.

- ``DeepFailGuardTrainer`` fits, per version, a KDE of the DeepFool distances of correctly and of
  wrongly classified validation inputs.
- ``DeepFailGuardModule`` turns a distance into P(correct | d) with the version's validation
  accuracy ``a`` as prior: ``a·f_c(d) / (a·f_c(d) + (1 − a)·f_w(d))``, computed in log space.
- ``DeepFailGuard`` answers each input with the label of the version whose P(correct) is highest
  (the first such version on ties).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np
import torch

from Attacker import AttackResult
from distances.concurrent import attack_concurrently
from failure_model.kde import GaussianKDE
from storage.caches import check_distances, read_version_cache
from storage.layout import cache_path, find_kde_files, version_key
from storage.metadata import recorded_validation_accuracy
from storage.settings import DEEPFOOL, DEEPFOOL_MODE, DEFAULT_INFO_ROOT, DistanceSettings, mode_flag
from utils import UsageError


@dataclass
class FailureModelFit:
    """What fitting saw: validation distances, whether each input was classified correctly."""

    distances: np.ndarray
    correct: np.ndarray
    result: AttackResult
    correct_kde: GaussianKDE
    wrong_kde: GaussianKDE

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    def __iter__(self):
        """Unpacks as the paper's ``correct_kde, wrong_kde = DeepFailGuardTrainer.train(...)``."""
        return iter((self.correct_kde, self.wrong_kde))


class _ClassOrInstanceMethod:
    """A method the paper called on the class (``DeepFailGuardTrainer.train(...)``): called on the
    class it runs on a default-configured instance, called on an instance with that instance's settings."""

    def __init__(self, function):
        self.function = function
        self.__doc__ = function.__doc__

    def __get__(self, instance, owner):
        return types.MethodType(self.function, owner() if instance is None else instance)


class DeepFailGuardTrainer:
    """Fits a version's two KDEs from its validation distances (DeepFool, foolbox semantics)."""

    def __init__(self, distance: DistanceSettings = DEEPFOOL, progress: bool = False):
        self.distance = distance
        self.progress = progress

    @_ClassOrInstanceMethod
    def train(self, pytorch_model, val_dataloader, correct_kde_path, wrong_kde_path, device=None, attacker=None,
              fitted_as: str | None = None) -> FailureModelFit:
        """Attack the validation inputs (with ``attacker``, else one built from the settings), fit and save the two
        KDEs, recorded as fitted on ``fitted_as`` (default: the distance mode; ``AttackSettings.failure_model``)."""
        attacker = attacker or self.distance.attacker(pytorch_model, device)
        result = attacker.attack_loader(val_dataloader, progress=self.progress, description="validation DeepFool")
        if result.targets is None:
            raise UsageError("the validation loader must yield (images, labels) batches")
        fit = self.fit(result, result.targets)
        fit.correct_kde.save(correct_kde_path, distance=fitted_as or self.distance.mode)
        fit.wrong_kde.save(wrong_kde_path, distance=fitted_as or self.distance.mode)
        return fit

    @staticmethod
    def fit(result: AttackResult, truth: np.ndarray) -> FailureModelFit:
        """Split distances by correctness and fit one KDE to each group.

        A group with fewer than two distinct distances borrows its width from the spread of all
        validation distances; an empty group (no wrong inputs, say) gives the empty density.
        """
        if len(truth) != len(result.distances):
            raise UsageError(f"{len(result.distances)} distances but {len(truth)} ground-truth labels")
        correct = result.labels == truth
        spread = float(np.std(result.distances, ddof=1)) if len(result.distances) > 1 else None
        return FailureModelFit(result.distances, correct, result,
                               GaussianKDE.fit(result.distances[correct], fallback_scale=spread),
                               GaussianKDE.fit(result.distances[~correct], fallback_scale=spread))


class DeepFailGuardModule:
    """One version's failure predictor; ``model`` may be None when only cached distances are used."""

    def __init__(self, model, correct_kde_path, wrong_kde_path, val_acc: float, device=None, name: str = "",
                 image_size: int | None = None, distance: DistanceSettings = DEEPFOOL, accuracy_source: str = ""):
        self.model = model
        #: which entry of a device list this version was given (``--devices``): versions with distinct slots
        #: may run side by side even on the CPU (:func:`attack_concurrently`)
        self.device_slot = None
        self.correct_kde = self.load_kde(correct_kde_path)
        self.wrong_kde = self.load_kde(wrong_kde_path)
        self.val_acc = check_accuracy(val_acc, accuracy_source or name or str(correct_kde_path))
        self.name = name
        self.image_size = image_size or getattr(model, "metadata", {}).get("image_size")
        network = getattr(model, "model_structure", model)
        # deployment needs the distances and labels, not whether the attack's last point flipped the label
        self.attacker = None if network is None else distance.attacker(network, device, image_size=self.image_size,
                                                                       check_success=False)

    @classmethod
    def of_version(cls, model, info_root, model_root, dataset: str, model_name: str, bug: int,
                   device=None, distance: DistanceSettings = DEEPFOOL,
                   failure_model: str | None = None) -> "DeepFailGuardModule":
        """A version's failure predictor from its files: its KDEs (ours or the paper's) and its validation
        accuracy (its metadata, else the paper's figure). ``model`` may be None for cached distances.
        ``failure_model``: the KDEs' name when fitted under shift (``AttackSettings.failure_model``)."""
        fitted_as = failure_model or distance.mode
        correct_kde, wrong_kde = find_kde_files(info_root, model_name, dataset, bug, fitted_as)
        val_acc, source = recorded_validation_accuracy(model_root, model_name, dataset, bug)
        module = cls(model, correct_kde, wrong_kde, val_acc, device=device, name=version_key(model_name, dataset, bug),
                     distance=distance, accuracy_source=source)
        for path, kde in ((correct_kde, module.correct_kde), (wrong_kde, module.wrong_kde)):
            fitted_on = kde.distance or DEEPFOOL_MODE
            if fitted_on != fitted_as:
                raise UsageError(f"{path} was fitted on {fitted_on} distances, but this run measures {fitted_as} "
                                 f"distances; refit with main_train_DeepFailGuard.py{mode_flag(fitted_as)}")
        return module

    @staticmethod
    def load_kde(path) -> GaussianKDE:
        """Our ``.npz`` or the paper's pickled ``gaussian_kde`` (restricted unpickler)."""
        return GaussianKDE.load(path)

    @property
    def degenerate(self) -> str | None:
        """Why this failure model cannot predict a failure (fitted without a wrong, or without a correct, validation
        input: every distance then gets the same verdict), or None where it can."""
        right, wrong = self.correct_kde.n, self.wrong_kde.n
        if right and wrong:
            return None
        return f"failure model fitted on {right} correct and {wrong} wrong validation inputs"

    def log_densities(self, distances) -> tuple[np.ndarray, np.ndarray]:
        distances = check_distances(distances, self.name)
        return self.correct_kde.logpdf(distances), self.wrong_kde.logpdf(distances)

    def confidence(self, distances) -> np.ndarray:
        """P(correct | d) per distance, from log densities (never 0/0)."""
        return self.assess(distances).confidence

    def density_margin(self, distances) -> np.ndarray:
        """f_c(d) − f_w(d): the paper's "distance only" ablation score (no prior)."""
        return self.assess(distances).margin

    #: how :meth:`assess` scores distances: None for the log-space posterior (:meth:`log_assessment`), or a
    #: function ``(module, distances) -> Assessment`` such as ``evaluation.paper.paper_assessment``
    #: (``--posterior paper``)
    posterior_rule = None

    def assess(self, distances) -> "Assessment":
        """Both scores of every distance from one evaluation of the two KDEs (the expensive step)."""
        if self.posterior_rule is not None:
            return self.posterior_rule(self, distances)
        return self.log_assessment(distances)

    def log_assessment(self, distances) -> "Assessment":
        """The default scores: the posterior in log space (never 0/0) and the density margin."""
        log_correct, log_wrong = self.log_densities(distances)
        return Assessment(posterior(log_correct, log_wrong, self.val_acc), density_margin(log_correct, log_wrong))

    def attack(self, images: torch.Tensor) -> AttackResult:
        """DeepFool on a batch (resized to the size this version sees)."""
        if self.attacker is None:
            raise UsageError(f"version {self.name or '?'} was built without a network; "
                             "it can only use cached distances")
        return self.attacker.attack(images)

    def attack_loader(self, loader, progress: bool = False) -> AttackResult:
        if self.attacker is None:
            raise UsageError(f"version {self.name or '?'} was built without a network; "
                             "it can only use cached distances")
        return self.attacker.attack_loader(loader, progress=progress, description=f"DeepFool {self.name}")

    # the paper's names: (P(correct), the version's labels) of a batch, a loader, a version's test cache

    def cal_confidence(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        result = self.attack(image.unsqueeze(0) if image.ndim == 3 else image)
        return self.confidence(result.distances), result.labels

    def cal_confidence_for_batch(self, dataloader, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        result = self.attack_loader(dataloader, progress=progress)
        return self.confidence(result.distances), result.labels

    def cal_confidence_for_batch_cached(self, dataset, info_root=DEFAULT_INFO_ROOT) -> tuple[np.ndarray, np.ndarray]:
        answers = self.read_cache(dataset, info_root)
        return self.confidence(answers.distances), answers.labels

    def read_cache(self, dataset, info_root=DEFAULT_INFO_ROOT):
        """This version's cached test answers on ``dataset`` (a ``MyData`` or a name), under ``info_root``."""
        if self.model is None:
            raise UsageError(f"version {self.name or '?'} was built without its model, so its cache cannot be named")
        dataset_name = getattr(dataset, "dataset_name", dataset)
        answers = read_version_cache(info_root, self.model.model_name, dataset_name, self.model.bug_id)
        if answers is None:
            path = cache_path(info_root, self.model.model_name, dataset_name, self.model.bug_id, "distances")
            raise UsageError(f"no test cache {path} (and its dnn_labels): run main_cache_test_distances.py first")
        return answers


def posterior(log_correct: np.ndarray, log_wrong: np.ndarray, val_acc: float) -> np.ndarray:
    """``a·f_c / (a·f_c + (1 − a)·f_w)`` from ``log f_c``, ``log f_w``.

    Where both weighted densities are zero (only possible with an empty KDE and a prior of 0 or 1,
    or two empty KDEs) the prior itself is returned.
    """
    with np.errstate(divide="ignore"):
        log_a, log_not_a = np.log(val_acc), np.log1p(-val_acc)
    weighted_correct = log_a + log_correct
    weighted_wrong = log_not_a + log_wrong
    normaliser = np.logaddexp(weighted_correct, weighted_wrong)
    with np.errstate(invalid="ignore"):
        probability = np.exp(weighted_correct - normaliser)
    return np.where(np.isneginf(normaliser), val_acc, probability)


def density_margin(log_correct: np.ndarray, log_wrong: np.ndarray) -> np.ndarray:
    return np.exp(log_correct) - np.exp(log_wrong)


@dataclass
class Assessment:
    """A version's scores for some inputs: P(correct | d) and the ablation's density margin."""

    confidence: np.ndarray
    margin: np.ndarray


def check_accuracy(val_acc, name: str) -> float:
    """The prior: a fraction in [0, 1]; anything else is a UsageError naming where it came from."""
    try:
        value = float(val_acc)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{name}: validation accuracy {val_acc!r} is not a fraction in [0, 1]; measure it again "
                         "with main_train_model.py --mode evaluate (same --datasets/--models/--bugs)")
    return value


@dataclass
class Decision:
    """DeepFailGuard's answer for a set of inputs, with what it was based on (versions × inputs)."""

    labels: np.ndarray
    chosen: np.ndarray
    version_labels: np.ndarray
    confidences: np.ndarray
    distances: np.ndarray
    extras: dict = field(default_factory=dict)

    def __iter__(self):
        """Unpacks as the paper's ``outputs, all_module_dnn_labels = dfg.batch_infer(...)``."""
        return iter((self.labels, self.version_labels))


class DeepFailGuard:
    """Selects, per input, the answer of the version most likely to be correct."""

    def __init__(self, modules: list[DeepFailGuardModule]):
        if len(modules) < 2:
            raise UsageError(f"DeepFailGuard needs at least two versions, got {len(modules)}")
        self.modules = list(modules)

    @staticmethod
    def select(confidences: np.ndarray, version_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per input, the label of the version with the highest score (first on ties) and its index."""
        chosen = np.argmax(confidences, axis=0)
        return np.take_along_axis(version_labels, chosen[None, :], axis=0)[0], chosen

    def batch_infer_cached(self, distances, labels=None, *, info_root=DEFAULT_INFO_ROOT) -> Decision:
        """Decide from cached distances and labels, both shaped (versions, inputs).

        The paper's form, ``batch_infer_cached(datasets)`` (one ``MyData`` per version, ``labels``
        omitted), reads each version's test cache under ``info_root``.
        """
        if labels is None:
            if len(distances) != len(self.modules):
                raise UsageError(f"{len(self.modules)} versions but {len(distances)} datasets")
            answers = [module.read_cache(data, info_root) for module, data in zip(self.modules, distances)]
            distances, labels = [a.distances for a in answers], [a.labels for a in answers]
        distances = np.asarray(distances, dtype=np.float64)
        labels = np.asarray(labels)
        if distances.shape != labels.shape or distances.shape[0] != len(self.modules):
            raise UsageError(f"expected distances and labels of shape ({len(self.modules)}, N); "
                             f"got {distances.shape} and {labels.shape}")
        confidences = np.stack([module.confidence(d) for module, d in zip(self.modules, distances)])
        chosen_labels, chosen = self.select(confidences, labels)
        return Decision(chosen_labels, chosen, labels, confidences, distances)

    def batch_infer(self, loaders, progress: bool = False, concurrent: bool = True) -> Decision:
        """Run every version's attacker over the test inputs, then decide.

        ``loaders``: one loader per version (the same inputs in the same order), or a single loader
        shared by all; each batch is resized to the size its version sees. Versions on different devices
        (each module's ``device``) are attacked at the same time (:func:`attack_concurrently`).
        """
        if not isinstance(loaders, (list, tuple)):
            loaders = [loaders] * len(self.modules)
        if len(loaders) != len(self.modules):
            raise UsageError(f"{len(self.modules)} versions but {len(loaders)} loaders")
        results = attack_concurrently(list(zip(self.modules, loaders)), progress=progress, concurrent=concurrent)
        decision = self.batch_infer_cached([r.distances for r in results], [r.labels for r in results])
        decision.extras["probabilities"] = np.stack([r.probabilities for r in results])
        return decision

    def infer(self, image: torch.Tensor) -> int:
        """The label DeepFailGuard gives one image (C×H×W, or a batch of one)."""
        batch = image.unsqueeze(0) if image.ndim == 3 else image
        results = [module.attack(batch) for module in self.modules]
        decision = self.batch_infer_cached([r.distances for r in results], [r.labels for r in results])
        return int(decision.labels[0])
