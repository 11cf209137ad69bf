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
