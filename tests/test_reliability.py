"""Reliability: bad input, interruption and untrusted files, tried against the five scripts.

Contract checked by every failure case: exit status 2; on stderr exactly one line starting with
``error:``, the last one (``note:`` lines may come before it) — or, for errors argparse itself
reports, the one line ``prog: error: argument --flag: ...; see --help``; no traceback; the
message names the file or argument and says what to do; files finished before are untouched (same
size, mtime and inode) and no temporary (``.partial``) or half-written file appears.

The cases break copies (``ws``) of the session's reference pipeline (``conftest.pipeline``: squeezenet
healthy, with fault 1 and fault 10, densenet healthy and with fault 10, one epoch each on DIGITS, at
most 20 validation / test inputs attacked per version; KDEs, test cache, evaluation from the cache and
in real time); checkpoints are hard-linked, which is safe because every writer in the pipeline replaces
files (``os.replace``) and the tests unlink a file before planting a bad one.

How the cases run:

- In process, through ``flags.run_main(script.main, argv)`` (the scripts' own entry point, same exit
  contract, without the ~10 s interpreter start-up): the full grid of bad command lines, bad files,
  hostile files and unwritable folders, across the scripts.
- As real subprocesses (``python main_*.py ...``, ``SUBPROCESS_CASES``), started in the background
  (two at a time) while the in-process tests run; every script and every class of bad input at
  least once (each start costs the interpreter and torch, ~7 s of CPU: the rest of the grid runs in
  process above, through the same entry point):

  ==========  ==================  =================================  ==================  =====================
  script      bad command line    bad file                           hostile file        unwritable folder
  ==========  ==================  =================================  ==================  =====================
  train       unknown dataset
  fit                                                                checkpoint (exec)
  cache                                                                                  ``--info-root``
  evaluate                        NaN distances
  realtime    ``--batch-size 0``                                                         ``--output``
  ==========  ==================  =================================  ==================  =====================

  plus two successful runs for reproducibility (training, evaluation from the cache).
- Interruption, always as subprocesses: training, failure-model fitting, test caching and real-time
  evaluation (``CHAINS``) are SIGKILLed at one to three points, each kill followed by a rerun,
  the last rerun left to finish. A watcher polls the output folders every few milliseconds and
  loads every file it sees under its final name: it must be complete at every moment. Kill points
  are events (a progress bar on stderr, a temporary or final file appearing), not delays. Kills land
  mid-write where a write lasts long enough to be seen (loss curve, figure, metadata, results CSV);
  the array writes take microseconds, so for them a half-written temporary file is planted before
  the last run instead. At the end the files equal the uninterrupted reference run (tensors,
  arrays, bytes; metadata except timings), no temporary file is left, and work that was complete at
  a kill was neither redone nor lost.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import REPO, SCRIPTS, Workspace, run_in_process, script_flags, unused_fault_id
from reliability_tools import (
    KillPoint,
    assert_clean_failure,
    assert_nothing_lost,
    assert_same_file,
    assert_same_outputs,
    comparable_metadata,
    is_partial,
    payload,
    replace_file,
    run_watched,
    script_env,
    snapshot,
    when_file,
    when_stderr,
)
from scipy.stats import gaussian_kde

import ModelManager
from storage import layout
from storage.layout import CACHE_FILES, VALIDATION_FILES

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow,
              pytest.mark.xdist_group("reliability")]  # its background fixture starts the whole module's subprocesses

SQUEEZENETS = ["--models", "squeezenet", "--bugs", "0", "1"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
NO_MPS = pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                            reason="needs a machine without MPS")


@pytest.fixture
def ws(pipeline_realtime, pipeline_copy) -> Workspace:
    """The copy of the session's pipeline (its real-time evaluation too) a case breaks."""
    return pipeline_copy


def expect_refusal(capsys, ws: Workspace, script: str, extra=(), fragments=(), grid=None) -> str:
    """Run a script on a broken workspace: a clean exit-2 failure that loses nothing."""
    before = snapshot(ws.root)
    result = run_in_process(capsys, script, *ws.argv(script, *extra, grid=grid))
    message = assert_clean_failure(result, *fragments)
    assert_nothing_lost(ws.root, before, snapshot(ws.root))
    assert not ws.marker.exists(), "hostile code ran"
    return message


# ---------------------------------------------------------------------------------------------
# bad command lines
# ---------------------------------------------------------------------------------------------

