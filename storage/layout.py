"""Where every file of the pipeline lives (``storage/caches.py`` reads and writes the test cache and validation
outputs).

One argument order everywhere: ``(root, model, dataset, bug)``. Names follow the paper repository
(``resnet_CIFAR10_bug3``, ``CIFAR10_resnet_bug3_distances.npy``), so its released weights, KDEs and
caches drop in unchanged.

| what | where |
|---|---|
| checkpoint, metadata, loss curve | ``{model_root}/{key}.pth``, ``{key}.json``, ``{key}_loss.png`` |
| failure model | ``{info_root}/kde_results/{key}_{correct,wrong}.npz`` (or the paper's ``.pkl``) |
| another distance mode | ``{key}_{mode}_{correct,wrong}.npz``, ``…_{what}_{mode}.npy`` (every file of the mode) |
| test cache | ``{info_root}/test_information_cached/{DATASET}_{model}_bug{id}_{what}.npy`` |
| test cache under a shift | the same names in ``{info_root}/test_information_cached/{corruption}-{severity}/`` |
| validation outputs | ``{info_root}/val_information_cached/{DATASET}_{model}_bug{id}_{what}.npy`` |
| manifests (what a step wrote, from what) | ``{…}_manifest.json`` beside the validation outputs and test cache |
| ground truth | ``{info_root}/test_information_cached/{DATASET}[_bug{11,12}]_ground_truth.npy`` |
| results | ``{output}/results.csv``, ``summary.csv``, ``failure_prediction.csv`` (+ ``paper_comparison.csv``) |
| figures | ``{output}/figures/kde_{key}.png``, ``methods_{DATASET}.png``, ``reliability_{DATASET}[_{shift}].png``, |
| | ``risk_coverage_{DATASET}[_{shift}].png`` (``{shift}`` as its cache folder: ``fog-3``) |
| launcher logs | ``{output}/logs/{ray,slurm}/`` |
| fault validation | ``{output}/fault_validation.csv``, ``fault_search.csv`` |
| its other seeds' versions | ``{model_root}/fault_validation/seed{S}/``, ``…/search/{value}/seed{S}/`` |
"""

from __future__ import annotations

from pathlib import Path

from storage.settings import DEEPFOOL_MODE, mode_flag, mode_outputs
from storage.shifts import NO_SHIFT
from utils import UsageError


def _faults():
    """The fault table, which says which versions share files (faults 10-12 keep the healthy checkpoint)."""
    import FaultInjector  # deferred: the fault table loads torch; a Ray or Slurm worker imports the layout without it

    return FaultInjector


def checkpoint_fault(bug_id: int) -> int:
    """The fault whose checkpoint (and failure model) a version uses: its own, or the healthy one for the faults
    that change only the test data (10-12)."""
    return _faults().checkpoint_fault(bug_id)

REPO = Path(__file__).resolve().parents[1]
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
RESULTS_CSV, SUMMARY_CSV, FAILURE_PREDICTION_CSV = "results.csv", "summary.csv", "failure_prediction.csv"
#: what produced the tables: every method and score that ran, with its class, parameters and tie rule
METHODS_JSON = "methods.json"
#: risk-controlled abstention: per set and score, the Learn-then-Test threshold and what it gives on test
SELECTIVE_CSV = "selective.csv"
RESULT_FILES = (RESULTS_CSV, SUMMARY_CSV, FAILURE_PREDICTION_CSV, SELECTIVE_CSV, METHODS_JSON)
#: what the real-time evaluation adds beside them: the deployment policies' measured latency
LATENCY_CSV = "latency.csv"
#: what ``--configurations paper`` adds beside them
PAPER_COMPARISON_CSV = "paper_comparison.csv"
#: what ``main_validate_faults.py`` writes (and ``--bugs validated`` reads)
FAULT_VALIDATION_CSV, FAULT_SEARCH_CSV = "fault_validation.csv", "fault_search.csv"
#: the model root's folder of the versions trained only to validate faults (other seeds, searched parameters)
VALIDATION_MODELS_SUBDIR = "fault_validation"
FIGURES_SUBDIR = "figures"
LOGS_SUBDIR = "logs"
CACHE_REMEDY = "rerun main_cache_test_distances.py --force"




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


def compute_figure_path(output, dataset_name: str) -> Path:
    """Accuracy against FLOPs per input of every method (cascades among them)."""
    return figure_path(output, f"compute_{dataset_name.upper()}.png")


def _shifted_name(stem: str, dataset_name: str, shift: str) -> str:
    folder = shift_folder(shift)
    return f"{stem}_{dataset_name.upper()}{'_' + folder if folder else ''}.png"


def reliability_figure_path(output, dataset_name: str, shift: str = NO_SHIFT) -> Path:
    """Calibration of DeepFailGuard's P(correct) on the test set (under ``shift``: ``…_fog-3.png``)."""
    return figure_path(output, _shifted_name("reliability", dataset_name, shift))


def risk_coverage_figure_path(output, dataset_name: str, shift: str = NO_SHIFT) -> Path:
    """Selective risk against coverage of the failure scores on the test set (under ``shift``)."""
    return figure_path(output, _shifted_name("risk_coverage", dataset_name, shift))


