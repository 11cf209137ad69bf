"""Where every file of the pipeline lives, and the reader and writer of the paper's test cache.

One argument order everywhere: ``(root, model, dataset, bug)``. Names follow the paper repository
(``resnet_CIFAR10_bug3``, ``CIFAR10_resnet_bug3_distances.npy``), so its released weights, KDEs and
caches drop in unchanged.

| what | where |
|---|---|
| checkpoint, metadata, loss curve | ``{model_root}/{key}.pth``, ``{key}.json``, ``{key}_loss.png`` |
| failure model | ``{info_root}/kde_results/{key}_{correct,wrong}.npz`` (or the paper's ``.pkl``) |
| another distance mode | ``{key}_{mode}_{correct,wrong}.npz``, ``…_{success,distances}_{mode}.npy`` |
| test cache | ``{info_root}/test_information_cached/{DATASET}_{model}_bug{id}_{what}.npy`` |
| validation outputs | ``{info_root}/val_information_cached/{DATASET}_{model}_bug{id}_{what}.npy`` |
| ground truth | ``{info_root}/test_information_cached/{DATASET}[_bug{11,12}]_ground_truth.npy`` |
| results | ``{output}/results.csv``, ``summary.csv``, ``failure_prediction.csv`` (+ ``paper_comparison.csv``) |
| figures | ``{output}/figures/kde_{key}.png``, ``methods_{DATASET}.png``, ``reliability_{DATASET}.png`` |
| launcher logs | ``{output}/logs/{ray,slurm}/`` |
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

import FaultInjector
from settings import DEEPFOOL_MODE
from storage import atomic_save_npy, load_array, read_json
from utils import UsageError

REPO = Path(__file__).resolve().parent
DEFAULT_DATA_ROOT = "mydataset/data"
DEFAULT_MODEL_ROOT = "mymodel/model"
DEFAULT_INFO_ROOT = "input_information"
DEFAULT_OUTPUT = "dfg_results"
DEFAULT_REALTIME_OUTPUT = "dfg_results/realtime"
KDE_SUBDIR = "kde_results"
CACHE_SUBDIR = "test_information_cached"
VALIDATION_SUBDIR = "val_information_cached"
#: the paper's published figures, shipped with the project
PAPER_ACCURACIES = REPO / "mymodel" / "paper_version_accuracies.csv"
PAPER_RESULTS = REPO / "mymodel" / "paper_results.csv"
#: what a version's test cache holds (the paper's release has labels and distances only); distances are written
#: last, so their presence means the version is complete
CACHE_FILES = ("dnn_labels", "success", "probabilities", "logits", "distances")
#: what the fit step keeps of a version's validation answers, for the methods that fit on them; distances last
VALIDATION_FILES = ("ground_truth", "dnn_labels", "probabilities", "logits", "distances")
#: the arrays that depend on the distance mode (``--distance``); labels, softmax and logits are the same in every mode
MODE_DEPENDENT = ("success", "distances")
RESULTS_CSV, SUMMARY_CSV, FAILURE_PREDICTION_CSV = "results.csv", "summary.csv", "failure_prediction.csv"
#: what produced the tables: every method and score that ran, with its class, parameters and tie rule
METHODS_JSON = "methods.json"
RESULT_FILES = (RESULTS_CSV, SUMMARY_CSV, FAILURE_PREDICTION_CSV, METHODS_JSON)
#: what ``--configurations paper`` adds beside them
PAPER_COMPARISON_CSV = "paper_comparison.csv"
FIGURES_SUBDIR = "figures"
LOGS_SUBDIR = "logs"
CACHE_REMEDY = "rerun main_cache_test_distances.py --force"


@dataclass(frozen=True)
class Roots:
    """The four folders every step reads and writes (``--data-root``, ``--model-root``, ``--info-root``,
    ``--output``), as text so that a job holding them pickles and compares plainly."""

    data: str = DEFAULT_DATA_ROOT
    model: str = DEFAULT_MODEL_ROOT
    info: str = DEFAULT_INFO_ROOT
    output: str = DEFAULT_OUTPUT

    def __post_init__(self):
        for field in fields(self):  # Path or str in, str kept
            object.__setattr__(self, field.name, str(getattr(self, field.name)))


DEFAULT_ROOTS = Roots()


# ---------------------------------------------------------------------------------------------
# results, figures, logs
# ---------------------------------------------------------------------------------------------

def result_path(output, name: str) -> Path:
    """One of the evaluation's files (``RESULT_FILES``, ``PAPER_COMPARISON_CSV``) in ``output``."""
    return Path(output) / name


