"""Distribution shift (``storage/shifts.py``, ``mydataset/corruptions.py``):
naming, seeded corruption, the shifted caches beside the clean one, the
failure model fitted under shift, and the tiny grid ``--distance feature --shifts gaussian_noise:5 fog:3`` end to
end (cached equals real time; ``augrc_max_softmax`` equals a computation of its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, SCRIPT_ENV, assert_usage_error, run_in_process, script_module
from test_readme import python_blocks

from evaluation import load_cached_versions
from evaluation.records import share_learning
from mydataset import corruptions
from storage import shifts
from storage.settings import AttackSettings, distance_mode, mode_flag
from storage.shifts import NO_SHIFT
from utils import UsageError

#: one xdist worker runs the module: its tests share ``shifted_grid``, a module fixture each worker would build anew
pytestmark = pytest.mark.xdist_group("shifts")

HEALTHY = ["--models", "squeezenet", "densenet", "--bugs", "0"]
SHIFTS = ["--shifts", "none", "gaussian_noise:5", "fog:3"]
FEATURE = ["--distance", "feature"]


# ---------------------------------------------------------------------------------------------
# naming
# ---------------------------------------------------------------------------------------------

def test_words_expand_to_shifts_in_one_canonical_order():
    assert shifts.parse(["fog:3", "none", "gaussian_noise:5"]) == shifts.parse(["gaussian_noise:5", "fog:3", "none"]) \
        == ("none", "fog:3", "gaussian_noise:5")
    assert shifts.parse(["noise:2"]) == tuple(f"{name}:2" for name in shifts.FAMILIES["noise"])
    assert len(shifts.parse(["all:3", "all:5", "fog:3"])) == 2 * 19 == 2 * len(shifts.CORRUPTIONS)
    assert [shifts.family(s) for s in shifts.parse(["all:1"])].count("digital") == 6
    assert shifts.severity("none") == 0 and shifts.severity("snow:4") == 4


@pytest.mark.parametrize("word", ["fog:6", "fog", "fog:0", "rain:3", "all", ":3"])
def test_a_bad_shift_is_a_usage_error(word):
    with pytest.raises(UsageError, match="--shifts"):
        shifts.parse([word])


def test_a_bad_shift_on_the_command_line_is_one_line_and_exit_2(capsys, pipeline):
    result = run_in_process(capsys, "cache", *pipeline.argv("cache", "--shifts", "fog:9"))
    assert_usage_error(result, "--shifts 'fog:9'", "severity in 1-5")


def test_a_failure_model_fitted_under_shift_has_a_name_that_says_how_to_ask_for_it():
    settings = AttackSettings(distance=distance_mode("feature"), fit_shifts=shifts.parse(["noise:3", "blur:3"]))
    assert settings.failure_model == "feature+noise3+blur3"
    assert mode_flag(settings.failure_model) == " --distance feature --fit-shifts noise:3 blur:3"
    partial = AttackSettings(fit_shifts=shifts.parse(["fog:3", "gaussian_noise:5"]))
    assert partial.failure_model == "deepfool+fog3+gaussian_noise5"
    assert mode_flag(partial.failure_model) == " --fit-shifts fog:3 gaussian_noise:5"
    assert AttackSettings().failure_model == "deepfool"


# ---------------------------------------------------------------------------------------------
# corruption
# ---------------------------------------------------------------------------------------------

def grey_images(n: int = 6, side: int = 16) -> torch.Tensor:
    x = torch.linspace(0, 1, side)
    base = (x[None, :] * x[:, None]).expand(n, 1, side, side).clone()
    return base.expand(n, 3, side, side).contiguous()


def test_corruption_is_seeded_per_image_and_leaves_the_global_generator_alone():
    images = grey_images()
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = corruptions.corrupt_images(images, "gaussian_noise:3")
    assert np.array_equal(np.random.get_state()[1], before)
    torch.testing.assert_close(first, corruptions.corrupt_images(images, "gaussian_noise:3"), rtol=0, atol=0)
    # image i's noise depends on its index only: the last four corrupted on their own are the same
    tail = corruptions.corrupt_images(images[2:], "gaussian_noise:3", first_index=2)
    torch.testing.assert_close(first[2:], tail, rtol=0, atol=0)
    assert not torch.equal(first[0], first[1])  # equal images, different noise
    assert not torch.equal(first, corruptions.corrupt_images(images, "gaussian_noise:3", seed=1))


def test_severity_strengthens_a_corruption_and_shapes_survive():
    images = grey_images()
    change = {level: float((corruptions.corrupt_images(images, f"gaussian_noise:{level}") - images).abs().mean())
              for level in (1, 5)}
    assert change[5] > 2 * change[1] > 0
    grey = corruptions.corrupt_images(images[:, :1], "defocus_blur:3")
    assert grey.shape == images[:, :1].shape and grey.dtype == images.dtype
    assert float(grey.min()) >= 0 and float(grey.max()) <= 1


@pytest.mark.parametrize("corruption", shifts.CORRUPTIONS)
def test_every_corruption_runs_at_the_versions_resolution_and_repeats_exactly(corruption):
    images = grey_images(2, 32)
    out = corruptions.corrupt_images(images, f"{corruption}:5")
    assert out.shape == images.shape and torch.isfinite(out).all()
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    np.random.seed(123)  # whatever the caller's generators hold, the same images come out
    torch.testing.assert_close(corruptions.corrupt_images(images, f"{corruption}:5"), out, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# the tiny grid, end to end
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shifted_grid(pipeline, tmp_path_factory):
    """The session pipeline's healthy versions with the feature distance: fitted clean and under noise, cached and
    evaluated (from the cache and in real time) on the clean test set and under gaussian_noise:5 and fog:3."""
    ws = pipeline.clone(tmp_path_factory.mktemp("shifts") / "ws")
    previous = torch.get_num_threads()
    try:
        for script, extra in (("fit", FEATURE), ("fit", [*FEATURE, "--fit-shifts", "noise:5"]),
                              ("cache", [*FEATURE, *SHIFTS]), ("evaluate", [*FEATURE, *SHIFTS]),
                              ("realtime", [*FEATURE, *SHIFTS, "--latency-repeats", "0"])):
            assert script_module(script).main(ws.argv(script, *HEALTHY, *extra)) == 0, (script, extra)
    finally:
        torch.set_num_threads(previous)
    return ws


@pytest.mark.slow
def test_every_table_has_a_row_per_shift_and_cached_equals_real_time(shifted_grid):
    for name in ("results.csv", "summary.csv", "failure_prediction.csv", "selective.csv"):
        table = pd.read_csv(shifted_grid.out / name)
        assert list(dict.fromkeys(table["shift"])) == ["none", "fog:3", "gaussian_noise:5"], name
        assert (shifted_grid.out / name).read_text() == (shifted_grid.realtime / name).read_text(), name
    results = pd.read_csv(shifted_grid.out / "results.csv")
    assert {"fdbd", "dfg", "maxlogit_pnorm"} <= set(results["method"])
    for shift in ("none", "fog-3", "gaussian_noise-5"):
        for stem in ("reliability", "risk_coverage"):
            suffix = "" if shift == "none" else f"_{shift}"
            assert (shifted_grid.out / "figures" / f"{stem}_DIGITS{suffix}.png").is_file()


@pytest.mark.slow
def test_severity_5_noise_lowers_accuracy(shifted_grid):
    failure = pd.read_csv(shifted_grid.out / "failure_prediction.csv").set_index(["shift", "model"])
    clean, noisy = failure.loc["none", "test_accuracy"], failure.loc["gaussian_noise:5", "test_accuracy"]
    assert noisy.mean() < clean.mean(), (clean, noisy)


@pytest.mark.slow
def test_augrc_of_max_softmax_equals_a_computation_of_its_own(shifted_grid):
    failure = pd.read_csv(shifted_grid.out / "failure_prediction.csv").set_index(["shift", "model"])
    cached = shifted_grid.cached / "gaussian_noise-5"
    truth = np.load(cached / "DIGITS_ground_truth.npy")
    for model in ("squeezenet", "densenet"):
        probabilities = np.load(cached / f"DIGITS_{model}_bug0_probabilities_feature.npy").astype(np.float64)
        wrong = np.load(cached / f"DIGITS_{model}_bug0_dnn_labels_feature.npy") != truth
        confidence = probabilities.max(axis=1)
        # as FD-Shifts: a point per distinct confidence t at (share scoring at least t, share scoring at least t
        # and wrong), a point at (0, 0), trapezoids between
        thresholds = np.unique(confidence)[::-1]
        coverage = np.r_[0.0, [np.mean(confidence >= t) for t in thresholds]]
        risk = np.r_[0.0, [np.mean(wrong & (confidence >= t)) for t in thresholds]]
        expected = np.sum(np.diff(coverage) * (risk[1:] + risk[:-1]) / 2)
        assert failure.loc[("gaussian_noise:5", model), "augrc_max_softmax"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_shifted_caches_live_beside_the_clean_one_and_record_how_they_were_made(shifted_grid):
    folder = shifted_grid.cached / "fog-3"
    assert (folder / "DIGITS_ground_truth.npy").is_file()
    manifest = json.loads((folder / "DIGITS_densenet_bug0_manifest_feature.json").read_text())
    assert manifest["shift"] == {"shift": "fog:3", "corruption": "fog", "severity": 3, "family": "weather",
                                 "library": "corrupt-tta", "version": corruptions.library_version(), "seed": 42}
    assert np.array_equal(np.load(folder / "DIGITS_ground_truth.npy"), np.load(shifted_grid.truth))
    clean = np.load(shifted_grid.cached / "DIGITS_densenet_bug0_distances_feature.npy")
    assert not np.array_equal(clean, np.load(folder / "DIGITS_densenet_bug0_distances_feature.npy"))


@pytest.mark.slow
def test_a_rerun_skips_every_finished_shift(shifted_grid, capsys):
    assert script_module("cache").main(shifted_grid.argv("cache", *HEALTHY, *FEATURE, *SHIFTS)) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (up to date)") == 6 and "densenet_DIGITS fog:3" in out


@pytest.mark.slow
def test_the_failure_model_fitted_under_shift_is_its_own_and_refused_where_absent(shifted_grid, capsys):
    kdes = sorted(p.name for p in shifted_grid.kdes.glob("densenet_DIGITS_feature*_correct.npz"))
    assert kdes == ["densenet_DIGITS_feature+noise5_correct.npz", "densenet_DIGITS_feature_correct.npz"]
    validation = np.load(shifted_grid.info / "val_information_cached" /
                         "DIGITS_densenet_bug0_distances_feature+noise5.npy")
    clean = np.load(shifted_grid.info / "val_information_cached" / "DIGITS_densenet_bug0_distances_feature.npy")
    assert len(validation) == 5 * len(clean)  # clean + the four noise corruptions
    np.testing.assert_array_equal(validation[:len(clean)], clean)
    argv = shifted_grid.argv("evaluate", *HEALTHY, *FEATURE, "--shifts", "fog:3", "--fit-shifts", "noise:5",
                             "--output", str(shifted_grid.root / "fitted_under_noise"))
    assert script_module("evaluate").main(argv) == 0
    under_noise = pd.read_csv(shifted_grid.root / "fitted_under_noise" / "failure_prediction.csv")
    clean_fit = pd.read_csv(shifted_grid.out / "failure_prediction.csv")
    clean_fit = clean_fit[clean_fit["shift"] == "fog:3"].reset_index(drop=True)
    pd.testing.assert_series_equal(under_noise["auroc_max_softmax"], clean_fit["auroc_max_softmax"])
    assert not np.allclose(under_noise["auroc_dfg"], clean_fit["auroc_dfg"])
    result = run_in_process(capsys, "evaluate", *shifted_grid.argv("evaluate", *HEALTHY, *FEATURE, "--fit-shifts",
                                                                   "blur:5"))
    assert_usage_error(result, "feature+blur5", "--fit-shifts blur:5")


@pytest.mark.slow
def test_fdbd_is_its_two_cached_parts_divided(shifted_grid):
    from distances.feature import fdbd

    cached = shifted_grid.cached
    margins = np.load(cached / "DIGITS_squeezenet_bug0_feature_margins_feature.npy")
    deviations = np.load(cached / "DIGITS_squeezenet_bug0_feature_deviations_feature.npy")
    assert (margins > 0).all() and (deviations > 0).all()
    np.testing.assert_allclose(fdbd(margins, deviations), margins / deviations)


@pytest.mark.slow
def test_the_likelihood_ratios_run_on_the_cached_features_where_both_groups_exist(shifted_grid):
    """On the real grid: the features cached one row per input (DenseNet-121's 1,024, SqueezeNet's 512 channels),
    and the likelihood-ratio scores in every table where the version has right and wrong validation inputs, empty
    (failure prediction) or skipped (selection) where it does not."""
    from storage import caches

    family = ["delta_mds", "delta_knn", "delta_mds_rlog", "delta_knn_rlog", "dfg_features"]
    failure = pd.read_csv(shifted_grid.out / "failure_prediction.csv")
    both = {}
    for model, width in (("squeezenet", 512), ("densenet", 1024)):
        validation = caches.read_validation_outputs(shifted_grid.info, model, "DIGITS", 0, 10, "feature")
        test = caches.read_version_cache(shifted_grid.info, model, "DIGITS", 0, 10, "feature")
        assert validation.outputs["features"].shape == (len(validation.labels), width)
        assert test.outputs["features"].shape == (len(test.labels), width)
        both[model] = bool(validation.correct.any() and not validation.correct.all())
        rows = failure[failure["model"] == model]
        assert len(rows) == 3 and rows["aurc_gen"].notna().all()
        for name in family:
            assert rows[f"aurc_{name}"].notna().all() if both[model] else rows[f"aurc_{name}"].isna().all(), name
    assert any(both.values())  # the scores ran on real features somewhere
    methods = set(pd.read_csv(shifted_grid.out / "results.csv")["method"])
    assert "gen" in methods and (set(family) <= methods) == all(both.values())
    recorded = json.loads((shifted_grid.out / "methods.json").read_text())["scores"]
    assert recorded["delta_knn"]["parameters"] == {"k": 25, "floor": 1e-6, "split": "validation"}


def test_no_shift_is_the_clean_cache_itself(pipeline):
    from storage import layout

    assert layout.cache_path(pipeline.info, "squeezenet", "DIGITS", 0, "distances", shift=NO_SHIFT) == \
        pipeline.cache("distances")
    assert layout.ground_truth_path(pipeline.info, "DIGITS", 0, "fog:3").parent.name == "fog-3"


@pytest.mark.slow
def test_the_feature_mode_joins_the_recorded_costs_and_leaves_the_others_alone(shifted_grid, pipeline):
    for model in ("squeezenet", "densenet"):
        before = json.loads(pipeline.metadata(model).read_text())["costs"]
        after = json.loads(shifted_grid.metadata(model).read_text())["costs"]
        assert "feature" not in before["distance_flops"]
        assert after["distance_flops"] == {**before["distance_flops"], "feature": after["distance_flops"]["feature"]}
        assert before["forward_flops"] <= after["distance_flops"]["feature"] < 1.1 * before["forward_flops"]


@pytest.mark.slow
def test_the_readme_snippet_reads_a_shift_evaluation(shifted_grid, tmp_path):
    """The README's pandas snippet on an evaluation under shifts (a row per shift of each method and N)."""
    block = next(b for b in python_blocks() if "dfg_results/summary.csv" in b)
    shutil.copytree(shifted_grid.out, tmp_path / "dfg_results")
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env={**os.environ, **SCRIPT_ENV},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(shift in result.stdout for shift in ("none", "fog:3", "gaussian_noise:5")), result.stdout


