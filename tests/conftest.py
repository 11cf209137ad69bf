"""Shared test helpers: the repository on sys.path, script runner, small fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(min(2, torch.get_num_threads()))


def run_script(script: str, *args, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the ``main_*`` scripts as a user would, capturing its output."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one line on stderr starting with ``error:``, no traceback, mentioning ``fragments``."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture
def roots(tmp_path):
    """Separate model / info / output folders for one test, as command-line flags."""
    folders = {name: tmp_path / name for name in ("model", "info", "output")}
    flags = ["--model-root", folders["model"], "--info-root", folders["info"], "--output", folders["output"], "--quiet"]
    return folders, flags


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
