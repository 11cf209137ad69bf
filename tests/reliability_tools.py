"""Helpers of the reliability suite (tests/test_reliability.py): running the scripts, watching the
files they write, killing them at chosen points, hostile payloads, comparing outputs.

Nothing here touches production code: scripts are observed from outside, through their files and
their stderr, the way a job scheduler or a curious user would see them; an in-process run is killed at a
chosen write by standing in for ``os.replace``, through which every file of the pipeline arrives.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from conftest import REPO, SCRIPT_ENV, SCRIPTS, assert_usage_error

from pipeline.runner import LOCK_FOLDER

PARTIAL_MARK = ".partial."  # storage.atomic_path's temporary files: ".{name}.partial.XXXX{ext}"
#: a message says what to do: a command to run, a flag or value to use, a file to replace, ...
HINT = re.compile(r"\b(rerun|run|use|delete|remove|replace|choose|get|train|retrain|known|expected|point|add|"
                  r"recompute|measure|pass|only|must be|needs|faults are|a range like)\b", re.IGNORECASE)


def script_env(quiet: bool = True) -> dict:
    """The scripts' test environment (``conftest.SCRIPT_ENV``: one thread, no warnings), with progress bars
    when asked."""
    env = {**os.environ, **SCRIPT_ENV}
    if not quiet:
        env.pop("TQDM_DISABLE")
    return env


def start_script(name: str, argv, stdout, stderr, quiet: bool = True) -> subprocess.Popen:
    """Start ``python main_*.py argv`` as a user would (from the repository root)."""
    return subprocess.Popen([sys.executable, str(REPO / SCRIPTS[name]), *map(str, argv)], cwd=REPO,
                            env=script_env(quiet), stdout=stdout, stderr=stderr, text=True)


# ---------------------------------------------------------------------------------------------
# the exit contract and "nothing lost"
# ---------------------------------------------------------------------------------------------

def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one error line that names ``fragments`` (the file or argument) and says what to do."""
    message = assert_usage_error(result, *fragments)
    assert HINT.search(message), f"the message does not say what to do: {message}"
    return message


def is_partial(name: str) -> bool:
    name = Path(name).name
    return name.startswith(".") and PARTIAL_MARK in name


def partial_target(name: str) -> str:
    """The final name a temporary file is being written for."""
    name = Path(name).name
    return name[1:name.index(PARTIAL_MARK)]