@pytest.mark.slow
def test_a_shift_asked_for_without_its_cache_is_refused_beside_others(shifted_grid, tmp_path, capsys):
    """``--shifts none fog:3`` where the clean test set was never cached: one line naming the clean test set and
    exit 2, as when it is the only shift asked for (not fog:3's rows alone, exit 0)."""
    ws = shifted_grid.clone(tmp_path / "ws")
    cached = ws.info / "test_information_cached"
    for path in cached.iterdir():
        if path.is_file():
            path.unlink()  # the clean cache (the shifted ones are in folders of their own)
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", *HEALTHY, *FEATURE, "--shifts", "none",
                                                             "fog:3"))
    assert_usage_error(result, "no feature test cache of the clean test set (none)", "--shifts none")
    assert not (ws.out / "results.csv").exists() or (ws.out / "results.csv").read_text() == \
        (shifted_grid.out / "results.csv").read_text()


@pytest.mark.slow
def test_a_shift_evaluated_alone_gives_the_rows_it_gets_beside_the_others(shifted_grid, tmp_path):
    """The records of one version under each shift share what was learned from its validation outputs
    (``VersionRecord.learn``): fitted once, the same numbers as a fit of their own."""
    ws = shifted_grid.clone(tmp_path / "ws")
    assert script_module("evaluate").main(ws.argv("evaluate", *HEALTHY, *FEATURE, "--shifts", "fog:3",
                                                  "--output", str(tmp_path / "alone"))) == 0
    for name in ("results.csv", "failure_prediction.csv", "selective.csv"):
        together = pd.read_csv(shifted_grid.out / name)
        alone = pd.read_csv(tmp_path / "alone" / name)
        pd.testing.assert_frame_equal(alone, together[together["shift"] == "fog:3"].reset_index(drop=True),
                                      check_exact=True)


