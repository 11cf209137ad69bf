"""Shared helpers: paths and keys, device choice, seeding, atomic file writes, evaluation metrics.

Only code that more than one room needs lives here; anything specific to a dataset, an
architecture, a fault, the attacker or the failure predictor lives in its own module.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

DEFAULT_DATA_ROOT = "mydataset/data"
DEFAULT_MODEL_ROOT = "mymodel/model"
DEFAULT_INFO_ROOT = "input_information"
DEFAULT_OUTPUT = "dfg_results"
KDE_SUBDIR = "kde_results"
CACHE_SUBDIR = "test_information_cached"

#: Faults that only touch the test data: their versions reuse the healthy checkpoint.
TEST_ONLY_FAULTS = (10, 11, 12)
ALL_FAULTS = tuple(range(1, 13))
TEMP_MARK = ".partial"  # marks files being written (".{name}.partial.XXXX{ext}"); never read by the pipeline


class UsageError(Exception):
    """Bad input from the user (argument, missing or corrupt file).

    Scripts turn it into one line on stderr and exit status 2; anything else is a real bug.
    """


# ---------------------------------------------------------------------------------------------
# keys and paths
# ---------------------------------------------------------------------------------------------

def version_key(model_name: str, dataset_name: str, bug_id: int | None = 0) -> str:
    """The paper repository's name of a version: ``resnet_CIFAR10`` or ``resnet_CIFAR10_bug3``."""
    key = f"{model_name.lower()}_{dataset_name.upper()}"
    return f"{key}_bug{bug_id}" if bug_id else key


def checkpoint_bug_id(bug_id: int | None) -> int:
    """The fault whose weights a version uses: test-data faults reuse the healthy network."""
    bug_id = bug_id or 0
    return 0 if bug_id in TEST_ONLY_FAULTS else bug_id


def checkpoint_path(model_root, model_name: str, dataset_name: str, bug_id: int | None) -> Path:
    key = version_key(model_name, dataset_name, checkpoint_bug_id(bug_id))
    return Path(model_root) / f"{key}.pth"


def metadata_path(model_root, model_name: str, dataset_name: str, bug_id: int | None) -> Path:
    """Metadata is per version (bug 10 has its own test accuracy even though it shares weights)."""
    return Path(model_root) / f"{version_key(model_name, dataset_name, bug_id)}.json"


def kde_paths(info_root, model_name: str, dataset_name: str, bug_id: int | None) -> tuple[Path, Path]:
    """``(correct, wrong)`` KDE files of a version, ours (``.npz``)."""
    key = version_key(model_name, dataset_name, checkpoint_bug_id(bug_id))
    folder = Path(info_root) / KDE_SUBDIR
    return folder / f"{key}_correct.npz", folder / f"{key}_wrong.npz"


def find_kde_files(info_root, model_name: str, dataset_name: str, bug_id: int | None) -> tuple[Path, Path]:
    """The ``(correct, wrong)`` KDE files a version uses: ours (``.npz``) or the paper's (``.pkl``).

    The version's own files come first, then the healthy version's for test-data faults (10-12).
    A version with none is a UsageError naming the files looked for.
    """
    folder = Path(info_root) / KDE_SUBDIR
    keys = dict.fromkeys([version_key(model_name, dataset_name, bug_id),
                          version_key(model_name, dataset_name, checkpoint_bug_id(bug_id))])
    for key in keys:
        for suffix in (".npz", ".pkl"):
            pair = (folder / f"{key}_correct{suffix}", folder / f"{key}_wrong{suffix}")
            if pair[0].is_file() and pair[1].is_file():
                return pair
    wanted = folder / f"{next(iter(keys))}_{{correct,wrong}}.npz"
    raise UsageError(f"missing KDE files {wanted} (or .pkl): run main_train_DeepFailGuard.py for this version first")


def cache_path(info_root, dataset_name: str, model_name: str, bug_id: int | None, what: str) -> Path:
    """Test cache file in the paper's layout, e.g. ``CIFAR10_resnet_bug0_distances.npy``."""
    name = f"{dataset_name.upper()}_{model_name.lower()}_bug{bug_id or 0}_{what}.npy"
    return Path(info_root) / CACHE_SUBDIR / name


def ground_truth_path(info_root, dataset_name: str, bug_id: int | None) -> Path:
    """Ground truth of a test set: the shifted CIFAR-10.1 sets (faults 11, 12) have their own."""
    tag = f"_bug{bug_id}" if bug_id in (11, 12) else ""
    return Path(info_root) / CACHE_SUBDIR / f"{dataset_name.upper()}{tag}_ground_truth.npy"


# ---------------------------------------------------------------------------------------------
# device and seeding
# ---------------------------------------------------------------------------------------------

def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks CUDA, then Apple MPS, then CPU; an explicit request that cannot be met is a UsageError."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} requested but CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps requested but Apple MPS is not available on this machine; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed every generator the pipeline touches, so a CPU run is reproducible bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(keep, held_out)`` with ``fraction`` held out, stratified by label where possible."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    try:
        keep, held = train_test_split(indices, test_size=fraction, stratify=y.numpy(), random_state=seed)
    except ValueError:  # a class with a single example cannot be stratified
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


