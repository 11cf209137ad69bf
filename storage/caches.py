"""Reading and writing what the steps measured, checked as it is read: a version's test cache (the paper's
format: labels and distances, plus our success flags, softmax and logits), its validation outputs (what the fit
step kept for the methods that learn from them) and the test sets' ground truth. Where they live is
``storage/layout.py``'s; every problem found is one line naming the file and the step that rewrites it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from storage.files import atomic_save_npy, load_array, read_json
from storage.layout import (
    CACHE_REMEDY,
    CACHE_SUBDIR,
    cache_paths,
    ground_truth_path,
    validation_paths,
    version_key,
)
from storage.settings import DEEPFOOL_MODE, mode_outputs
from storage.shifts import NO_SHIFT
from utils import UsageError

#: what rewrites the validation outputs (the test cache's remedy is ``layout.CACHE_REMEDY``)
VALIDATION_REMEDY = "rerun main_train_DeepFailGuard.py --force"
#: how far a cached softmax row may sum from 1 (float32 rounding over a few hundred classes stays far below)
PROBABILITY_SUM_TOLERANCE = 1e-3


@dataclass
class CachedAnswers:
    """What a version answered on a split (its test set, or its validation split with the true labels)."""

    labels: np.ndarray
    distances: np.ndarray
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    #: the split's true labels (kept for the validation split, whose truth the methods fit on)
    truth: np.ndarray | None = None
    #: what the distance mode measures besides, by name (its ``DistanceMode.outputs``: the ``feature`` mode's fDBD
    #: parts and features), one value (or vector) per input each
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def subset(self, index) -> "CachedAnswers":
        """The answers on some of the inputs (``index``: positions or a boolean mask), every array cut alike."""
        def cut(array):
            return None if array is None else array[index]

        return CachedAnswers(*(cut(getattr(self, f.name)) for f in fields(self) if f.name != "outputs"),
                             outputs={name: cut(array) for name, array in self.outputs.items()})

    @property
    def correct(self) -> np.ndarray:
        """Which inputs the version answered right (validation only: the test truth is never here)."""
        if self.truth is None:
            raise ValueError("these answers carry no ground truth")
        return self.labels == self.truth


def write_version_cache(info_root, model_name: str, dataset_name: str, bug_id: int | None, result,
                        distance: str = DEEPFOOL_MODE, shift: str = NO_SHIFT) -> None:
    """A version's attack result (an ``AttackResult``) as its cache files (of the test set under ``shift``);
    distances last."""
    arrays = {"dnn_labels": result.labels, **result.outputs}
    for what, path in cache_paths(info_root, model_name, dataset_name, bug_id, distance, shift).items():
        atomic_save_npy(path, arrays[what] if what in arrays else getattr(result, what))


def write_validation_outputs(info_root, model_name: str, dataset_name: str, bug_id: int | None, result,
                             truth: np.ndarray, distance: str = DEEPFOOL_MODE) -> None:
    """A version's validation attack result and the labels it answered; distances last."""
    arrays = {"ground_truth": np.asarray(truth).astype(np.int64), "dnn_labels": result.labels, **result.outputs}
    for what, path in validation_paths(info_root, model_name, dataset_name, bug_id, distance).items():
        atomic_save_npy(path, arrays[what] if what in arrays else getattr(result, what))


def read_validation_outputs(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                            num_classes: int | None = None, distance: str = DEEPFOOL_MODE) -> CachedAnswers | None:
    """A version's validation outputs, checked as the test cache is (a problem names the fit step, which writes
    them); None when the fit step has not written them (the paper's release, or a fit from before they were
    kept)."""
    paths = validation_paths(info_root, model_name, dataset_name, bug_id, distance)
    if not all(path.is_file() for path in paths.values()):
        return None
    remedy = VALIDATION_REMEDY

    def load(what: str) -> np.ndarray:
        return load_array(paths[what], remedy)

    probabilities = check_probabilities(load("probabilities"), paths["probabilities"], remedy)
    num_classes = min(num_classes or probabilities.shape[1], probabilities.shape[1])
    answers = CachedAnswers(check_labels(load("dnn_labels"), paths["dnn_labels"], num_classes, remedy),
                            _one_dimensional(check_distances(load("distances"), paths["distances"], remedy),
                                             paths["distances"], remedy),
                            probabilities, check_logits(load("logits"), paths["logits"], remedy),
                            check_labels(load("ground_truth"), paths["ground_truth"], num_classes, remedy),
                            {what: _output(load(what), paths[what], remedy) for what in mode_outputs(distance)})
    key = version_key(model_name, dataset_name, bug_id)
    _check_lengths(answers, paths["distances"].parent, key, remedy)
    if answers.logits.shape[1] != probabilities.shape[1]:
        raise UsageError(f"{paths['logits'].parent}: {key}'s validation logits and softmax have different numbers "
                         f"of classes ({answers.logits.shape[1]}, {probabilities.shape[1]}); {remedy}")
    return answers