def seed_model_root(model_root, seed: int, pipeline_seed: int, search: str | None = None) -> str:
    """Where fault validation keeps a seed's versions: the pipeline's seed trains in the model root itself (the
    versions every step uses), any other seed in ``{model_root}/fault_validation/seed{seed}``; a searched parameter
    value (``search``, e.g. ``bug14_weight_decay0.01``) in ``…/fault_validation/search/{search}/seed{seed}``."""
    if search is None and seed == pipeline_seed:
        return str(model_root)
    folder = Path(model_root) / VALIDATION_MODELS_SUBDIR
    return str((folder / "search" / search if search else folder) / f"seed{seed}")


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
    key = version_key(model_name, dataset_name, checkpoint_fault(bug_id))
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
    key = _with_tag(version_key(model_name, dataset_name, checkpoint_fault(bug_id)), distance)
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
                          version_key(model_name, dataset_name, checkpoint_fault(bug_id))])
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
    raise UsageError(f"missing KDE files {wanted}{other}: run main_train_DeepFailGuard.py{mode_flag(distance)} "
                     "for this version first")


def kde_figure_path(output, model_name: str, dataset_name: str, bug_id: int | None,
                    distance: str = DEEPFOOL_MODE) -> Path:
    return figure_path(output, f"kde_{_with_tag(version_key(model_name, dataset_name, bug_id), distance)}.png")


# ---------------------------------------------------------------------------------------------
# the test cache, in the paper's layout
# ---------------------------------------------------------------------------------------------

def files_of(files: tuple[str, ...], distance: str) -> tuple[str, ...]:
    """A mode's files: ``files`` with what the mode measures besides (its ``DistanceMode.outputs``) before the
    distances (written last)."""
    return (*files[:-1], *mode_outputs(distance), files[-1])


def shift_folder(shift: str = NO_SHIFT) -> str:
    """The folder of a shift's test cache inside the clean one's (``gaussian_noise:5`` → ``gaussian_noise-5``);
    ``""`` for the clean test set."""
    return "" if shift == NO_SHIFT else shift.replace(":", "-")


def cache_path(info_root, model_name: str, dataset_name: str, bug_id: int | None, what: str,
               distance: str = DEEPFOOL_MODE, suffix: str = ".npy", shift: str = NO_SHIFT) -> Path:
    """Test cache file in the paper's layout, e.g. ``CIFAR10_resnet_bug3_distances.npy``; another distance mode's
    files carry its name (``…_distances_first-order.npy``): no file is shared between modes. A shift's cache has
    the same names, in its folder (:func:`shift_folder`)."""
    name = f"{dataset_name.upper()}_{model_name.lower()}_bug{bug_id or 0}_{what}"
    return Path(info_root) / CACHE_SUBDIR / shift_folder(shift) / f"{_with_tag(name, distance)}{suffix}"


def cache_paths(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                distance: str = DEEPFOOL_MODE, shift: str = NO_SHIFT) -> dict[str, Path]:
    return {what: cache_path(info_root, model_name, dataset_name, bug_id, what, distance, shift=shift)
            for what in files_of(CACHE_FILES, distance)}


def test_set_of(bug_id: int | None) -> str:
    """Which ground truth a version answers: ``""`` for the dataset's own test set, ``"bug11"`` for a swapped one."""
    return f"bug{bug_id}" if _faults().replaces_test_set(bug_id) else ""


def ground_truth_path(info_root, dataset_name: str, bug_id: int | None, shift: str = NO_SHIFT) -> Path:
    """Ground truth of a test set: faults that swap the test set (11, 12) have their own; a shift's cache keeps a
    copy beside it (the labels are the clean ones)."""
    tag = test_set_of(bug_id)
    name = f"{dataset_name.upper()}{'_' + tag if tag else ''}_ground_truth.npy"
    return Path(info_root) / CACHE_SUBDIR / shift_folder(shift) / name


# ---------------------------------------------------------------------------------------------
# what the fit step measured on the validation split, kept for the methods that fit on it
# ---------------------------------------------------------------------------------------------

def validation_path(info_root, model_name: str, dataset_name: str, bug_id: int | None, what: str,
                    distance: str = DEEPFOOL_MODE, suffix: str = ".npy") -> Path:
    """A version's validation output in the test cache's naming, e.g. ``CIFAR10_resnet_bug3_logits.npy`` (another
    distance mode's carry its name); a test-data fault's version answers validation with the healthy weights, so
    it shares the healthy files."""
    name = f"{dataset_name.upper()}_{model_name.lower()}_bug{checkpoint_fault(bug_id)}_{what}"
    return Path(info_root) / VALIDATION_SUBDIR / f"{_with_tag(name, distance)}{suffix}"


def validation_paths(info_root, model_name: str, dataset_name: str, bug_id: int | None,
                     distance: str = DEEPFOOL_MODE) -> dict[str, Path]:
    return {what: validation_path(info_root, model_name, dataset_name, bug_id, what, distance)
            for what in files_of(VALIDATION_FILES, distance)}


def manifest_path(info_root, step: str, model_name: str, dataset_name: str, bug_id: int | None,
                  distance: str = DEEPFOOL_MODE, shift: str = NO_SHIFT) -> Path:
    """The manifest of a version's fit (beside its validation outputs; shared by faults 10-12 with the healthy
    version, as the fit is) or of its test cache under a shift (``storage/manifests.py``)."""
    if step == "fit":
        return validation_path(info_root, model_name, dataset_name, bug_id, "manifest", distance, ".json")
    return cache_path(info_root, model_name, dataset_name, bug_id, "manifest", distance, ".json", shift)