def figure_path(output, name: str) -> Path:
    return Path(output) / FIGURES_SUBDIR / name


def methods_figure_path(output, dataset_name: str) -> Path:
    return figure_path(output, f"methods_{dataset_name.upper()}.png")


def reliability_figure_path(output, dataset_name: str) -> Path:
    return figure_path(output, f"reliability_{dataset_name.upper()}.png")


def log_folder(output, engine: str) -> Path:
    """Where a launcher's engine (``ray``, ``slurm``) keeps the logs of failed or remote jobs."""
    return Path(output) / LOGS_SUBDIR / engine


# ---------------------------------------------------------------------------------------------
# versions: checkpoints, metadata, failure models
# ---------------------------------------------------------------------------------------------

def version_key(model_name: str, dataset_name: str, bug_id: int | None = 0) -> str:
    """The paper repository's name of a version: ``resnet_CIFAR10`` or ``resnet_CIFAR10_bug3``."""
    key = f"{model_name.lower()}_{dataset_name.upper()}"
    return f"{key}_bug{bug_id}" if bug_id else key


def checkpoint_path(model_root, model_name: str, dataset_name: str, bug_id: int | None) -> Path:
    """The weights a version uses (test-data faults share the healthy version's)."""
    key = version_key(model_name, dataset_name, FaultInjector.checkpoint_fault(bug_id))
    return Path(model_root) / f"{key}.pth"


def metadata_path(model_root, model_name: str, dataset_name: str, bug_id: int | None) -> Path:
    """Metadata is per version (bug 10 has its own test accuracy even though it shares weights)."""
    return Path(model_root) / f"{version_key(model_name, dataset_name, bug_id)}.json"


def loss_curve_path(model_root, model_name: str, dataset_name: str, bug_id: int | None) -> Path:
    return Path(model_root) / f"{version_key(model_name, dataset_name, bug_id)}_loss.png"


def mode_tag(distance: str = DEEPFOOL_MODE) -> str:
    """How a distance mode appears in file names: not at all for the paper's DeepFool (its names are kept), else
    the mode without its colon (``first-order``, ``deepfool2``), so that every mode's files live side by side."""
    return "" if distance == DEEPFOOL_MODE else distance.replace(":", "")


def _with_tag(stem: str, distance: str) -> str:
    tag = mode_tag(distance)
    return f"{stem}_{tag}" if tag else stem


def kde_paths(info_root, model_name: str, dataset_name: str, bug_id: int | None,
              distance: str = DEEPFOOL_MODE) -> tuple[Path, Path]:
    """``(correct, wrong)`` KDE files of a version, ours (``.npz``), for a distance mode."""
    key = _with_tag(version_key(model_name, dataset_name, FaultInjector.checkpoint_fault(bug_id)), distance)
    folder = Path(info_root) / KDE_SUBDIR
    return folder / f"{key}_correct.npz", folder / f"{key}_wrong.npz"


