"""Distance modes end to end: another mode's failure models and caches live beside the paper's files without
touching them, the evaluation reads the mode it is asked for, and a failure model of another mode is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import assert_usage_error, run_in_process

from failure_model.kde import GaussianKDE
from storage import caches, layout

MODE = "first-order"


@pytest.mark.slow
def test_another_mode_lives_beside_the_default_and_is_evaluated(pipeline_copy, capsys):
    ws = pipeline_copy
    before = {path: path.read_bytes() for path in ws.info.rglob("*.np[yz]")}
    for script in ("fit", "cache"):
        result = run_in_process(capsys, script, *ws.argv(script, "--distance", MODE))
        assert result.returncode == 0, result.stderr
    assert {path: path.read_bytes() for path in before} == before  # the paper-layout files are untouched
    for model, bug in (("squeezenet", 0), ("squeezenet", 1), ("densenet", 0)):
        correct, wrong = layout.kde_paths(ws.info, model, "DIGITS", bug, MODE)
        assert correct.name.endswith(f"_{MODE}_correct.npz") and GaussianKDE.load(correct).distance == MODE
        assert GaussianKDE.load(layout.kde_paths(ws.info, model, "DIGITS", bug)[0]).distance == "deepfool"
        fast = caches.read_version_cache(ws.info, model, "DIGITS", bug, 10, MODE)
        full = caches.read_version_cache(ws.info, model, "DIGITS", bug, 10)
        np.testing.assert_array_equal(fast.labels, full.labels)
        assert not np.array_equal(fast.distances, full.distances)
        assert caches.read_validation_outputs(ws.info, model, "DIGITS", bug, 10, MODE) is not None
    assert (ws.out / "figures" / f"kde_squeezenet_DIGITS_{MODE}.png").is_file()

    cached = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--distance", MODE, "--output", ws.root / "fo"))
    assert cached.returncode == 0, cached.stderr
    realtime = run_in_process(capsys, "realtime", *ws.argv("realtime", "--distance", MODE,
                                                           "--output", ws.root / "fo_rt"))
    assert realtime.returncode == 0, realtime.stderr
    ours, theirs = (pd.read_csv(ws.root / folder / layout.RESULTS_CSV) for folder in ("fo", "fo_rt"))
    pd.testing.assert_frame_equal(ours, theirs)
    default = pd.read_csv(ws.out / layout.RESULTS_CSV)
    assert not ours[ours.method == "dfg"]["accuracy"].equals(default[default.method == "dfg"]["accuracy"]) or \
        not ours["mcnemar_p_dfg"].equals(default["mcnemar_p_dfg"])  # another mode, other decisions somewhere


def test_a_failure_model_of_another_mode_is_refused(pipeline_copy, capsys):
    ws = pipeline_copy
    result = run_in_process(capsys, "cache", *ws.argv("cache", "--distance", MODE))
    assert result.returncode == 0, result.stderr
    for model, bug in (("squeezenet", 0), ("squeezenet", 1), ("densenet", 0)):  # DeepFool's KDEs, renamed
        for default, renamed in zip(layout.kde_paths(ws.info, model, "DIGITS", bug),
                                    layout.kde_paths(ws.info, model, "DIGITS", bug, MODE)):
            shutil.copy(default, renamed)
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--distance", MODE, "--output", ws.root / "x"))
    assert_usage_error(result, "fitted on deepfool distances", f"measures {MODE} distances", f"--distance {MODE}")
    assert not (ws.root / "x" / layout.RESULTS_CSV).exists()


def test_a_mode_without_its_failure_model_names_the_step_and_the_flag(pipeline_copy, capsys):
    ws = pipeline_copy
    result = run_in_process(capsys, "realtime", *ws.argv("realtime", "--distance", "deepfool:2"))
    assert_usage_error(result, "deepfool2_{correct,wrong}.npz", "fitted on deepfool distances, not on deepfool:2",
                       "main_train_DeepFailGuard.py --distance deepfool:2")


@pytest.mark.slow
def test_versions_on_devices_of_their_own_decide_as_on_one(pipeline_realtime, pipeline_copy, capsys):
    """Three CPU "devices": the versions' attacks run side by side, on threads, and every result is the one of
    the reference pipeline's real-time run on one device (same flags, same thread count)."""
    ws = pipeline_copy
    result = run_in_process(capsys, "realtime", *ws.argv("realtime", "--devices", "cpu", "cpu", "cpu",
                                                         "--output", ws.root / "three"))
    assert result.returncode == 0, result.stderr
    assert "one after another" not in result.stderr
    for name in (layout.RESULTS_CSV, layout.FAILURE_PREDICTION_CSV):
        pd.testing.assert_frame_equal(pd.read_csv(ws.root / "three" / name), pd.read_csv(ws.realtime / name))


@pytest.mark.slow
def test_one_cpu_device_for_every_version_says_they_run_in_turn(pipeline_copy, capsys):
    """Two versions (the healthy ones) on one device: said, and run (that one device decides as the reference's
    real-time run, on the default device, is the test above and ``test_evaluation``'s real time equals cached)."""
    ws = pipeline_copy
    healthy = ["--models", "squeezenet", "densenet", "--bugs", "0"]
    result = run_in_process(capsys, "realtime", *ws.argv("realtime", *healthy, "--devices", "cpu",
                                                         "--output", ws.root / "one"))
    assert result.returncode == 0, result.stderr
    assert "run one after another" in result.stderr
    models = pd.read_csv(ws.root / "one" / layout.FAILURE_PREDICTION_CSV)["model"]
    assert list(models) == ["densenet", "squeezenet"]


def test_an_unknown_device_in_the_list_is_a_usage_error(pipeline_copy, capsys):
    ws = pipeline_copy
    result = run_in_process(capsys, "realtime", *ws.argv("realtime", "--devices", "cpu", "tpu:9"))
    assert_usage_error(result, "tpu:9")
