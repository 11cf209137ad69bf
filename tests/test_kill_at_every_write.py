"""Killed at every write: each step of the pipeline (fit, cache, evaluation) dies just before each of the files
it writes, in turn, and is rerun; every rerun ends with exactly the files of the uninterrupted reference run,
byte for byte (a step's files are committed as a unit by its manifest, the evaluation writes only after
everything is computed, temporaries of a dead writer are removed)."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_in_process
from reliability_tools import Killed, assert_same_outputs, killed_at_write

from storage import layout

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

#: one version per step keeps the loop short: squeezenet healthy (its fit, its cache), and the evaluation of the
#: pair squeezenet/densenet healthy
GRIDS = {"fit": ["--models", "squeezenet", "--bugs", "0"], "cache": ["--models", "squeezenet", "--bugs", "0"],
         "evaluate": ["--models", "squeezenet", "densenet", "--bugs", "0"]}


def step_files(ws, step: str) -> list:
    """What the step writes for its grid, relative to the workspace (what is removed before it runs)."""
    info = ws.info
    if step == "fit":
        paths = [*layout.kde_paths(info, "squeezenet", "DIGITS", 0),
                 *layout.validation_paths(info, "squeezenet", "DIGITS", 0).values(),
                 layout.manifest_path(info, "fit", "squeezenet", "DIGITS", 0),
                 layout.kde_figure_path(ws.out, "squeezenet", "DIGITS", 0)]
    elif step == "cache":
        paths = [*layout.cache_paths(info, "squeezenet", "DIGITS", 0).values(),
                 layout.manifest_path(info, "cache", "squeezenet", "DIGITS", 0)]
    else:
        paths = [*(ws.root / "evaluated" / name for name in layout.RESULT_FILES),
                 ws.root / "evaluated" / "figures" / "methods_DIGITS.png",
                 ws.root / "evaluated" / "figures" / "compute_DIGITS.png",
                 ws.root / "evaluated" / "figures" / "reliability_DIGITS.png",
                 ws.root / "evaluated" / "figures" / "risk_coverage_DIGITS.png"]
    return [str(path.relative_to(ws.root)) for path in paths]


@pytest.mark.parametrize("step", list(GRIDS))
def test_killed_at_every_write_a_rerun_ends_as_an_uninterrupted_run(pipeline, tmp_path, capsys, step):
    base = pipeline.clone(tmp_path / "base")
    expected = step_files(base, step)
    for rel in expected:
        (base.root / rel).unlink(missing_ok=True)
    extra = ["--output", base.root / "evaluated"] if step == "evaluate" else []
    reference = base.clone(tmp_path / "reference")
    finished = run_in_process(capsys, step, *reference.argv(step, *retarget(extra, base, reference),
                                                            grid=GRIDS[step]))
    assert finished.returncode == 0, finished.stderr
    folders = sorted({(reference.root / rel).parent for rel in expected})
    writes, killed_runs = 0, []
    while True:
        writes += 1
        ws = base.clone(tmp_path / f"killed{writes}")
        argv = ws.argv(step, *retarget(extra, base, ws), grid=GRIDS[step])
        with killed_at_write(writes, ws.root) as count:
            try:
                run_in_process(capsys, step, *argv)
            except Killed:
                killed_runs.append(writes)
        if count[0] < writes:  # the run ended before this write: every write has had its kill
            break
        rerun = run_in_process(capsys, step, *argv)
        assert rerun.returncode == 0, rerun.stderr
        assert_same_outputs(ws.root, reference.root, [ws.root / f.relative_to(reference.root) for f in folders],
                            [rel for rel in expected_in(reference, folders)])
        shutil.rmtree(ws.root)
    assert killed_runs == list(range(1, len(expected) + 1))  # one kill at each of the files the step writes


def retarget(extra: list, base, ws) -> list:
    return [str(a).replace(str(base.root), str(ws.root)) for a in extra]


def expected_in(reference, folders) -> list[str]:
    """Every file the reference run's folders hold (what a rerun's must hold too), relative to its root."""
    from reliability_tools import snapshot

    return sorted(str((folder / rel).relative_to(reference.root)) for folder in folders for rel in snapshot(folder))