def snapshot(root) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root``: (size, mtime, inode). A rewrite (os.replace) changes the inode,
    an in-place write the mtime, so equal snapshots mean nothing was touched."""
    root = Path(root)
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [f for f in subfolders if f != LOCK_FOLDER]  # the launches' locks, not results
        for name in names:
            path = Path(folder) / name
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return files


def assert_nothing_lost(root, before: dict, after: dict) -> None:
    """Files present before are untouched; new files are complete; no temporary file is left."""
    changed = [rel for rel, signature in before.items() if after.get(rel) != signature]
    assert not changed, f"files changed or removed by a failed run: {changed}"
    new = sorted(set(after) - set(before))
    assert not [rel for rel in new if is_partial(rel)], f"temporary files left: {new}"
    for rel in new:
        verify_complete(Path(root) / rel)


# ---------------------------------------------------------------------------------------------
# is a file complete?
# ---------------------------------------------------------------------------------------------

PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def verify_complete(path: Path) -> None:
    """Load ``path`` as what its name says; raises if it is truncated, half written or unreadable."""
    suffix = path.suffix
    if suffix == ".pth":
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and state, "empty checkpoint"
    elif suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    elif suffix == ".npy":
        np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                archive[key]
    elif suffix == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows and all(len(row) == len(rows[0]) for row in rows), "ragged or empty CSV"
        assert path.read_text().endswith("\n"), "CSV does not end with a newline"
    elif suffix == ".png":
        data = path.read_bytes()
        assert data.startswith(PNG_START) and data.endswith(PNG_END), "incomplete PNG"
    else:
        raise AssertionError(f"unexpected output file {path}")


# ---------------------------------------------------------------------------------------------
# comparing a run's outputs with the uninterrupted reference
# ---------------------------------------------------------------------------------------------

#: metadata fields that record when and how fast, not what (the measured latency among the costs)
VOLATILE_METADATA = ("created", "train_seconds")
VOLATILE_COSTS = ("forward_ms_per_input",)
VOLATILE_LATENCY = ("ms_per_input", "ratio_to_voting")


def comparable_metadata(path: Path) -> dict:
    metadata = json.loads(path.read_text())
    for key in VOLATILE_METADATA:
        metadata.pop(key, None)
    metadata.get("history", {}).pop("seconds", None)
    for key in VOLATILE_COSTS:
        metadata.get("costs", {}).pop(key, None)
    return metadata


def assert_same_file(path: Path, reference: Path) -> None:
    suffix = path.suffix
    if suffix == ".pth":
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = torch.load(reference, map_location="cpu", weights_only=True)
        assert list(state) == list(expected), path
        assert all(torch.equal(state[k], expected[k]) for k in state), f"{path}: tensors differ"
    elif suffix == ".json":
        assert comparable_metadata(path) == comparable_metadata(reference), f"{path}: metadata differs"
    elif suffix == ".npz":  # a zip: its members carry timestamps, so compare the arrays
        with np.load(path) as got, np.load(reference) as want:
            assert got.files == want.files, path
            for key in got.files:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{path}: {key}")
    elif path.name == "latency.csv":  # the same policies, labels and costs; the times are measurements
        got, want = (pd.read_csv(p).drop(columns=list(VOLATILE_LATENCY)) for p in (path, reference))
        pd.testing.assert_frame_equal(got, want, obj=str(path))
    else:  # .npy, .csv, .png: byte for byte
        assert path.read_bytes() == reference.read_bytes(), f"{path} differs from {reference}"


def assert_same_outputs(root: Path, reference_root: Path, folders: list[Path], expected: list[str]) -> None:
    """The ``folders`` (inside ``root``) hold exactly the ``expected`` files (relative to ``root``) — no
    temporary or extra file — each equal to the reference run's file at the same place."""
    got = sorted(str((Path(folder) / rel).relative_to(root)) for folder in folders for rel in snapshot(folder))
    assert got == sorted(expected), f"files differ from the uninterrupted run:\n got  {got}\n want {sorted(expected)}"
    for rel in expected:
        assert_same_file(Path(root) / rel, Path(reference_root) / rel)


# ---------------------------------------------------------------------------------------------
# watching and killing a running script
# ---------------------------------------------------------------------------------------------

class RunState:
    """What a watcher sees at one poll: files new or changed since the run started (final names and
    temporary files), and the run's stderr so far (read only when a trigger asks)."""

    def __init__(self, finals: set[str], partials: set[str], stderr_path: Path):
        self.finals, self.partials, self._stderr_path = finals, partials, stderr_path

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")


@dataclass
class KillPoint:
    description: str
    trigger: Callable[[RunState], bool]


def when_file(name: str, partial: bool = True, final: bool = True, prefix: bool = True) -> Callable[[RunState], bool]:
    """Fires when a file called ``name`` (or starting with it) is being written (``partial``) or has
    appeared under its final name (``final``), in this run."""

    def matches(candidate: str) -> bool:
        return candidate.startswith(name) if prefix else candidate == name

    def trigger(state: RunState) -> bool:
        names = [Path(f).name for f in state.finals] if final else []
        names += [partial_target(p) for p in state.partials] if partial else []
        return any(matches(n) for n in names)

    return trigger


def when_stderr(text: str) -> Callable[[RunState], bool]:
    return lambda state: text in state.stderr


@dataclass
class Trial:
    """One monitored run: how it ended, and what the watcher saw."""

    returncode: int
    stdout: str
    stderr: str
    killed: bool = False
    #: temporary files present right after the kill (non-empty: the kill landed mid-write)
    partials_at_kill: list[str] = field(default_factory=list)
    #: files seen under their final name that were not complete and loadable (must stay empty)
    incomplete: list[str] = field(default_factory=list)
    files_checked: int = 0
    polls: int = 0