# ---------------------------------------------------------------------------------------------
# atomic writes: a temporary file in the target folder, then os.replace
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    An interrupted or failing writer leaves the old file (or none), never half a file. Temporary
    files left by a killed earlier writer of the same target are removed first. The temporary name
    keeps the target's extension for libraries that look at it.
    """
    path = Path(path)
    prefix = f".{path.name}{TEMP_MARK}."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}; choose a writable folder") from exc
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the rest of a group
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(folder) -> None:
    """Fail before any work if results could not be written to ``folder``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}; choose a writable folder") from exc


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save would append ".npy" to a name
        np.save(handle, np.asarray(array), allow_pickle=False)


def atomic_save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def atomic_torch_save(path, obj) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_save_figure(path, figure) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def format_cell(value) -> str:
    """CSV cell text: floats with six decimals, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{float(value):.6f}"
    return str(value)


def atomic_write_csv(path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write rows (dicts) as CSV with a header, atomically; ``columns`` fixes the column order."""
    import csv

    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([format_cell(row.get(column)) for column in columns])


def is_fresh(outputs, inputs) -> bool:
    """Make's rule: every output exists and is no older than every existing input.

    A retrained checkpoint thereby invalidates the failure model and caches derived from it.
    """
    outputs, inputs = [Path(p) for p in outputs], [Path(p) for p in inputs]
    if not all(p.is_file() for p in outputs):
        return False
    input_times = [p.stat().st_mtime for p in inputs if p.is_file()]
    return not input_times or min(p.stat().st_mtime for p in outputs) >= max(input_times)


def read_json(path) -> dict:
    """Read a JSON file; a missing or corrupt one is a UsageError naming it."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UsageError(f"missing file {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"corrupt JSON file {path}: {exc}; delete it and rerun the step that writes it") from exc
    if not isinstance(obj, dict):
        raise UsageError(f"corrupt JSON file {path}: expected an object, got {type(obj).__name__}; "
                         "delete it and rerun the step that writes it")
    return obj


# ---------------------------------------------------------------------------------------------
# safe loading of .pth files
# ---------------------------------------------------------------------------------------------

def _numpy_safe_globals() -> list:
    """The NumPy names a pickled array needs, and nothing that can run code."""
    multiarray = getattr(np, "_core", np).multiarray
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"}
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def safe_torch_load(path, allow_numpy: bool = False):
    """``torch.load(weights_only=True)``: tensors (and, if asked, NumPy arrays), never arbitrary code.

    A missing, empty, truncated or hostile file is a UsageError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"missing file {path}")
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files: all mean "unusable file"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it holds objects other than tensors/arrays and was refused (it could run code)"
        raise UsageError(f"cannot load {path}: {reason}; replace it with a good copy (or delete it and rerun the "
                         "step that writes it)") from exc


# ---------------------------------------------------------------------------------------------
# evaluation metrics (arrays are versions × inputs; no Python loop over inputs)
# ---------------------------------------------------------------------------------------------

def majority_vote(version_labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """The most frequent label per input; ties go to the smallest class index (the paper's rule)."""
    version_labels = np.asarray(version_labels)
    num_classes = num_classes or int(version_labels.max()) + 1
    n_inputs = version_labels.shape[1]
    cells = np.arange(n_inputs)[None, :] * num_classes + version_labels
    counts = np.bincount(cells.ravel(), minlength=n_inputs * num_classes).reshape(n_inputs, num_classes)
    return counts.argmax(axis=1)  # argmax takes the first maximum: the smallest class index


def accuracy(predictions: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(truth))) if len(truth) else float("nan")


def upper_limit(version_labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of inputs on which at least one version is right: no selector can do better."""
    return float(np.mean((np.asarray(version_labels) == truth).any(axis=0)))


def lower_limit(version_labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of inputs on which every version is right."""
    return float(np.mean((np.asarray(version_labels) == truth).all(axis=0)))


def improvements(method_accuracy: float, voting_accuracy: float, upper: float) -> tuple[float, float | None]:
    """Absolute (method − voting) and relative ((method − voting) / (upper − voting)) improvement.

    The relative one is None where upper equals voting (nothing left to improve).
    """
    absolute = method_accuracy - voting_accuracy
    headroom = upper - voting_accuracy
    return absolute, (absolute / headroom if headroom > 1e-12 else None)


def error_breakdown(version_labels: np.ndarray, truth: np.ndarray,
                    predictions: np.ndarray) -> list[tuple[float, float | None]]:
    """For k = 0..N: (e_k, accuracy of ``predictions`` on those inputs).

    e_k is the share of inputs on which exactly k versions are wrong; the accuracy is None where
    no input has k wrong versions.
    """
    wrong = (np.asarray(version_labels) != truth).sum(axis=0)
    right = np.asarray(predictions) == truth
    rows = []
    for k in range(np.asarray(version_labels).shape[0] + 1):
        mask = wrong == k
        rows.append((float(mask.mean()), float(right[mask].mean()) if mask.any() else None))
    return rows


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for telling positives from negatives (ties count half).

    None when only one class is present.
    """
    from scipy.stats import rankdata

    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