@pytest.mark.slow
def test_only_the_same_version_with_the_same_validation_outputs_shares_what_was_learned(shifted_grid):
    distance = distance_mode("feature")
    versions = [("squeezenet", 0), ("densenet", 0)]
    clean, _, _ = load_cached_versions(shifted_grid.info, shifted_grid.model, "DIGITS", versions, distance)
    fog, _, _ = load_cached_versions(shifted_grid.info, shifted_grid.model, "DIGITS", versions, distance, "fog:3")
    share_learning(fog, clean)
    squeezenet = clean["squeezenet", 0]
    first = squeezenet.learn("a fit", lambda version: object())
    assert fog["squeezenet", 0].learn("a fit", lambda version: object()) is first
    assert fog["densenet", 0].learn("a fit", lambda version: object()) is not first
    other = load_cached_versions(shifted_grid.info, shifted_grid.model, "DIGITS", versions, distance)[0]
    other["densenet", 0].validation = other["densenet", 0].validation.subset(np.arange(3))
    assert not other["densenet", 0].share_learning(clean["densenet", 0])
    assert not other["densenet", 0].share_learning(squeezenet)
    assert other["squeezenet", 0].share_learning(squeezenet)


@pytest.mark.slow
def test_the_replication_benchmark_reads_a_shift_evaluation(shifted_grid):
    """``benchmarks/replication.py`` on the grid's evaluation (one dataset, one mode): every table, a row per score
    and severity, max softmax's own AUROC the mean of failure_prediction.csv's."""
    result = subprocess.run([sys.executable, "benchmarks/replication.py", f"DIGITS:feature={shifted_grid.out}"],
                            capture_output=True, text=True, cwd=REPO, env=SCRIPT_ENV, check=False)
    assert result.returncode == 0, result.stderr
    report = result.stdout
    for heading in ("### DIGITS", "Failure prediction", "AUROC against max softmax", "every corruption of a severity "
                    "pooled", "Selection, N = 2-5"):
        assert heading in report, heading
    failure = pd.read_csv(shifted_grid.out / "failure_prediction.csv")
    clean = failure[failure["shift"] == "none"]["auroc_max_softmax"].mean()
    row = next(line for line in report.splitlines() if line.startswith("| max_softmax |"))
    assert float(row.split("|")[2]) == pytest.approx(clean, abs=5e-5)
    assert "| dfg (feature) | 3 |" in report and "| delta_knn | 5 |" in report