COMMAND_LINE_CASES = [
    pytest.param(["--datasets", "MNIST"], ["MNIST"], id="unknown-dataset"),
    pytest.param(["--models", "lenet"], ["lenet"], id="unknown-model"),
    pytest.param(["--bugs", str(unused_fault_id())], ["--bugs", str(unused_fault_id())], id="unknown-fault"),
    pytest.param(["--bugs", "x"], ["--bugs", "'x'"], id="fault-not-a-number"),
    pytest.param(["--bugs", "5-1"], ["--bugs", "5-1", "empty range"], id="reversed-fault-range"),
    pytest.param(["--threads", "0"], ["--threads", "'0'"], id="zero-threads"),
    pytest.param(["--bugs", "11"], ["fault 11", "DIGITS"], id="fault-not-applicable-to-dataset"),
    pytest.param(["--bugs", "0", "12"], ["fault 12", "DIGITS"], id="fault-12-not-applicable"),
    pytest.param(["--epochs", "0"], ["--epochs", "'0'"], id="zero-epochs"),
    pytest.param(["--batch-size", "-1"], ["--batch-size", "'-1'"], id="negative-batch-size"),
    pytest.param(["--batch-size", "two"], ["--batch-size", "'two'"], id="batch-size-not-a-number"),
    pytest.param(["--max-inputs", "0"], ["--max-inputs", "'0'"], id="zero-max-inputs"),
    pytest.param(["--seed", "-1"], ["--seed", "'-1'"], id="negative-seed"),
    pytest.param(["--preset", "nope"], ["--preset", "'nope'"], id="unknown-preset"),
    pytest.param(["--device", "cuda"], ["--device", "cuda"], id="device-cuda-without-cuda", marks=NO_CUDA),
    pytest.param(["--device", "cuda:3"], ["--device", "cuda:3"], id="device-cuda-index", marks=NO_CUDA),
    pytest.param(["--device", "mps"], ["--device", "mps"], id="device-mps-without-mps", marks=NO_MPS),
    pytest.param(["--device", "nonsense"], ["--device", "nonsense"], id="device-nonsense"),
]


@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize("extra, fragments", COMMAND_LINE_CASES)
def test_bad_command_line(capsys, ws, script, extra, fragments):
    """A bad value of a flag the script takes is refused naming it; a flag it does not take (it would
    ignore it) is refused by argparse as unrecognised, whatever its value."""
    if extra[0] not in script_flags(script):
        fragments = ["unrecognized arguments", extra[0]]
    expect_refusal(capsys, ws, script, extra, fragments)


@pytest.mark.parametrize("extra, fragments", [
    pytest.param(["--lr", "-1"], ["--lr"], id="negative-lr"),
    pytest.param(["--lr", "0"], ["--lr"], id="zero-lr"),
    pytest.param(["--lr", "nan"], ["--lr"], id="nan-lr"),
    pytest.param(["--lr", "inf"], ["--lr"], id="infinite-lr"),
    pytest.param(["--image-size", "0"], ["--image-size", "'0'"], id="zero-image-size"),
    pytest.param(["--image-size", "16"], ["16", "squeezenet", "32"], id="image-size-below-the-models-minimum"),
    pytest.param(["--mode", "bogus"], ["--mode", "'bogus'"], id="unknown-mode"),
])
def test_bad_training_command_line(capsys, ws, extra, fragments):
    expect_refusal(capsys, ws, "train", extra, fragments)


def test_bad_command_line_on_an_empty_model_root_writes_nothing(capsys, empty_workspace):
    """With nothing trained yet, ``--device cuda`` must fail before any training starts."""
    ws = empty_workspace
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    expect_refusal(capsys, ws, "train", ["--device", "cuda"], ["--device", "cuda"])
    assert not ws.model.exists() or not any(ws.model.iterdir())


# ---------------------------------------------------------------------------------------------
# bad files: checkpoints, metadata, KDEs, caches, datasets
# ---------------------------------------------------------------------------------------------