def _one_dimensional(distances: np.ndarray, path, remedy: str = CACHE_REMEDY) -> np.ndarray:
    if distances.ndim != 1:
        raise UsageError(f"{path}: expected a 1-D array of distances, got shape {distances.shape}; {remedy}")
    return distances


def _check_lengths(answers: CachedAnswers, folder, key: str, remedy: str = CACHE_REMEDY) -> None:
    """Every array of one version's answers covers the same inputs."""
    arrays = {**{name: array for name, array in vars(answers).items() if name != "outputs"}, **answers.outputs}
    lengths = {name: len(array) for name, array in arrays.items() if array is not None}
    if len(set(lengths.values())) > 1:
        raise UsageError(f"{folder}: {key}'s files cover different numbers of inputs {lengths}; {remedy}")


def check_logits(logits: np.ndarray, path, remedy: str = CACHE_REMEDY) -> np.ndarray:
    """Clean logits: a finite (inputs × classes) float array (its inputs and classes are checked against the
    ground truth and the softmax where the version is evaluated, which names it)."""
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating) or not np.isfinite(logits).all():
        raise UsageError(f"{path}: expected a finite (inputs × classes) float array of logits, got {logits.dtype} "
                         f"{logits.shape}; {remedy}")
    return logits


def _output(values: np.ndarray, path, remedy: str = CACHE_REMEDY) -> np.ndarray:
    """One of a distance mode's outputs: one finite number (or one vector: the ``feature`` mode's features) per
    input."""
    if values.ndim not in (1, 2) or not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise UsageError(f"{path}: expected an array of finite numbers, one number or one vector per input, got "
                         f"{values.dtype} {values.shape}; {remedy}")
    return values.astype(np.float64)


def read_version_cache(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                       num_classes: int | None = None, distance: str = DEEPFOOL_MODE,
                       shift: str = NO_SHIFT) -> CachedAnswers | None:
    """A version's cached answers, checked; None when the version has no cache (no distances or labels).

    Labels must be classes of the dataset (below ``num_classes`` where known, and below the width of the
    cached probabilities), and probabilities a softmax: rows in [0, 1] that sum to 1.
    """
    paths = cache_paths(info_root, model_name, dataset_name, bug_id, distance, shift)
    if not (paths["distances"].is_file() and paths["dnn_labels"].is_file()):
        return None
    distances = _one_dimensional(check_distances(load_array(paths["distances"]), paths["distances"]),
                                 paths["distances"])
    probabilities = logits = None
    if paths["probabilities"].is_file():
        probabilities = check_probabilities(load_array(paths["probabilities"]), paths["probabilities"])
        num_classes = min(num_classes or probabilities.shape[1], probabilities.shape[1])
    if paths["logits"].is_file():
        logits = check_logits(load_array(paths["logits"]), paths["logits"])
    labels = check_labels(load_array(paths["dnn_labels"]), paths["dnn_labels"], num_classes)
    outputs = {what: _output(load_array(paths[what]), paths[what]) for what in mode_outputs(distance)
               if paths[what].is_file()}
    return CachedAnswers(labels, distances, probabilities, logits, None, outputs)