def find_kde_files(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                   distance: str = DEEPFOOL_MODE) -> tuple[Path, Path]:
    """The ``(correct, wrong)`` KDE files a version uses: ours (``.npz``) or, for the paper's DeepFool, the paper's
    (``.pkl``).

    The version's own files come first, then the healthy version's for test-data faults (10-12).
    A version with none is a UsageError naming the files looked for (and the mode it has files for).
    """
    folder = Path(info_root) / KDE_SUBDIR
    keys = dict.fromkeys([version_key(model_name, dataset_name, bug_id),
                          version_key(model_name, dataset_name, FaultInjector.checkpoint_fault(bug_id))])
    suffixes = (".npz", ".pkl") if distance == DEEPFOOL_MODE else (".npz",)
    for key in keys:
        for suffix in suffixes:
            stem = _with_tag(key, distance)
            pair = (folder / f"{stem}_correct{suffix}", folder / f"{stem}_wrong{suffix}")
            if pair[0].is_file() and pair[1].is_file():
                return pair
    wanted = folder / f"{_with_tag(next(iter(keys)), distance)}_{{correct,wrong}}.npz"
    if distance == DEEPFOOL_MODE:
        raise UsageError(f"missing KDE files {wanted} (or .pkl): run main_train_DeepFailGuard.py for this version "
                         "first")
    has_default = any((folder / f"{key}_correct{suffix}").is_file() for key in keys for suffix in (".npz", ".pkl"))
    other = f" (it has a failure model fitted on {DEEPFOOL_MODE} distances, not on {distance} ones)" \
        if has_default else ""
    raise UsageError(f"missing KDE files {wanted}{other}: run main_train_DeepFailGuard.py --distance {distance} "
                     "for this version first")


def kde_figure_path(output, model_name: str, dataset_name: str, bug_id: int | None,
                    distance: str = DEEPFOOL_MODE) -> Path:
    return figure_path(output, f"kde_{_with_tag(version_key(model_name, dataset_name, bug_id), distance)}.png")


# ---------------------------------------------------------------------------------------------
# the test cache, in the paper's layout
# ---------------------------------------------------------------------------------------------

def cache_path(info_root, model_name: str, dataset_name: str, bug_id: int | None, what: str,
               distance: str = DEEPFOOL_MODE) -> Path:
    """Test cache file in the paper's layout, e.g. ``CIFAR10_resnet_bug3_distances.npy`` (another distance mode's
    distances and success flags: ``…_distances_first-order.npy``)."""
    name = f"{dataset_name.upper()}_{model_name.lower()}_bug{bug_id or 0}_{what}"
    return Path(info_root) / CACHE_SUBDIR / f"{_with_tag(name, distance) if what in MODE_DEPENDENT else name}.npy"


def cache_paths(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                distance: str = DEEPFOOL_MODE) -> dict[str, Path]:
    return {what: cache_path(info_root, model_name, dataset_name, bug_id, what, distance) for what in CACHE_FILES}


def test_set_of(bug_id: int | None) -> str:
    """Which ground truth a version answers: ``""`` for the dataset's own test set, ``"bug11"`` for a swapped one."""
    return f"bug{bug_id}" if FaultInjector.replaces_test_set(bug_id) else ""


def ground_truth_path(info_root, dataset_name: str, bug_id: int | None) -> Path:
    """Ground truth of a test set: faults that swap the test set (11, 12) have their own."""
    tag = test_set_of(bug_id)
    return Path(info_root) / CACHE_SUBDIR / f"{dataset_name.upper()}{'_' + tag if tag else ''}_ground_truth.npy"


@dataclass
class CachedAnswers:
    """What a version answered on a split (its test set, or its validation split with the true labels)."""

    labels: np.ndarray
    distances: np.ndarray
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    #: the split's true labels (kept for the validation split, whose truth the methods fit on)
    truth: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        """Which inputs the version answered right (validation only: the test truth is never here)."""
        if self.truth is None:
            raise ValueError("these answers carry no ground truth")
        return self.labels == self.truth


def write_version_cache(info_root, model_name: str, dataset_name: str, bug_id: int | None, result,
                        distance: str = DEEPFOOL_MODE) -> None:
    """A version's attack result (an ``AttackResult``) as its cache files; distances last."""
    paths = cache_paths(info_root, model_name, dataset_name, bug_id, distance)
    for what in CACHE_FILES:
        atomic_save_npy(paths[what], getattr(result, "labels" if what == "dnn_labels" else what))


