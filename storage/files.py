"""Files on disk: atomic writes, make-like freshness, and loading that never runs code.

Every result is written to a temporary file beside its target and moved into place with
``os.replace``, so an interrupted run leaves the old file (or none), never half a file, and a rerun
can trust what it finds. Loading uses ``torch.load(weights_only=True)`` with one NumPy allow-list,
shared with the restricted unpickler of the paper's KDE pickles (``failure_model/kde.py``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils import UsageError

TEMP_MARK = ".partial"  # marks files being written (".{name}.partial.XXXX{ext}"); never read by the pipeline
CSV_FLOAT_FORMAT = "%.6f"  # result tables: six decimals, empty cells for missing values


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
            if not _writer_alive(stale.name[len(prefix):]):
                stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{_WRITER}.", suffix=path.suffix, dir=path.parent)
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


#: who writes a temporary file: host and process, in its name, so that a writer never removes another live
#: writer's temporary (two runs into one folder), only those a killed run left
_WRITER = f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _writer_alive(rest: str) -> bool:
    """Whether the temporary whose name continues with ``rest`` belongs to a live process of this host (another
    host's are left alone: only that host can tell)."""
    writer = rest.split(".", 1)[0]
    host, _, pid = writer.rpartition("-")
    if not pid.isdigit() or not host:
        return False  # an older temporary's name: no writer recorded
    if host != _WRITER.rpartition("-")[0]:
        return True
    if int(pid) == os.getpid():
        return False  # this process's own leftover (a failed earlier write)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder, what: str):
    """Hold ``{folder}/.locks/folder.lock`` while ``what`` writes into ``folder``: a second run into the same
    folder waits for the first, saying which run holds it, instead of racing it file by file. (POSIX ``flock``;
    where it does not exist, no lock.)"""
    try:
        import fcntl  # deferred: POSIX only (elsewhere there is no lock)
    except ImportError:
        yield
        return
    lock = Path(folder) / ".locks" / "folder.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}; choose a writable folder") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another run"
            print(f"note: {folder} is being written by {holder}; waiting for it to finish", file=sys.stderr,
                  flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        save_torch(tmp, obj)


def save_torch(path, obj) -> None:
    """``torch.save`` through a file handle: the archive's inner folder is then always ``archive/``, not the
    (temporary, random) file name, so that equal states give equal bytes (and equal ``file_digest``)."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


_DIGESTS: dict = {}


def file_digest(path) -> str:
    """The SHA-256 of a file's bytes, computed once per process for a file whose size, time and inode are
    unchanged (a checkpoint is read by several jobs of one worker)."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


def pyplot():
    """matplotlib's pyplot drawing off-screen (Agg): every figure here is a file. Imported on first use (deferred:
    matplotlib takes a second to load, and only the steps that draw need it)."""
    import matplotlib  # deferred: heavy, and only drawing needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as matplotlib

    return plt


def atomic_save_figure(path, figure) -> None:
    """Write a figure as a PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)


def atomic_write_table(path, table, columns=None) -> None:
    """Write a pandas DataFrame as CSV, atomically: floats with six decimals, missing values empty.

    ``columns`` fixes which columns are written and in what order (absent ones are written empty).
    """
    if columns is not None:
        table = table.reindex(columns=list(columns))
    table = table.apply(_numeric_if_possible)  # a float column holding None is "object": six decimals need floats
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format=CSV_FLOAT_FORMAT, na_rep="")


def _numeric_if_possible(column):
    import pandas as pd  # deferred: the storage layer loads for every step, the tables only for evaluations

    if column.dtype != object:
        return column
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column


def is_fresh(outputs, inputs) -> bool:
    """Make's rule: every output exists and is no older than every existing input.

    A retrained checkpoint thereby invalidates the failure model and caches derived from it.
    """
    outputs, inputs = [Path(p) for p in outputs], [Path(p) for p in inputs]
    if not all(p.is_file() for p in outputs):
        return False
    input_times = [p.stat().st_mtime for p in inputs if p.is_file()]
    return not input_times or min(p.stat().st_mtime for p in outputs) >= max(input_times)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

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


def load_array(path, remedy: str = "rerun main_cache_test_distances.py --force") -> np.ndarray:
    """A ``.npy`` array without pickles; an unreadable file is a UsageError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"cannot read {path} ({exc}); {remedy}") from exc


#: the NumPy globals a pickled array needs, as (module, name); nothing in it can run code
NUMPY_ARRAY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    # protocol 5 rebuilds arrays with _frombuffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


def is_numpy_array_global(module: str, name: str) -> bool:
    """Whether a pickle's global is one a NumPy array needs (the dtype classes of ``numpy.dtypes`` too)."""
    return (module, name) in NUMPY_ARRAY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType"))


def _numpy_safe_globals() -> list:
    """The allow-list as objects, for ``torch.serialization.safe_globals``."""
    found = []
    for module, name in sorted(NUMPY_ARRAY_GLOBALS):
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            continue  # NumPy 2's old alias of numpy._core: importing it only warns
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # numpy 1 has no numpy._core, numpy 2 warns on numpy.core
            continue
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"}
    return list(dict.fromkeys(found)) + sorted(dtype_classes, key=lambda c: c.__name__)


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