class Watcher:
    """Polls output folders; every file under its final name must load completely, at every poll."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self.verified: dict[Path, tuple] = {}
        self.incomplete: list[str] = []

    def scan(self) -> tuple[dict[str, tuple], set[str]]:
        """``({final file: signature}, {temporary file})``, checking every new or changed final file."""
        finals, partials = {}, set()
        for root in self.folders:
            for folder, subfolders, names in os.walk(root):
                subfolders[:] = [f for f in subfolders if f != LOCK_FOLDER]  # the launches' locks, not results
                for name in names:
                    path = Path(folder) / name
                    if is_partial(name):
                        partials.add(str(path))
                        continue
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    signature = finals[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino)
                    if self.verified.get(path) == signature:
                        continue
                    try:
                        verify_complete(path)
                    except FileNotFoundError:
                        continue
                    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                        self.incomplete.append(f"{path} ({type(exc).__name__}: {exc})")
                    self.verified[path] = signature
        return finals, partials


def run_watched(name: str, argv, folders: list[Path], log_dir: Path, kill: KillPoint | None = None,
                timeout: float = 500, poll: float = 0.002) -> Trial:
    """Run a script (progress bars on, into a log file), watching ``folders``; SIGKILL it when
    ``kill`` fires on what changed since it started. Returns what happened."""
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{name}_{len(list(log_dir.glob('*.err')))}"
    err_path, out_path = log_dir / f"{tag}.err", log_dir / f"{tag}.out"
    watcher = Watcher(folders)
    baseline, baseline_partials = watcher.scan()
    started = time.monotonic()
    killed, partials_at_kill, polls = False, [], 0
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = start_script(name, argv, out, err, quiet=False)
        try:
            while process.poll() is None:
                finals, partials = watcher.scan()
                polls += 1
                if kill is not None:
                    new = {f for f, signature in finals.items() if baseline.get(f) != signature}
                    if kill.trigger(RunState(new, partials - baseline_partials, err_path)):
                        os.kill(process.pid, signal.SIGKILL)
                        process.wait()
                        killed = True
                        partials_at_kill = sorted(watcher.scan()[1] - baseline_partials)
                        break
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"{name} {argv} ran longer than {timeout} s")
                time.sleep(poll)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    watcher.scan()
    return Trial(process.returncode, out_path.read_text(), err_path.read_text(errors="replace"), killed,
                 partials_at_kill, watcher.incomplete, len(watcher.verified), polls)


# ---------------------------------------------------------------------------------------------
# hostile payloads: pickles that run code when loaded unsafely
# ---------------------------------------------------------------------------------------------

class RunsCode:
    """Pickles as ``func(argument)``: whoever unpickles it unsafely calls ``func``.

    The pickle references ``func`` itself (``posix.system``, ``builtins.exec``), not this class.
    """

    def __init__(self, func, argument: str):
        self.func, self.argument = func, argument

    def __reduce__(self):
        return self.func, (self.argument,)


def payload(kind: str, marker: Path) -> RunsCode:
    """``system``: ``os.system("touch MARKER")``; ``exec``: ``builtins.exec`` creating MARKER."""
    if kind == "system":
        return RunsCode(os.system, f"touch {marker}")
    if kind == "exec":
        return RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    raise ValueError(kind)


def replace_file(path: Path, writer: Callable[[Path], None] | bytes) -> Path:
    """Put new content at ``path``: unlink first, so a hard-linked shared original is never written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if isinstance(writer, (bytes, bytearray)):
        path.write_bytes(writer)
    else:
        writer(path)
    return path


# ---------------------------------------------------------------------------------------------
# dying at a chosen write, in process
# ---------------------------------------------------------------------------------------------

class Killed(BaseException):
    """Stands for the process dying: nothing the pipeline catches."""


@contextlib.contextmanager
def killed_at_write(number: int, under):
    """Every file the pipeline moves into place (``os.replace``) under ``under`` is counted; the ``number``-th
    never arrives: the run dies just before it, raising :class:`Killed` through everything, as a SIGKILL would
    leave it. Yields the count so far (a run that ends before the ``number``-th write was not killed)."""
    replace, count = os.replace, [0]

    def dying_replace(source, target, *args, **kwargs):
        if str(under) in str(target):
            count[0] += 1
            if count[0] == number:
                raise Killed(str(target))
        return replace(source, target, *args, **kwargs)

    original = os.replace
    os.replace = dying_replace
    try:
        yield count
    finally:
        os.replace = original
