"""A manifest per step and version: the unit the step's files are committed as, and what they were made from.

The fit and cache steps write several files per version. The version's manifest is removed before the first of
them and written after the last, so a run killed anywhere in between leaves none, and the version is never
taken as up to date with half its files old and half new. The manifest records the distance mode, how many
inputs were attacked, the fingerprint of the checkpoint the files came from, the ground truth they answer (the
cache) and each file's SHA-256: a later run redoes, and an evaluation refuses, files that no longer match what
was written, what is asked for, or the checkpoint as it is now (a version retrained since, say). A checkpoint
is named by its SHA-256, recorded in the version's metadata when it is trained: equal weights, equal name,
whichever launcher trained them.

The paper's released caches have no manifest, and need none: a version without our metadata is the paper's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage import layout
from storage.files import atomic_write_json, file_digest
from storage.metadata import read_metadata
from storage.settings import DEEPFOOL_MODE, mode_flag
from storage.shifts import NO_SHIFT
from utils import UsageError

#: what rewrites each step's files, for the messages
STEP_SCRIPTS = {"fit": "main_train_DeepFailGuard.py", "cache": "main_cache_test_distances.py"}


@dataclass(frozen=True)
class Manifest:
    """What a step wrote for a version, and from what."""

    step: str
    version: str
    distance: str
    inputs: int
    #: ``checkpoint_fingerprint`` of the weights the files were computed with
    checkpoint: str
    #: each file (relative to the info root) and its SHA-256
    files: dict[str, str] = field(default_factory=dict)
    #: the SHA-256 of the ground truth the answers are of (the cache step; None for the fit)
    ground_truth: str | None = None
    #: how shifted inputs were made (``mydataset.corruptions.describe``: the corruption, library, version, seed;
    #: for a fit on shifted validation inputs, the list of them); None for clean inputs
    shift: dict | None = None
    #: what the step found its files cannot mean (an attack that flipped too few labels, a failure model without a
    #: wrong input), each one line: the evaluations carry them into ``failure_prediction.csv``
    warnings: list[str] = field(default_factory=list)


def checkpoint_fingerprint(model_root, model: str, dataset: str, bug: int, verify: bool = False) -> str | None:
    """The SHA-256 of the checkpoint a version uses: as its metadata records it (training writes it there), else
    (older metadata) of the file itself; None where neither is there (an evaluation from caches alone). With
    ``verify`` (the steps, which read the checkpoint anyway), a checkpoint that is not the one its metadata
    records is refused."""
    base = layout.checkpoint_fault(bug)
    path = layout.checkpoint_path(model_root, model, dataset, bug)
    meta = layout.metadata_path(model_root, model, dataset, base)
    recorded = read_metadata(meta).get("checkpoint_sha256") if meta.is_file() else None
    if recorded and not verify:
        return recorded
    if not path.is_file():
        return recorded
    actual = file_digest(path)
    if recorded and actual != recorded:
        raise UsageError(f"{path} is not the checkpoint its metadata {meta.name} records (replaced since it was "
                         "trained?); restore it, or retrain the version with --force")
    return actual


def describe(step: str, version: str, distance: str, inputs: int, checkpoint: str, info_root, files,
             ground_truth=None, shift: dict | None = None, warnings=()) -> Manifest:
    """The manifest of ``files`` as they are on disk now (their digests), made from the checkpoint of fingerprint
    ``checkpoint`` (from inputs made as ``shift`` says), with what the step warned of them."""
    root = Path(info_root)
    return Manifest(step, version, distance, int(inputs), checkpoint,
                    {Path(p).relative_to(root).as_posix(): file_digest(p) for p in files},
                    None if ground_truth is None else file_digest(ground_truth), shift, list(warnings))


def discard(path) -> None:
    """Remove a version's manifest before the first of its files is rewritten."""
    Path(path).unlink(missing_ok=True)


def write(path, manifest: Manifest) -> None:
    """Commit a version's files: the manifest, written after every one of them."""
    atomic_write_json(path, asdict(manifest))


def read(path) -> Manifest | None:
    """A version's manifest; None when it has none; a damaged one is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
        manifest = Manifest(**found)
        if not (isinstance(manifest.files, dict) and isinstance(manifest.inputs, int)
                and isinstance(manifest.warnings, list) and all(isinstance(w, str) for w in manifest.warnings)):
            raise TypeError("wrong field types")
    except (OSError, ValueError, TypeError) as exc:
        step = "fit" if "val_information" in path.parts[-2] else "cache"
        raise UsageError(f"{path} is not a manifest ({exc}); rerun {STEP_SCRIPTS[step]} --force") from None
    return manifest


def mismatch(found: Manifest | None, info_root, checkpoint: str | None, inputs: int | None = None,
             ground_truth=None, shift: dict | None = None) -> str | None:
    """None when ``found`` vouches for its files as they are now: made from the checkpoint of fingerprint
    ``checkpoint`` (when known), from ``inputs`` inputs (when given), answering ``ground_truth`` as it is (when
    given), every file unchanged. Otherwise why not, in words."""
    if found is None:
        return "never finished (no manifest: a run was interrupted, or it predates manifests)"
    if inputs is not None and found.inputs != inputs:
        return f"{found.inputs} inputs attacked, {inputs} asked for"
    if checkpoint is not None and found.checkpoint != checkpoint:
        return "made from another checkpoint than the version's (retrained since?)"
    if shift is not None and found.shift != shift:
        return "its inputs were corrupted otherwise (another library version or seed)"
    if ground_truth is not None and found.ground_truth != file_digest(ground_truth):
        return f"answers another test set than {Path(ground_truth).name} (another --max-inputs?)"
    for name, expected in found.files.items():
        path = Path(info_root) / name
        if not path.is_file():
            return f"{name} is missing"
        if file_digest(path) != expected:
            return f"{name} changed since it was written"
    return None


def is_ours(metadata_path) -> bool:
    """Whether a version's files must carry a manifest: ours do (its metadata exists), the paper's need none."""
    return os.path.isfile(metadata_path)


def check_version(info_root, model_root, step: str, model: str, dataset: str, bug: int,
                  distance: str = DEEPFOOL_MODE, shift: str = NO_SHIFT) -> None:
    """Refuse (one line naming the version, the mode, why, and the step that redoes it) what one of our versions'
    manifest of ``step`` does not vouch for: files written by an interrupted run, changed since, made from a
    checkpoint retrained since, or answering another ground truth. The paper's versions need no manifest."""
    if not is_ours(layout.metadata_path(model_root, model, dataset, layout.checkpoint_fault(bug))):
        return
    if step == "fit" and layout.find_kde_files(info_root, model, dataset, bug, distance)[0].suffix == ".pkl":
        return  # the paper's failure model (its pickles): not one our fit step wrote
    path = layout.manifest_path(info_root, step, model, dataset, bug, distance, shift)
    truth = layout.ground_truth_path(info_root, dataset, bug, shift) if step == "cache" else None
    reason = mismatch(read(path), info_root, checkpoint_fingerprint(model_root, model, dataset, bug),
                      ground_truth=truth)
    if reason:
        what = "failure model and validation outputs" if step == "fit" else \
            "test cache" if shift == NO_SHIFT else f"test cache under {shift}"
        raise UsageError(f"{layout.version_key(model, dataset, bug)}: its {what} ({distance}) cannot be used: "
                         f"{reason}; rerun {STEP_SCRIPTS[step]}{mode_flag(distance)}"
                         f"{'' if shift == NO_SHIFT else ' --shifts ' + shift} (it redoes what is out of date)")

