"""Atomic writes: complete or absent, never half; old content kept on failure; ordinary permissions."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage.files import TEMP_MARK, atomic_path, atomic_save_npy, atomic_write_text
from utils import UsageError


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_results_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    mask = os.umask(0o027)
    try:
        atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    finally:
        os.umask(mask)
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == 0o640


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "finished")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "finished"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / f".file.txt{TEMP_MARK}.abc123.txt"
    stale.write_text("left by SIGKILL")
    atomic_write_text(tmp_path / "file.txt", "new")
    assert not stale.exists()
    assert (tmp_path / "file.txt").read_text() == "new"


def test_a_file_where_the_folder_should_be_is_a_usage_error(tmp_path):
    (tmp_path / "blocked").write_text("not a folder")
    with pytest.raises(UsageError, match="cannot write"):
        atomic_write_text(tmp_path / "blocked" / "file.txt", "x")
