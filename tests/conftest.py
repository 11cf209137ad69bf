"""The one test scaffolding: running the scripts (in process or as a user would), the exit-2 checker,
the workspace of one pipeline's roots, the session's reference pipeline, a fake release cache writer,
small data fixtures, and the real local clusters.

The reference pipeline (``pipeline``) is built once per session, in process with default flags, and shared
by every test that needs trained versions, failure models, caches and results; a test that changes files
works on a copy (``pipeline_copy``). Under pytest-xdist the workers share one build through a file lock.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(min(2, torch.get_num_threads()))

#: the six scripts by their short names
SCRIPTS = {
    "train": "main_train_model.py",
    "fit": "main_train_DeepFailGuard.py",
    "cache": "main_cache_test_distances.py",
    "evaluate": "main_test_DeepFailGuard_from_cached.py",
    "realtime": "main_test_DeepFailGuard.py",
    "validate": "main_validate_faults.py",
}
#: no warnings, no progress bars; the thread count is not forced: each script runs with its own ``--threads``
#: (default 1), the setting under test
SCRIPT_ENV = {"PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}


def script_file(script: str) -> str:
    """A script's file name, from its short name (``train``) or its file name."""
    return SCRIPTS.get(script, script)


def script_module(script: str):
    return importlib.import_module(Path(script_file(script)).stem)


@lru_cache(maxsize=None)
def script_flags(script: str) -> frozenset[str]:
    """Every flag a script's parser accepts (its parser holds only the flags it uses)."""
    parser = script_module(script).build_parser()
    return frozenset(flag for action in parser._actions for flag in action.option_strings)


# ---------------------------------------------------------------------------------------------
# running the scripts, and the exit contract
# ---------------------------------------------------------------------------------------------