def check_probabilities(probabilities: np.ndarray, path, remedy: str = CACHE_REMEDY) -> np.ndarray:
    """A softmax: a finite (inputs × classes) array, each entry in [0, 1], each row summing to 1."""
    if probabilities.ndim != 2 or not np.issubdtype(probabilities.dtype, np.floating) \
            or not np.isfinite(probabilities).all():
        raise UsageError(f"{path}: expected a finite (inputs × classes) array of softmax probabilities, got "
                         f"{probabilities.dtype} {probabilities.shape}; {remedy}")
    sums = probabilities.sum(axis=1, dtype=np.float64)
    outside = int(((probabilities < 0) | (probabilities > 1)).any(axis=1).sum())
    unnormalised = int((np.abs(sums - 1) > PROBABILITY_SUM_TOLERANCE).sum())
    if outside or unnormalised:
        raise UsageError(f"{path}: not softmax probabilities ({outside} row(s) with values outside [0, 1], "
                         f"{unnormalised} not summing to 1: logits saved as probabilities?); {remedy}")
    return probabilities


def write_ground_truth(info_root, dataset_name: str, bug_id: int | None, labels: np.ndarray,
                       shift: str = NO_SHIFT) -> Path:
    """Write a test set's labels unless the file already holds exactly them; returns its path.

    A changed test set (another --max-inputs, say) rewrites it, which makes every cache that
    answered the old one out of date.
    """
    path = ground_truth_path(info_root, dataset_name, bug_id, shift)
    if path.is_file():
        try:
            if np.array_equal(np.load(path, allow_pickle=False), labels):
                return path
        except (ValueError, OSError, EOFError):
            pass  # unreadable: rewritten below
    atomic_save_npy(path, np.asarray(labels).astype(np.int64))
    return path


def read_ground_truth(info_root, dataset_name: str, test_set: str = "", shift: str = NO_SHIFT) -> np.ndarray:
    """The labels of a test set (``test_set`` as from :func:`test_set_of`; under ``shift``, its cache's copy)."""
    path = ground_truth_path(info_root, dataset_name, int(test_set[3:]) if test_set else 0, shift)
    if not path.is_file():
        raise UsageError(f"missing ground truth {path}; run main_cache_test_distances.py first")
    return check_labels(load_array(path), path)


def check_distances(distances, name="", remedy: str = "recompute the cache with --force") -> np.ndarray:
    """DeepFool distances as float64: finite and non-negative (an L2 norm), else a UsageError naming them.

    A negative or NaN distance means a damaged or foreign file, never a real measurement.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if not np.isfinite(distances).all():
        bad = int((~np.isfinite(distances)).sum())
        raise UsageError(f"{name or 'distances'}: {bad} NaN or infinite distance(s); {remedy}")
    if (distances < 0).any():
        bad = int((distances < 0).sum())
        raise UsageError(f"{name or 'distances'}: {bad} negative distance(s), impossible for an L2 norm (a damaged "
                         f"or foreign file); {remedy}")
    return distances


def check_labels(labels: np.ndarray, path, num_classes: int | None = None, remedy: str = CACHE_REMEDY) -> np.ndarray:
    """Class indices: 1-D, integer, non-negative (a negative one would corrupt the vote counts) and, where
    the number of classes is known, below it (another dataset's labels, or a damaged file)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise UsageError(f"{path}: expected a 1-D array of non-negative integer labels, got {labels.dtype} "
                         f"{labels.shape}; {remedy}")
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        raise UsageError(f"{path}: label {int(labels.max())} is not one of the dataset's {num_classes} classes "
                         f"(0-{num_classes - 1}); {remedy}")
    return labels


def recorded_num_classes(info_root, model_root, dataset_name: str) -> int | None:
    """How many classes a dataset has, as its files say: a version's metadata, else the largest label of its
    ground truth files plus one (the paper's release has no metadata); None when neither exists."""
    dataset_name = dataset_name.upper()
    for path in sorted(Path(model_root).glob(f"*_{dataset_name}*.json")):
        try:
            count = read_json(path).get("num_classes")
        except UsageError:
            continue  # a damaged metadata file is reported where it is read for its version
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            return count
    truths = sorted((Path(info_root) / CACHE_SUBDIR).glob(f"{dataset_name}*_ground_truth.npy"))
    largest = [int(labels.max()) for labels in (check_labels(load_array(p), p) for p in truths) if labels.size]
    return max(largest) + 1 if largest else None