# ---------------------------------------------------------------------------------------------
# what the fit step measured on the validation split, kept for the methods that fit on it
# ---------------------------------------------------------------------------------------------

def validation_path(info_root, model_name: str, dataset_name: str, bug_id: int | None, what: str,
                    distance: str = DEEPFOOL_MODE) -> Path:
    """A version's validation output in the test cache's naming, e.g. ``CIFAR10_resnet_bug3_logits.npy``; a
    test-data fault's version answers validation with the healthy weights, so it shares the healthy files."""
    name = f"{dataset_name.upper()}_{model_name.lower()}_bug{FaultInjector.checkpoint_fault(bug_id)}_{what}"
    return Path(info_root) / VALIDATION_SUBDIR / f"{_with_tag(name, distance) if what in MODE_DEPENDENT else name}.npy"


def validation_paths(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                     distance: str = DEEPFOOL_MODE) -> dict[str, Path]:
    return {what: validation_path(info_root, model_name, dataset_name, bug_id, what, distance)
            for what in VALIDATION_FILES}


def write_validation_outputs(info_root, model_name: str, dataset_name: str, bug_id: int | None, result,
                             truth: np.ndarray, distance: str = DEEPFOOL_MODE) -> None:
    """A version's validation attack result and the labels it answered; distances last."""
    paths = validation_paths(info_root, model_name, dataset_name, bug_id, distance)
    arrays = {"ground_truth": np.asarray(truth).astype(np.int64), "dnn_labels": result.labels,
              "probabilities": result.probabilities, "logits": result.logits, "distances": result.distances}
    for what in VALIDATION_FILES:
        atomic_save_npy(paths[what], arrays[what])


def read_validation_outputs(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                            num_classes: int | None = None, distance: str = DEEPFOOL_MODE) -> CachedAnswers | None:
    """A version's validation outputs, checked as the test cache is; None when the fit step has not written them
    (the paper's release, or a fit from before they were kept)."""
    paths = validation_paths(info_root, model_name, dataset_name, bug_id, distance)
    if not all(path.is_file() for path in paths.values()):
        return None
    probabilities = check_probabilities(load_array(paths["probabilities"]), paths["probabilities"])
    num_classes = min(num_classes or probabilities.shape[1], probabilities.shape[1])
    answers = CachedAnswers(check_labels(load_array(paths["dnn_labels"]), paths["dnn_labels"], num_classes),
                            _one_dimensional(check_distances(load_array(paths["distances"]), paths["distances"]),
                                             paths["distances"]),
                            probabilities, check_logits(load_array(paths["logits"]), paths["logits"]),
                            check_labels(load_array(paths["ground_truth"]), paths["ground_truth"], num_classes))
    key, remedy = version_key(model_name, dataset_name, bug_id), "rerun main_train_DeepFailGuard.py --force"
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
    lengths = {name: len(array) for name, array in vars(answers).items() if array is not None}
    if len(set(lengths.values())) > 1:
        raise UsageError(f"{folder}: {key}'s files cover different numbers of inputs {lengths}; {remedy}")


def check_logits(logits: np.ndarray, path) -> np.ndarray:
    """Clean logits: a finite (inputs × classes) float array (its inputs and classes are checked against the
    ground truth and the softmax where the version is evaluated, which names it)."""
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating) or not np.isfinite(logits).all():
        raise UsageError(f"{path}: expected a finite (inputs × classes) float array of logits, got {logits.dtype} "
                         f"{logits.shape}; {CACHE_REMEDY}")
    return logits