def run_script(script: str, *args, cwd=None, timeout: int = 600, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Run one of the ``main_*`` scripts as a user would (``python main_x.py ...``), quiet."""
    full_env = {**os.environ, **SCRIPT_ENV, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script_file(script)), *map(str, args)], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_in_process(capsys, script: str, *args) -> subprocess.CompletedProcess:
    """A script's entry point, ``flags.run_main(main, argv)``, in this process: the same exit-status contract
    as on the command line without an interpreter's start-up; an escaping exception is exit 1 with its
    traceback on stderr, as the interpreter would print it."""
    from pipeline import flags

    main = script_module(script).main
    capsys.readouterr()
    trace = ""
    try:
        flags.run_main(main, [str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # noqa: BLE001 - a real bug: what the interpreter would print
        code, trace = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([script_file(script), *map(str, args)], code, captured.out,
                                       captured.err + trace)


def usage_error_message(result: subprocess.CompletedProcess, engine_lines: bool = False) -> str:
    """The one error line of a failed run (asserting the contract), without its ``prog: error:`` prefix.

    Ours: exactly one line ``main_x.py: error: ...``, the last one; only ``note:`` and ``warning:`` lines beside it
    (and, with ``engine_lines``, what an engine such as Ray logs on the driver's stderr on its own). argparse's
    (a flag that does not parse): the one line ``prog: error: ...; see --help`` and nothing else. Either way exit
    status 2 and no traceback.
    """
    stderr = result.stderr
    assert result.returncode == 2, f"exit status {result.returncode}, expected 2; stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    usage = re.fullmatch(r"\S+: error: (.*; see --help)", lines[-1])
    if usage:
        assert len(lines) == 1, lines
        return usage.group(1)
    errors = [line for line in lines if re.match(r"main_\w+\.py: error: ", line)]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert engine_lines or all(line in errors or line.startswith(("note:", "warning:")) for line in lines), lines
    return errors[0].split(": error: ", 1)[1].strip()


def assert_usage_error(result: subprocess.CompletedProcess, *fragments, engine_lines: bool = False) -> str:
    """Exit status 2, one error line (ours or argparse's), no traceback, naming every one of ``fragments``."""
    message = usage_error_message(result, engine_lines)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not named in: {message}"
    return message


# ---------------------------------------------------------------------------------------------
# a workspace: the four roots of one pipeline (or a copy of one)
# ---------------------------------------------------------------------------------------------

#: what every script gets unless a test says otherwise (where the script takes the flag): the real-time evaluation
#: times its live policies on 4 inputs once (the timing is tested, not measured, here: 20 inputs 4 times took 30 s)
COMMON_FLAGS = {"--device": "cpu", "--max-inputs": "20", "--latency-inputs": "4", "--latency-repeats": "1"}


@dataclass(frozen=True)
class Workspace:
    """The four roots of one pipeline copy, the files tests look at or break, and the command lines."""

    root: Path

    data = property(lambda self: self.root / "data")
    model = property(lambda self: self.root / "model")
    info = property(lambda self: self.root / "info")
    out = property(lambda self: self.root / "out")
    realtime = property(lambda self: self.root / "out" / "realtime")
    kdes = property(lambda self: self.root / "info" / "kde_results")
    cached = property(lambda self: self.root / "info" / "test_information_cached")
    marker = property(lambda self: self.root / "MARKER")
    truth = property(lambda self: self.cached / "DIGITS_ground_truth.npy")

    def checkpoint(self, model: str = "squeezenet", bug: int = 0) -> Path:
        from storage.layout import checkpoint_path

        return checkpoint_path(self.model, model, "DIGITS", bug)

    def metadata(self, model: str = "squeezenet", bug: int = 0) -> Path:
        from storage.layout import metadata_path

        return metadata_path(self.model, model, "DIGITS", bug)

    def kde(self, which: str = "correct", suffix: str = ".npz", model: str = "squeezenet", bug: int = 0) -> Path:
        from storage.layout import version_key

        return self.kdes / f"{version_key(model, 'DIGITS', bug)}_{which}{suffix}"

    def cache(self, what: str, model: str = "squeezenet", bug: int = 0) -> Path:
        from storage.layout import cache_path

        return cache_path(self.info, model, "DIGITS", bug, what)

    def flags(self, script: str) -> list[str]:
        """The roots ``script`` takes, pointing here (real-time results go to ``out/realtime``)."""
        roots = {"--data-root": self.data, "--model-root": self.model, "--info-root": self.info,
                 "--output": self.realtime if script == "realtime" else self.out}
        return [str(a) for flag, path in roots.items() if flag in script_flags(script) for a in (flag, path)]

    def argv(self, script: str, *extra, grid=None) -> list[str]:
        """Grid, roots, ``COMMON_FLAGS`` the script takes, ``--quiet``, then ``extra`` (last, so it overrides)."""
        common = [a for flag, value in COMMON_FLAGS.items() if flag in script_flags(script) for a in (flag, value)]
        grid = PIPELINE_GRID[script] if grid is None else grid
        return [str(a) for a in (*grid, *self.flags(script), *common, "--quiet", *extra)]

    def files(self) -> list[str]:
        """What the steps wrote (relative paths), without lock files and engine logs."""
        found = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root)
            if path.is_file() and ".locks" not in rel.parts and rel.parts[:2] != ("out", "logs"):
                found.append(str(rel))
        return sorted(found)

    def clone(self, destination: Path) -> "Workspace":
        """A copy with mtimes kept (freshness depends on them); checkpoints hard-linked, which is safe because
        every writer replaces files (``os.replace``) and tests unlink a file before planting a bad one."""

        def link_or_copy(source, target):
            if str(source).endswith(".pth"):
                try:
                    os.link(source, target)
                    return target
                except OSError:
                    pass
            return shutil.copy2(source, target)

        shutil.copytree(self.root, destination, copy_function=link_or_copy)
        return Workspace(destination)


# ---------------------------------------------------------------------------------------------
# the session's reference pipeline
# ---------------------------------------------------------------------------------------------

#: squeezenet healthy, with fault 1 (trained) and fault 10 (derived), densenet healthy and with fault 10;
#: one epoch each on DIGITS, at most 20 validation and test inputs attacked per version; densenet's fault 1
#: is not trained, so the later steps skip it with a note
PIPELINE_VERSIONS = ["--models", "squeezenet", "densenet", "--bugs", "0", "1", "10"]
PIPELINE_GRID = {
    "train": ["--models", "squeezenet", "--bugs", "0", "1", "10", "--epochs", "1"],
    "fit": PIPELINE_VERSIONS,
    "cache": PIPELINE_VERSIONS,
    "evaluate": PIPELINE_VERSIONS,
    "realtime": PIPELINE_VERSIONS,
    "validate": ["--models", "squeezenet", "--bugs", "9", "--epochs", "1", "--seeds", "2"],
}
#: the reference run in parts: each architecture's versions trained, fitted and cached (independent: no file is
#: written by both), then the two evaluations of them all. Under pytest-xdist the workers build the two
#: architectures' parts side by side; the files are those of one run of every step in order
PIPELINE_PARTS = {
    "densenet": [("train", ["--models", "densenet", "--bugs", "0", "10", "--epochs", "1"]),
                 ("fit", ["--models", "densenet", "--bugs", "0", "10"]),
                 ("cache", ["--models", "densenet", "--bugs", "0", "10"])],
    "squeezenet": [("train", PIPELINE_GRID["train"]),
                   ("fit", ["--models", "squeezenet", "--bugs", "0", "1", "10"]),
                   ("cache", ["--models", "squeezenet", "--bugs", "0", "1", "10"])],
    "evaluations": [("evaluate", PIPELINE_VERSIONS)],
    # built for the tests that read the real-time evaluation's files (``pipeline_realtime``: all are slow)
    "realtime": [("realtime", PIPELINE_VERSIONS)],
}
#: what the ``pipeline`` fixture waits for (the real-time part is ``pipeline_realtime``'s)
CACHED_PARTS = ("densenet", "squeezenet", "evaluations")


def build_steps(ws: Workspace, steps) -> Workspace:
    """Steps through their scripts' entry points, with default flags (each step sets its own thread count,
    ``--threads``; the test process's is restored after)."""
    previous = torch.get_num_threads()
    try:
        for script, grid in steps:
            assert script_module(script).main(ws.argv(script, grid=grid)) == 0, script
    finally:
        torch.set_num_threads(previous)
    return ws


def build_pipeline(ws: Workspace, parts=CACHED_PARTS) -> Workspace:
    """The uninterrupted reference run of ``parts``, in this process."""
    return build_steps(ws, [step for part in parts for step in PIPELINE_PARTS[part]])


def build_shared_pipeline(shared: Path, parts=CACHED_PARTS) -> Workspace:
    """The reference pipeline's ``parts`` in ``shared/pipeline``, built by whoever gets there first: each caller
    builds every architecture's part nobody else is building, waits for the others, then builds (or waits for) the
    evaluations, and returns the workspace. Each part is built under a file lock and marked done when finished,
    so a builder that died leaves its part to the next caller."""
    from filelock import FileLock, Timeout

    ws = Workspace(shared / "pipeline")

    def build(part: str, wait: bool) -> None:
        done = shared / f"pipeline-{part}.done"
        try:
            with FileLock(str(shared / f"pipeline-{part}.lock"), timeout=-1 if wait else 0):
                if not done.is_file():
                    build_steps(ws, PIPELINE_PARTS[part])
                    done.touch()
        except Timeout:  # another process builds it
            pass

    for part in ("densenet", "squeezenet"):
        build(part, wait=False)
    for part in parts:
        build(part, wait=True)
    return ws


#: how much lower than the background builder the xdist workers run (``os.nice``): the tests that need no pipeline
#: run beside it, on what it leaves
BUILDER_PRECEDENCE = 10
#: the background builder: ``python -c BUILDER SHARED`` builds the shared pipeline in a process of its own
BUILDER = ("import sys; from pathlib import Path; import conftest; "
           "conftest.build_shared_pipeline(Path(sys.argv[1]), tuple(sys.argv[2:]))")


@pytest.fixture(scope="session", autouse=True)
def pipeline_in_the_background(request, tmp_path_factory):
    """Under pytest-xdist, when any collected test needs the reference pipeline, the first worker starts building
    it in a process of its own at once, while both workers run the tests that need none (they come first), at a
    lower priority: the pipeline's minute is spent beside them, not before them. The builder is waited for at the
    end."""
    fixtures = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or "pipeline" not in fixtures:
        yield
        return
    builder = None
    if worker == "gw0":
        shared = tmp_path_factory.getbasetemp().parent
        parts = [*CACHED_PARTS, *(["realtime"] if "pipeline_realtime" in fixtures else [])]
        with open(shared / "pipeline-builder.log", "w") as log:
            builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(shared), *parts], cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT,
                                       env={**os.environ, **SCRIPT_ENV, "PYTHONPATH": os.pathsep.join(
                                           [str(REPO / "tests"), str(REPO)])})
    os.nice(BUILDER_PRECEDENCE)  # every worker yields the cores to the builder: the pipeline is the critical path
    yield
    if builder is not None:
        builder.wait()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Workspace:
    """The reference pipeline, built once per session (do not change it; ``pipeline_copy`` for a test that does):
    in this process, or under xdist shared by the workers and the background builder (``build_shared_pipeline``)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build_pipeline(Workspace(tmp_path_factory.mktemp("pipeline")))
    return build_shared_pipeline(tmp_path_factory.getbasetemp().parent)


@pytest.fixture(scope="session")
def pipeline_realtime(pipeline, tmp_path_factory) -> Workspace:
    """The reference pipeline with its real-time evaluation too (``out/realtime``); request it before
    ``pipeline_copy`` for a copy that has it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        if not (pipeline.realtime / "results.csv").is_file():
            build_steps(pipeline, PIPELINE_PARTS["realtime"])
        return pipeline
    return build_shared_pipeline(tmp_path_factory.getbasetemp().parent, (*CACHED_PARTS, "realtime"))