def truncate(path: Path) -> Path:
    data = path.read_bytes()
    return replace_file(path, data[: len(data) // 2])


GARBAGE = bytes(range(256)) * 8


def nan_state(ws: Workspace) -> dict:
    state = torch.load(ws.checkpoint(), weights_only=True)
    state["classifier.1.weight"] = torch.full_like(state["classifier.1.weight"], float("nan"))
    return state


CHECKPOINT_DEFECTS: dict[str, Callable[[Workspace, Path], object]] = {
    "empty": lambda ws, path: replace_file(path, b""),
    "truncated": lambda ws, path: truncate(path),
    "garbage": lambda ws, path: replace_file(path, GARBAGE),
    "other-architecture": lambda ws, path: replace_file(path, ws.checkpoint("densenet").read_bytes()),
    "other-class-count": lambda ws, path: replace_file(path, lambda p: torch.save(
        ModelManager.build_version("squeezenet", 5).model_structure.state_dict(), p)),
    "not-a-state-dict": lambda ws, path: replace_file(path, lambda p: torch.save(torch.zeros(3), p)),
    "nan-weights": lambda ws, path: (lambda state: replace_file(path, lambda p: torch.save(state, p)))(nan_state(ws)),
}


@pytest.mark.parametrize("script, defect", [
    *[("fit", defect) for defect in CHECKPOINT_DEFECTS],
    *[(script, defect) for script in ("train", "cache", "realtime")
      for defect in ("truncated", "other-architecture", "other-class-count", "nan-weights")],
])
def test_bad_checkpoint(capsys, ws, script, defect):
    path = ws.checkpoint()
    CHECKPOINT_DEFECTS[defect](ws, path)
    expect_refusal(capsys, ws, script, fragments=[path])


METADATA_DEFECTS = {
    "empty": b"",
    "truncated": None,
    "garbage": b"\xff\xfe\x00 not json",
    "not-an-object": b"[1, 2, 3]\n",
}


@pytest.mark.parametrize("script, defect", [
    *[("evaluate", defect) for defect in METADATA_DEFECTS],
    *[(script, "truncated") for script in ("train", "fit", "cache", "realtime")],
    ("fit", "not-an-object"),
])
def test_bad_metadata_file(capsys, ws, script, defect):
    path = ws.metadata()
    truncate(path) if METADATA_DEFECTS[defect] is None else replace_file(path, METADATA_DEFECTS[defect])
    expect_refusal(capsys, ws, script, fragments=[path])


@pytest.mark.parametrize("script", ["evaluate", "realtime"])
@pytest.mark.parametrize("value", [float("nan"), "high", 1.5, -0.1, None, "missing"])
def test_validation_accuracy_that_is_not_a_fraction(capsys, ws, script, value):
    path = ws.metadata()
    metadata = json.loads(path.read_text())
    if value == "missing":
        del metadata["val_acc"]
    else:
        metadata["val_acc"] = value
    replace_file(path, json.dumps(metadata).encode())  # NaN is written as JSON's common extension NaN
    expect_refusal(capsys, ws, script, fragments=[path])


def rewrite_npz(path: Path, **changes) -> Path:
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays.update(changes)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    return replace_file(path, lambda p: np.savez(open(p, "wb"), **arrays))


KDE_DEFECTS = {
    "empty": lambda path: replace_file(path, b""),
    "truncated": truncate,
    "garbage": lambda path: replace_file(path, GARBAGE),
    "missing-array": lambda path: rewrite_npz(path, bandwidth=None),
    "nan-points": lambda path: rewrite_npz(path, points=np.full(3, np.nan), weights=np.full(3, 1 / 3)),
    "infinite-bandwidth": lambda path: rewrite_npz(path, bandwidth=np.float64(np.inf)),
    "zero-bandwidth": lambda path: rewrite_npz(path, bandwidth=np.float64(0.0)),
    "weights-not-normalised": lambda path: rewrite_npz(path, weights=np.full(2, 5.0), points=np.ones(2)),
    "plain-npy": lambda path: replace_file(path, lambda p: np.save(open(p, "wb"), np.ones(3))),
}


@pytest.mark.parametrize("script, defect", [
    *[("evaluate", defect) for defect in KDE_DEFECTS],
    ("realtime", "truncated"), ("realtime", "nan-points"),
])
def test_bad_kde_file(capsys, ws, script, defect):
    path = ws.kde("correct")
    KDE_DEFECTS[defect](path)
    expect_refusal(capsys, ws, script, fragments=[path])


def use_paper_pickles(ws: Workspace) -> tuple[Path, Path]:
    """Replace squeezenet's .npz KDEs by the paper's format: pickled scipy gaussian_kde."""
    pair = []
    for which in ("correct", "wrong"):
        with np.load(ws.kde(which)) as archive:
            points = archive["points"]
        if len(np.unique(points)) < 2:
            points = np.array([0.1, 0.2, 0.4])
        ws.kde(which).unlink()
        pair.append(replace_file(ws.kde(which, ".pkl"), pickle.dumps(gaussian_kde(points))))
    return tuple(pair)


def test_paper_pickles_are_accepted(capsys, ws):
    """The control for the pickle cases below: well-formed paper pickles evaluate."""
    use_paper_pickles(ws)
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate"))
    assert result.returncode == 0, result.stderr


PICKLE_DEFECTS = {
    "empty": lambda path: replace_file(path, b""),
    "truncated": truncate,
    "garbage": lambda path: replace_file(path, GARBAGE),
    "not-a-kde": lambda path: replace_file(path, pickle.dumps({"dataset": [1, 2, 3]})),
    "two-dimensional": lambda path: replace_file(path, pickle.dumps(
        gaussian_kde(np.random.default_rng(0).random((2, 10))))),
}


@pytest.mark.parametrize("script, defect", [*[("evaluate", d) for d in PICKLE_DEFECTS], ("realtime", "truncated")])
def test_bad_kde_pickle(capsys, ws, script, defect):
    correct, _ = use_paper_pickles(ws)
    PICKLE_DEFECTS[defect](correct)
    expect_refusal(capsys, ws, script, fragments=[correct])


def save_npy(path: Path, array) -> Path:
    return replace_file(path, lambda p: np.save(open(p, "wb"), array))


#: a length or width mismatch is reported for a version: the message names it and the array (which of the files
#: is wrong cannot be known), and says to rerun the caching step
MISMATCH = "squeezenet bug 0"
#: every version's answers against a shortened ground truth: the first in canonical order is named
FIRST_MISMATCH = "densenet bug 0"
CACHE_DEFECTS: dict[str, tuple[str, Callable | None, list]] = {
    # id: (which file, what to write given its current content, what the message names besides the file)
    "distances-empty": ("distances", lambda a: b"", []),
    "distances-truncated": ("distances", None, []),
    "distances-garbage": ("distances", lambda a: GARBAGE, []),
    "distances-too-few": ("distances", lambda a: a[:-1], [MISMATCH, "distances"]),
    "distances-nan": ("distances", lambda a: np.where(np.arange(len(a)) == 3, np.nan, a), []),
    "distances-inf": ("distances", lambda a: np.where(np.arange(len(a)) == 3, np.inf, a), []),
    "distances-two-dimensional": ("distances", lambda a: a[:, None], []),
    "labels-too-few": ("dnn_labels", lambda a: a[:-1], [MISMATCH, "labels"]),
    "labels-fractional": ("dnn_labels", lambda a: a + 0.5, []),
    "labels-negative": ("dnn_labels", lambda a: a - 100, []),
    "labels-two-dimensional": ("dnn_labels", lambda a: a[:, None], []),
    "probabilities-nan": ("probabilities", lambda a: a * np.nan, []),
    "probabilities-too-few": ("probabilities", lambda a: a[:-1], [MISMATCH, "probabilities"]),
    "probabilities-other-class-count": ("probabilities", lambda a: np.pad(a, ((0, 0), (0, 2))), [MISMATCH, "classes"]),
    "probabilities-are-logits": ("probabilities", lambda a: np.log(a + 1e-12), ["not softmax probabilities"]),
    "probabilities-above-one": ("probabilities", lambda a: a * 2, ["not softmax probabilities"]),
    "labels-outside-the-classes": ("dnn_labels", lambda a: np.where(np.arange(len(a)) == 3, 99, a),
                                   ["label 99", "10 classes"]),
    "ground-truth-missing": ("ground_truth", lambda a: None, []),
    "ground-truth-garbage": ("ground_truth", lambda a: GARBAGE, []),
    "ground-truth-too-few": ("ground_truth", lambda a: a[:-1], [FIRST_MISMATCH, "ground truth"]),
    "ground-truth-fractional": ("ground_truth", lambda a: a + 0.5, []),
}


@pytest.mark.parametrize("defect", list(CACHE_DEFECTS))
def test_bad_cache_file(capsys, ws, defect):
    which, change, named = CACHE_DEFECTS[defect]
    path = ws.truth if which == "ground_truth" else ws.cache(which)
    if named and named[0] not in (MISMATCH, FIRST_MISMATCH):  # a defect found in the file itself: named
        named = [*named, path]
    if change is None:
        truncate(path)
    else:
        new = change(np.load(path))
        if new is None:
            path.unlink()
        elif isinstance(new, bytes):
            replace_file(path, new)
        else:
            save_npy(path, new)
    expect_refusal(capsys, ws, "evaluate", fragments=named or [path])


# ---------------------------------------------------------------------------------------------
# a released dataset (the paper's .pth files) that is missing, corrupt or unusable
# ---------------------------------------------------------------------------------------------

GTSRB_GRID = ["--datasets", "GTSRB", "--models", "squeezenet", "--bugs", "0", "--epochs", "1"]


def write_gtsrb(ws: Workspace, **overrides) -> Path:
    """A small valid GTSRB in the paper's layout (three classes, 8×8 uint8 NHWC), some arrays replaced."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), "y_train": np.repeat(np.arange(3), 8),
              "x_test": rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8), "y_test": np.repeat(np.arange(3), 3)}
    arrays.update(overrides)
    folder = ws.data / "GTSRB"
    for stem, array in arrays.items():
        replace_file(folder / f"{stem}.pth", lambda p, a=array: torch.save(a, p))
    return folder


DATASET_DEFECTS: dict[str, tuple[str, Callable]] = {
    "missing-file": ("y_test", lambda folder: (folder / "y_test.pth").unlink()),
    "empty-file": ("x_train", lambda folder: replace_file(folder / "x_train.pth", b"")),
    "truncated-file": ("x_train", lambda folder: truncate(folder / "x_train.pth")),
    "garbage-file": ("y_train", lambda folder: replace_file(folder / "y_train.pth", GARBAGE)),
    "nan-pixels": ("x_train", lambda folder: replace_file(folder / "x_train.pth", lambda p: torch.save(
        np.full((24, 8, 8, 3), np.nan, dtype=np.float32), p))),
    "fewer-labels-than-images": ("GTSRB", lambda folder: replace_file(folder / "y_train.pth", lambda p: torch.save(
        np.repeat(np.arange(3), 7), p))),
    # class 2 has a single training image: the stratified split cannot put it in both splits
    "validation-split-lacks-a-class": ("GTSRB", lambda folder: replace_file(
        folder / "y_train.pth", lambda p: torch.save(np.array([0] * 12 + [1] * 11 + [2]), p))),
    "fractional-labels": ("y_train", lambda folder: replace_file(folder / "y_train.pth", lambda p: torch.save(
        np.repeat(np.arange(3), 8) + 0.5, p))),
    "flat-images": ("x_train", lambda folder: replace_file(folder / "x_train.pth", lambda p: torch.save(
        np.zeros((24, 192), dtype=np.uint8), p))),
}


@pytest.mark.parametrize("defect", list(DATASET_DEFECTS))
def test_bad_released_dataset(capsys, ws, defect):
    named, damage = DATASET_DEFECTS[defect]
    folder = write_gtsrb(ws)
    damage(folder)
    expect_refusal(capsys, ws, "train", fragments=[named], grid=GTSRB_GRID)
    assert not any(ws.model.glob("*GTSRB*"))


# ---------------------------------------------------------------------------------------------
# unwritable output folders (a file in the way: root ignores permission bits)
# ---------------------------------------------------------------------------------------------

def blocked_folder(ws: Workspace) -> Path:
    replace_file(ws.root / "blocked", b"a file where a folder should be")
    return ws.root / "blocked" / "sub"


@pytest.mark.parametrize("script, flag", [("train", "--model-root"), ("fit", "--info-root"), ("fit", "--output"),
                                          ("cache", "--info-root"), ("evaluate", "--output"),
                                          ("realtime", "--output")])
def test_unwritable_output_folder(capsys, ws, script, flag):
    target = blocked_folder(ws)
    expect_refusal(capsys, ws, script, [flag, target], fragments=[target])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("script, flag", [("cache", "--info-root"), ("evaluate", "--output")])
def test_read_only_output_folder(capsys, ws, script, flag):
    target = ws.root / "read-only"
    target.mkdir()
    target.chmod(0o500)
    try:
        expect_refusal(capsys, ws, script, [flag, target], fragments=[target])
    finally:
        target.chmod(0o700)


ROOTS = {"--data-root": ("train", "fit", "cache", "realtime"), "--model-root": tuple(SCRIPTS),
         "--info-root": ("fit", "cache", "evaluate", "realtime"), "--output": tuple(SCRIPTS)}


@pytest.mark.parametrize("script, flag", [(script, flag) for flag, scripts in ROOTS.items() for script in scripts])
def test_a_root_that_is_a_file(capsys, ws, script, flag):
    """A root pointing at a file is refused naming its flag, not read as an empty folder ("0 versions")."""
    assert flag in script_flags(script)
    target = replace_file(ws.root / "a-file", b"not a folder")
    expect_refusal(capsys, ws, script, [flag, target], fragments=[flag, target, "not a folder"])


def test_unwritable_subfolder_found_only_when_writing(capsys, ws):
    """The KDE folder is a file: the failure is found before anything is changed, and loses nothing."""
    shutil.rmtree(ws.kdes)
    replace_file(ws.kdes, b"not a folder")
    expect_refusal(capsys, ws, "fit", ["--force"], fragments=[ws.kdes], grid=["--models", "squeezenet", "--bugs", "0"])


def test_unwritable_figure_folder_after_results(capsys, ws):
    output = ws.root / "fresh-output"
    replace_file(output / "figures", b"not a folder")
    expect_refusal(capsys, ws, "evaluate", ["--output", output], fragments=[output / "figures"])
    for name in ("results.csv", "summary.csv", "failure_prediction.csv", "methods.json"):  # finished: complete
        assert_same_file(output / name, ws.out / name)


# ---------------------------------------------------------------------------------------------
# hostile files: refused, and their code never runs
# ---------------------------------------------------------------------------------------------

HOSTILE_CHECKPOINTS = {
    # a state_dict with one poisoned entry (torch.save's zip format)
    "state-dict-with-os-system": lambda ws, p: torch.save({"features.0.weight": torch.zeros(1),
                                                           "features.0.bias": payload("system", ws.marker)}, p),
    "builtins-exec": lambda ws, p: torch.save(payload("exec", ws.marker), p),
    # torch's legacy (non-zip) format: a bare pickle
    "bare-pickle": lambda ws, p: p.write_bytes(pickle.dumps(payload("system", ws.marker))),
}


@pytest.mark.parametrize("script", ["train", "fit", "cache", "realtime"])
@pytest.mark.parametrize("kind", list(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoint_is_refused(capsys, ws, script, kind):
    path = replace_file(ws.checkpoint(), lambda p: HOSTILE_CHECKPOINTS[kind](ws, p))
    message = expect_refusal(capsys, ws, script, fragments=[path])
    assert "refused" in message


@pytest.mark.parametrize("stem, kind", [("x_train", "system"), ("x_train", "exec"), ("y_test", "system")])
def test_hostile_released_dataset_is_refused(capsys, ws, stem, kind):
    folder = write_gtsrb(ws)
    path = replace_file(folder / f"{stem}.pth", lambda p: torch.save(payload(kind, ws.marker), p))
    message = expect_refusal(capsys, ws, "train", fragments=[path], grid=GTSRB_GRID)
    assert "refused" in message


@pytest.mark.parametrize("script", ["evaluate", "realtime"])
@pytest.mark.parametrize("kind", ["system", "exec"])
def test_hostile_kde_pickle_is_refused(capsys, ws, script, kind):
    correct, _ = use_paper_pickles(ws)
    replace_file(correct, pickle.dumps(payload(kind, ws.marker)))
    message = expect_refusal(capsys, ws, script, fragments=[correct])
    assert "refused" in message


@pytest.mark.parametrize("target", ["distances", "ground_truth", "kde"])
def test_hostile_numpy_file_is_refused(capsys, ws, target):
    """Object arrays pickle their elements: ``allow_pickle=False`` must refuse them unopened."""
    evil = np.array([payload("system", ws.marker)], dtype=object)
    if target == "kde":
        path = rewrite_npz(ws.kde("correct"), points=evil)
    else:
        path = ws.truth if target == "ground_truth" else ws.cache(target)
        replace_file(path, lambda p: np.save(open(p, "wb"), evil, allow_pickle=True))
    expect_refusal(capsys, ws, "evaluate", fragments=[path])


@pytest.mark.parametrize("kind", ["system", "exec"])
def test_payloads_really_run_code_when_loaded_unsafely(tmp_path, kind):
    """The control: every loader used above, made unsafe, runs the payload (so "refused" means something)."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(payload(kind, marker)))
    assert marker.exists()
    marker.unlink()
    torch.save({"w": payload(kind, marker)}, tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()
    marker.unlink()
    np.save(tmp_path / "evil.npy", np.array([payload(kind, marker)], dtype=object), allow_pickle=True)
    np.load(tmp_path / "evil.npy", allow_pickle=True)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# repairs: a rerun replaces what it can recompute
# ---------------------------------------------------------------------------------------------

def test_fit_replaces_a_corrupt_kde_file(capsys, ws, pipeline):
    truncate(ws.kde("wrong"))
    before = snapshot(ws.root)
    result = run_in_process(capsys, "fit", *ws.argv("fit"))
    assert result.returncode == 0, result.stderr
    after = snapshot(ws.root)
    validation = [layout.validation_path(ws.info, "squeezenet", "DIGITS", 0, what) for what in VALIDATION_FILES]
    manifest = layout.manifest_path(ws.info, "fit", "squeezenet", "DIGITS", 0)
    refit = {str(path.relative_to(ws.root)) for path in [ws.kde("correct"), ws.kde("wrong"), *validation, manifest]}
    refit.add("out/figures/kde_squeezenet_DIGITS.png")
    assert {rel for rel in before if before[rel] != after.get(rel)} == refit  # nothing else touched
    for which in ("correct", "wrong"):
        assert_same_file(ws.kde(which), pipeline.kde(which))
    for path in validation:  # the version's validation outputs, measured again, are the same
        assert_same_file(path, pipeline.root / path.relative_to(ws.root))
    assert not [rel for rel in after if is_partial(rel)]


# ---------------------------------------------------------------------------------------------
# real subprocesses: a representative subset, started together in the background
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubprocessCase:
    id: str
    script: str
    kind: str
    setup: Callable[[Workspace], tuple[list, list]]  # -> (extra argv, fragments the error must name)
    succeeds: bool = False
    needs_pipeline: bool = True  # False: runs on an empty workspace, while the reference is being built

    def __str__(self) -> str:
        return self.id


def _hostile_checkpoint(ws):
    path = replace_file(ws.checkpoint(), lambda p: HOSTILE_CHECKPOINTS["builtins-exec"](ws, p))
    return [], [path]


def _nan_distances(ws):
    path = ws.cache("distances")
    save_npy(path, np.load(path) * np.nan)
    return [], [path]


def _blocked(flag):
    def setup(ws):
        target = blocked_folder(ws)
        return [flag, target], [target]
    return setup


def _fresh_evaluation(ws):
    shutil.rmtree(ws.out)
    return [], []


SUBPROCESS_CASES = [
    SubprocessCase("train-unknown-dataset", "train", "bad command line",
                   lambda ws: (["--datasets", "MNIST"], ["MNIST"]), needs_pipeline=False),
    SubprocessCase("fit-hostile-checkpoint", "fit", "hostile file", _hostile_checkpoint),
    SubprocessCase("cache-unwritable-info-root", "cache", "unwritable folder", _blocked("--info-root")),
    SubprocessCase("evaluate-nan-distances", "evaluate", "bad file", _nan_distances),
    SubprocessCase("realtime-zero-batch-size", "realtime", "bad command line (argparse)",
                   lambda ws: (["--batch-size", "0"], ["--batch-size"])),
    SubprocessCase("realtime-unwritable-output", "realtime", "unwritable folder", _blocked("--output")),
    SubprocessCase("train-reproduces", "train", "reproducibility",
                   lambda ws: (["--models", "squeezenet", "--bugs", "0", "--epochs", "1"], []),
                   succeeds=True, needs_pipeline=False),
    SubprocessCase("evaluate-reproduces", "evaluate", "reproducibility", _fresh_evaluation, succeeds=True),
]


@dataclass
class SubprocessOutcome:
    ws: Workspace
    result: subprocess.CompletedProcess
    fragments: list
    before: dict
    after: dict


def run_subprocess_case(case: SubprocessCase, pipeline: Workspace | None, base: Path) -> SubprocessOutcome:
    if pipeline is None:
        ws = Workspace(base / case.id)
        ws.root.mkdir(parents=True)
    else:
        ws = pipeline.clone(base / case.id)
    extra, fragments = case.setup(ws)
    own_grid = "--datasets" in extra or "--models" in extra
    argv = ws.argv(case.script, grid=extra) if own_grid else ws.argv(case.script, *extra)
    before = snapshot(ws.root)
    result = subprocess.run([sys.executable, str(REPO / SCRIPTS[case.script]), *argv], cwd=REPO, env=script_env(),
                            capture_output=True, text=True, timeout=600)
    return SubprocessOutcome(ws, result, fragments, before, snapshot(ws.root))


# ---------------------------------------------------------------------------------------------
# interruption: SIGKILL at chosen points, rerun, compare with the uninterrupted run
# ---------------------------------------------------------------------------------------------

def squeezenet_files(pattern: str) -> list[str]:
    return [pattern.format(key=key) for key in ("squeezenet_DIGITS", "squeezenet_DIGITS_bug1")]


@dataclass(frozen=True)
class Chain:
    """A script on a grid, SIGKILLed at each point in turn (each kill followed by a rerun), then run
    to completion; its files are then those of the uninterrupted reference run."""

    script: str
    grid: list
    inputs: tuple[str, ...]  # reference folders copied in before the first run
    outputs: tuple[str, ...]  # folders it writes (relative to the workspace): watched
    kills: tuple[KillPoint, ...]
    #: finished pieces of work: name -> files (relative to the workspace); with ``expected``, what it must write
    units: dict
    extra_expected: tuple[str, ...] = ()

    @property
    def expected(self) -> list[str]:
        return [f for files in self.units.values() for f in files] + list(self.extra_expected)


CACHED = "info/test_information_cached"
VALIDATION = "info/val_information_cached"
CHAINS = {
    "train": Chain(
        "train", [*SQUEEZENETS, "--epochs", "1"], (), ("model",),
        (KillPoint("mid-training of the second version", when_stderr("squeezenet_DIGITS_bug1")),
         KillPoint("mid-write of the second version's first file", when_file("squeezenet_DIGITS_bug1")),
         KillPoint("between the second version's files", when_file("squeezenet_DIGITS_bug1", partial=False))),
        {key: [f"model/{key}.pth", f"model/{key}.json", f"model/{key}_loss.png"]
         for key in ("squeezenet_DIGITS", "squeezenet_DIGITS_bug1")}),
    "fit": Chain(
        "fit", SQUEEZENETS, ("model",), ("info/kde_results", VALIDATION, "out/figures"),
        (KillPoint("mid-write of the first version's figure (its KDEs written)",
                   when_file("kde_squeezenet_DIGITS.png", prefix=False)),
         KillPoint("after the second version's KDEs, before its figure",
                   when_file("squeezenet_DIGITS_bug1_wrong.npz", partial=False))),
        {f"bug{bug}": [f"info/kde_results/{key}_correct.npz", f"info/kde_results/{key}_wrong.npz",
                       f"out/figures/kde_{key}.png", *(f"{VALIDATION}/DIGITS_squeezenet_bug{bug}_{what}.npy"
                                                      for what in VALIDATION_FILES),
                       f"{VALIDATION}/DIGITS_squeezenet_bug{bug}_manifest.json"]  # finished: its manifest written
         for bug, key in ((0, "squeezenet_DIGITS"), (1, "squeezenet_DIGITS_bug1"))}),
    "cache": Chain(
        "cache", SQUEEZENETS, ("model",), (CACHED,),
        (KillPoint("mid-attack of the second version", when_stderr("squeezenet_DIGITS_bug1")),
         KillPoint("after three of the second version's five arrays",
                   when_file("DIGITS_squeezenet_bug1_probabilities.npy", partial=False))),
        {"ground truth": [f"{CACHED}/DIGITS_ground_truth.npy"],
         **{f"bug{bug}": [*(f"{CACHED}/DIGITS_squeezenet_bug{bug}_{what}.npy" for what in CACHE_FILES),
                          f"{CACHED}/DIGITS_squeezenet_bug{bug}_manifest.json"] for bug in (0, 1)}}),
    "realtime": Chain(
        "realtime", None, ("model", "info"), ("out/realtime",),
        # nothing to resume: it computes everything, then writes; so one kill, where its files appear (a kill
        # mid-attack would find nothing written, and costs a third of a run)
        (KillPoint("while writing the results", when_file("results.csv")),),
        {},
        tuple(f"out/realtime/{name}" for name in ("results.csv", "summary.csv", "failure_prediction.csv",
                                                  "selective.csv", "latency.csv", "methods.json",
                                                  "figures/methods_DIGITS.png", "figures/compute_DIGITS.png",
                                                  "figures/reliability_DIGITS.png",
                                                  "figures/risk_coverage_DIGITS.png"))),
}


@dataclass
class ChainOutcome:
    ws: Workspace
    log: list[str]
    finished: dict  # files of work complete at some kill -> their signature then
    after: dict  # the workspace after the last run


def run_chain(chain: Chain, pipeline: Workspace | None, base: Path) -> ChainOutcome:
    ws = Workspace(base / "ws")
    ws.root.mkdir(parents=True)
    for folder in chain.inputs:
        Workspace(pipeline.root / folder).clone(ws.root / folder)
    outputs = [ws.root / folder for folder in chain.outputs]
    argv = ws.argv(chain.script, grid=chain.grid)
    argv.remove("--quiet")  # progress bars on stderr mark the phases some kill points wait for
    finished, log = {}, []
    for kill in chain.kills:
        trial = run_watched(chain.script, argv, outputs, base / "logs", kill)
        assert trial.killed, (f"{chain.script}: the kill point '{kill.description}' never came "
                              f"(exit {trial.returncode})", trial.stderr[-2000:])
        assert not trial.incomplete, f"incomplete files visible under their final names: {trial.incomplete}"
        log.append(f"[kill] {chain.script}: SIGKILL {kill.description}; temporary files at the kill: "
                   f"{[Path(p).name for p in trial.partials_at_kill]}; {trial.files_checked} files loaded "
                   f"over {trial.polls} polls, all complete")
        now = snapshot(ws.root)
        for files in chain.units.values():
            if all(f in now for f in files):
                for f in files:
                    finished.setdefault(f, now[f])
    for rel in chain.expected:  # what a writer killed mid-write leaves: ".{name}.partial.XXXX{ext}", half full
        target = ws.root / rel
        if not target.exists():
            replace_file(target.parent / f".{target.name}.partial.stale{target.suffix}", GARBAGE[:100])
    final = run_watched(chain.script, argv, outputs, base / "logs")
    assert final.returncode == 0, final.stderr[-3000:]
    assert not final.incomplete, final.incomplete
    log.append(f"[kill] {chain.script}: rerun to completion (exit 0), {len(finished)} files finished before a "
               f"kill left untouched")
    return ChainOutcome(ws, log, finished, snapshot(ws.root))


# ---------------------------------------------------------------------------------------------
# the subprocess work runs in the background, two jobs at a time, while the in-process tests run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def background(request, tmp_path_factory):
    """Starts every collected subprocess case and kill-and-resume chain as soon as the module starts;
    jobs that need no reference run start even before it is built. Each test waits for its own."""
    items = [item for item in request.session.items if item.module.__name__ == __name__]
    names = {item.originalname for item in items}
    chains = [item.callspec.params["name"] for item in items if item.originalname == "test_kill_and_resume"]
    cases = [item.callspec.params["case"] for item in items
             if item.originalname == "test_representative_subprocess_case"]
    if "test_same_seed_gives_the_same_accuracies_and_results" in names:
        cases += [case for case in SUBPROCESS_CASES if case.succeeds]
    if not chains and not cases:
        yield {}
        return
    base = tmp_path_factory.mktemp("background")
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {}
    for needs_pipeline in (False, True):
        pipeline = request.getfixturevalue("pipeline_realtime") if needs_pipeline else None
        for name in chains:
            if bool(CHAINS[name].inputs) == needs_pipeline:
                jobs[name] = pool.submit(run_chain, CHAINS[name], pipeline, base / name)
        for case in cases:
            if case.needs_pipeline == needs_pipeline:
                jobs[case.id] = pool.submit(run_subprocess_case, case, pipeline, base / "cases")
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", [c for c in SUBPROCESS_CASES if not c.succeeds], ids=str)
def test_representative_subprocess_case(background, case):
    outcome = background[case.id].result()
    assert_clean_failure(outcome.result, *outcome.fragments)
    assert_nothing_lost(outcome.ws.root, outcome.before, outcome.after)
    assert not outcome.ws.marker.exists(), "hostile code ran"


def test_same_seed_gives_the_same_accuracies_and_results(background, pipeline):
    """A fresh process trains the same weights and measures the same accuracies as the reference
    run, and evaluating the cache again writes the same result CSVs, byte for byte."""
    trained = background["train-reproduces"].result()
    assert trained.result.returncode == 0, trained.result.stderr[-3000:]
    assert_same_file(trained.ws.checkpoint(), pipeline.checkpoint())
    got, want = comparable_metadata(trained.ws.metadata()), comparable_metadata(pipeline.metadata())
    assert (got["val_acc"], got["test_acc"]) == (want["val_acc"], want["test_acc"])
    assert got == want

    evaluated = background["evaluate-reproduces"].result()
    assert evaluated.result.returncode == 0, evaluated.result.stderr[-3000:]
    for name in ("results.csv", "summary.csv", "failure_prediction.csv", "methods.json"):
        assert_same_file(evaluated.ws.out / name, pipeline.out / name)


@pytest.mark.parametrize("name", list(CHAINS))
def test_kill_and_resume(background, pipeline, name):
    """Killed at each point and rerun: every file complete at every moment (checked while it ran),
    work finished before a kill not redone, no temporary file left, the uninterrupted run's files."""
    chain = CHAINS[name]
    outcome = background[name].result()
    print("\n".join(outcome.log))
    assert {f: outcome.after.get(f) for f in outcome.finished} == outcome.finished, \
        "work finished before a kill was redone or lost"
    assert_same_outputs(outcome.ws.root, pipeline.root, [outcome.ws.root / f for f in chain.outputs], chain.expected)