def read_version_cache(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                       num_classes: int | None = None, distance: str = DEEPFOOL_MODE) -> CachedAnswers | None:
    """A version's cached answers, checked; None when the version has no cache (no distances or labels).

    Labels must be classes of the dataset (below ``num_classes`` where known, and below the width of the
    cached probabilities), and probabilities a softmax: rows in [0, 1] that sum to 1.
    """
    paths = cache_paths(info_root, model_name, dataset_name, bug_id, distance)
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
    return CachedAnswers(labels, distances, probabilities, logits)


#: how far a cached softmax row may sum from 1 (float32 rounding over a few hundred classes stays far below)
PROBABILITY_SUM_TOLERANCE = 1e-3


def check_probabilities(probabilities: np.ndarray, path) -> np.ndarray:
    """A softmax: a finite (inputs × classes) array, each entry in [0, 1], each row summing to 1."""
    if probabilities.ndim != 2 or not np.issubdtype(probabilities.dtype, np.floating) \
            or not np.isfinite(probabilities).all():
        raise UsageError(f"{path}: expected a finite (inputs × classes) array of softmax probabilities, got "
                         f"{probabilities.dtype} {probabilities.shape}; {CACHE_REMEDY}")
    sums = probabilities.sum(axis=1, dtype=np.float64)
    outside = int(((probabilities < 0) | (probabilities > 1)).any(axis=1).sum())
    unnormalised = int((np.abs(sums - 1) > PROBABILITY_SUM_TOLERANCE).sum())
    if outside or unnormalised:
        raise UsageError(f"{path}: not softmax probabilities ({outside} row(s) with values outside [0, 1], "
                         f"{unnormalised} not summing to 1: logits saved as probabilities?); {CACHE_REMEDY}")
    return probabilities


def write_ground_truth(info_root, dataset_name: str, bug_id: int | None, labels: np.ndarray) -> Path:
    """Write a test set's labels unless the file already holds exactly them; returns its path.

    A changed test set (another --max-inputs, say) rewrites it, which makes every cache that
    answered the old one out of date.
    """
    path = ground_truth_path(info_root, dataset_name, bug_id)
    if path.is_file():
        try:
            if np.array_equal(np.load(path, allow_pickle=False), labels):
                return path
        except (ValueError, OSError, EOFError):
            pass  # unreadable: rewritten below
    atomic_save_npy(path, np.asarray(labels).astype(np.int64))
    return path


def read_ground_truth(info_root, dataset_name: str, test_set: str = "") -> np.ndarray:
    """The labels of a test set (``test_set`` as from :func:`test_set_of`)."""
    path = ground_truth_path(info_root, dataset_name, int(test_set[3:]) if test_set else 0)
    if not path.is_file():
        raise UsageError(f"missing ground truth {path}; run main_cache_test_distances.py first")
    return check_labels(load_array(path), path)


def check_distances(distances, name="") -> np.ndarray:
    """DeepFool distances as float64: finite and non-negative (an L2 norm), else a UsageError naming them.

    A negative or NaN distance means a damaged or foreign file, never a real measurement.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if not np.isfinite(distances).all():
        bad = int((~np.isfinite(distances)).sum())
        raise UsageError(f"{name or 'distances'}: {bad} NaN or infinite distance(s); recompute the cache with --force")
    if (distances < 0).any():
        bad = int((distances < 0).sum())
        raise UsageError(f"{name or 'distances'}: {bad} negative distance(s), impossible for an L2 norm (a damaged "
                         "or foreign file); recompute the cache with --force")
    return distances


def check_labels(labels: np.ndarray, path, num_classes: int | None = None) -> np.ndarray:
    """Class indices: 1-D, integer, non-negative (a negative one would corrupt the vote counts) and, where
    the number of classes is known, below it (another dataset's labels, or a damaged file)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise UsageError(f"{path}: expected a 1-D array of non-negative integer labels, got {labels.dtype} "
                         f"{labels.shape}; {CACHE_REMEDY}")
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        raise UsageError(f"{path}: label {int(labels.max())} is not one of the dataset's {num_classes} classes "
                         f"(0-{num_classes - 1}); {CACHE_REMEDY}")
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