#: fixtures that need the reference pipeline (the reliability suite's ``background`` asks for it as it runs)
PIPELINE_USERS = {"pipeline", "background"}


def pytest_collection_modifyitems(items):
    """The tests that need the reference pipeline run after the others (in their order): under xdist every worker
    has work while the pipeline is built in the background, and the workers reach it together."""
    items.sort(key=lambda item: bool(PIPELINE_USERS & set(getattr(item, "fixturenames", ()))))


@pytest.fixture
def pipeline_copy(pipeline, tmp_path) -> Workspace:
    """A copy of the reference pipeline that a test may change."""
    return pipeline.clone(tmp_path / "ws")


#: the paper's habit: an architecture registered by a line appended to ModelManager.py
APPENDED_ARCHITECTURE = ("\n\nregister_model(torchvision_architecture('edited', "
                         "torchvision.models.mobilenet_v3_small))\n")


def repository_copy(destination: Path, appended_to_model_manager: str = "") -> Path:
    """A copy of the repository's code and tables (what git tracks or would, ``.py`` and ``.csv``), with
    ``appended_to_model_manager`` at the end of its ``ModelManager.py``; its path."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    for path in tracked:
        if path.endswith((".py", ".csv", ".toml")):
            (destination / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, destination / path)
    with open(destination / "ModelManager.py", "a") as handle:
        handle.write(appended_to_model_manager)
    return destination


# ---------------------------------------------------------------------------------------------
# a release in the paper's layout, made up
# ---------------------------------------------------------------------------------------------

def write_fake_cache(info, dataset: str, truth, versions: dict) -> None:
    """Write a test cache and failure models in the paper's layout under ``info``: the ground truth, and per
    ``(model, bug) -> (labels, distances, correct_kde, wrong_kde)`` the two cache arrays (as given: the
    paper's are float32 or float64) and the pickled ``scipy.stats.gaussian_kde`` pair."""
    from storage import layout

    truth_path = layout.ground_truth_path(info, dataset, 0)
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    (Path(info) / layout.KDE_SUBDIR).mkdir(parents=True, exist_ok=True)
    np.save(truth_path, truth)
    for (model, bug), (labels, distances, correct_kde, wrong_kde) in versions.items():
        np.save(layout.cache_path(info, model, dataset, bug, "distances"), distances)
        np.save(layout.cache_path(info, model, dataset, bug, "dnn_labels"), labels)
        key = layout.version_key(model, dataset, bug)
        for which, kde in (("correct", correct_kde), ("wrong", wrong_kde)):
            (Path(info) / layout.KDE_SUBDIR / f"{key}_{which}.pkl").write_bytes(pickle.dumps(kde))


# ---------------------------------------------------------------------------------------------
# registries, and small data
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def restore_registries():
    """Architectures, datasets, faults, scores, selection methods, distance modes and launchers registered by the
    test are gone after it."""
    import FaultInjector
    import launchers
    import mydataset
    import mymodel
    import selection
    from storage.settings import DISTANCE_MODES

    registries = (mymodel.MODELS, mydataset.DATASETS, FaultInjector.FAULTS, selection.SCORES, selection.METHODS,
                  DISTANCE_MODES, launchers.LAUNCHERS)
    saved = [dict(registry) for registry in registries]
    yield
    for registry, entries in zip(registries, saved):
        registry.clear()
        registry.update(entries)


def unused_name(registry, base: str) -> str:
    """``base``, or ``base2``, ``base3``, … : a name the registry does not hold yet, so that a test's own entry
    never clashes with one a user added (the README's ``mobilenet``, say)."""
    name, number = registry.spelling(base), 1
    while name in registry:
        number += 1
        name = registry.spelling(f"{base}{number}")
    return name


def unused_fault_id() -> int:
    """The first fault id after the registered ones."""
    import FaultInjector

    return FaultInjector.fault_ids()[-1] + 1


@pytest.fixture(scope="session")
def digits():
    """The healthy DIGITS splits, loaded once; shared, so tests must not modify them."""
    import DatasetManager

    return DatasetManager.create_dataset("DIGITS")


def digits_subset(data, n_train: int = 64, n_val: int = 32, n_test: int = 32):
    """A small copy of a ``MyData`` (the first images of each split) for fast training runs."""
    from dataclasses import replace

    return replace(data, x_train=data.x_train[:n_train].clone(), y_train=data.y_train[:n_train].clone(),
                   x_val=data.x_val[:n_val].clone(), y_val=data.y_val[:n_val].clone(),
                   x_test=data.x_test[:n_test].clone(), y_test=data.y_test[:n_test].clone())


@pytest.fixture
def tiny_digits(digits):
    """64 train / 32 validation / 32 test DIGITS images (copies: a test may change them)."""
    return digits_subset(digits)


@pytest.fixture
def single_thread():
    """One intra-op thread while a test runs: tiny networks gain nothing from more, and on a
    shared, busy machine several threads spin against each other and slow small ops 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_subset():
    """The function behind ``tiny_digits``, for tests that shrink datasets they build themselves."""
    return digits_subset


@pytest.fixture
def write_released():
    """Write a fake released dataset ``{root}/{name}/{x,y}_{train,test}.pth`` (``torch.save`` of each array)."""

    def write(root, name, x_train, y_train, x_test, y_test):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for stem, array in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
            torch.save(array, folder / f"{stem}.pth")
        return folder

    return write


# -- real local clusters (tests/cluster.py): one of each per test session, inside one loopback-only
# network namespace; a test asking for one is skipped, with the reason, where it cannot be started


#: the tests that start or use a Ray, and those that start or use a Slurm, each run on one xdist worker: the
#: session's cluster is started once there, and no two Slurms share the node's files; the two groups may run side by
#: side (``--dist loadgroup``)
RAY_GROUP, SLURM_GROUP = pytest.mark.xdist_group("ray"), pytest.mark.xdist_group("slurm")


@pytest.fixture(scope="session")
def loopback_ns():
    """A network namespace with only ``lo`` (``cluster.LoopbackNamespace``) for the whole session."""
    from cluster import LoopbackNamespace, loopback_available

    ok, reason = loopback_available()
    if not ok:
        pytest.skip(reason)
    namespace = LoopbackNamespace()
    yield namespace
    namespace.close()


@pytest.fixture(scope="session")
def ray_cluster(loopback_ns):
    """A one-node Ray cluster (2 CPUs, 4 pretend GPUs) in ``loopback_ns``; drivers use ``.env``."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray not installed: pip install -r envs_requirements/requirements-cluster.txt")
    from cluster import RayCluster

    # pretend GPUs: the host's CUDA_VISIBLE_DEVICES must not leak into the workers
    cluster = RayCluster(loopback_ns, num_cpus=2, num_gpus=4, env={"CUDA_VISIBLE_DEVICES": None})
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(loopback_ns):
    """A private one-node Slurm (4 pretend GPUs) in ``loopback_ns``; clients use ``.env`` (SLURM_CONF)."""
    from cluster import SlurmCluster, slurm_available

    ok, reason = slurm_available()
    if not ok:
        pytest.skip(reason)
    cluster = SlurmCluster(loopback_ns, gpus=4)
    yield cluster
    cluster.stop()


@pytest.fixture
def empty_workspace(tmp_path) -> Workspace:
    """A workspace with nothing in it yet, for a test that starts from nothing."""
    return Workspace(tmp_path / "ws")
