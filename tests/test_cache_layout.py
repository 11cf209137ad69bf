"""File names in the paper's layout (storage/layout.py) and the DIGITS pipeline steps 2-3 end to end."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_usage_error, run_in_process
from scipy.stats import gaussian_kde

from failure_model.kde import GaussianKDE
from storage.layout import CACHE_FILES, cache_path, find_kde_files, ground_truth_path, kde_paths, version_key
from utils import UsageError

INFO = Path("input_information")
CACHED = INFO / "test_information_cached"
KDES = INFO / "kde_results"


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------

def test_cache_file_names_are_the_papers():
    assert cache_path(INFO, "resnet", "CIFAR10", 0, "distances") == CACHED / "CIFAR10_resnet_bug0_distances.npy"
    assert cache_path(INFO, "resnet", "CIFAR10", 0, "dnn_labels") == CACHED / "CIFAR10_resnet_bug0_dnn_labels.npy"
    assert cache_path(INFO, "resnet", "CIFAR10", None, "distances") == CACHED / "CIFAR10_resnet_bug0_distances.npy"
    assert cache_path(INFO, "ResNet", "cifar10", 7, "distances") == CACHED / "CIFAR10_resnet_bug7_distances.npy"
    # test-data faults have caches of their own (their test sets differ)
    assert cache_path(INFO, "vgg16", "GTSRB", 10, "dnn_labels") == CACHED / "GTSRB_vgg16_bug10_dnn_labels.npy"
    assert cache_path("/data/info", "densenet", "CIFAR10", 12, "distances") == \
        Path("/data/info/test_information_cached/CIFAR10_densenet_bug12_distances.npy")


def test_ground_truth_names_are_the_papers():
    assert ground_truth_path(INFO, "CIFAR10", 0) == CACHED / "CIFAR10_ground_truth.npy"
    assert ground_truth_path(INFO, "CIFAR10", None) == CACHED / "CIFAR10_ground_truth.npy"
    assert ground_truth_path(INFO, "CIFAR10", 11) == CACHED / "CIFAR10_bug11_ground_truth.npy"
    assert ground_truth_path(INFO, "CIFAR10", 12) == CACHED / "CIFAR10_bug12_ground_truth.npy"
    # every other fault answers the ordinary test set (fault 10 adds noise, its labels are the same)
    for bug in (1, 3, 8, 10):
        assert ground_truth_path(INFO, "cifar10", bug) == CACHED / "CIFAR10_ground_truth.npy"


def test_version_keys_and_kde_names_are_the_papers():
    assert version_key("resnet", "CIFAR10", 0) == "resnet_CIFAR10"
    assert version_key("ResNet", "cifar10", None) == "resnet_CIFAR10"
    assert version_key("resnet", "CIFAR10", 3) == "resnet_CIFAR10_bug3"
    assert kde_paths(INFO, "resnet", "CIFAR10", 0) == (KDES / "resnet_CIFAR10_correct.npz",
                                                        KDES / "resnet_CIFAR10_wrong.npz")
    assert kde_paths(INFO, "resnet", "CIFAR10", 3) == (KDES / "resnet_CIFAR10_bug3_correct.npz",
                                                        KDES / "resnet_CIFAR10_bug3_wrong.npz")


@pytest.mark.parametrize("bug", [10, 11, 12])
def test_test_only_faults_reuse_the_healthy_kde_names(bug):
    assert kde_paths(INFO, "resnet", "CIFAR10", bug) == kde_paths(INFO, "resnet", "CIFAR10", 0)


def write_pair(folder: Path, key: str, suffix: str = ".npz") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pair = (folder / f"{key}_correct{suffix}", folder / f"{key}_wrong{suffix}")
    for path, points in zip(pair, ([0.5, 0.7, 0.9], [0.1, 0.2, 0.25])):
        if suffix == ".npz":
            GaussianKDE.fit(points).save(path)
        else:
            path.write_bytes(pickle.dumps(gaussian_kde(points)))
    return pair


@pytest.mark.parametrize("bug", [10, 11, 12])
def test_find_kde_files_falls_back_to_the_healthy_version(tmp_path, bug):
    healthy = write_pair(tmp_path / "kde_results", "resnet_CIFAR10")
    assert find_kde_files(tmp_path, "resnet", "CIFAR10", bug) == healthy
    assert find_kde_files(tmp_path, "resnet", "CIFAR10", 0) == healthy


def test_find_kde_files_prefers_the_versions_own_files_and_reads_pickles(tmp_path):
    folder = tmp_path / "kde_results"
    write_pair(folder, "resnet_CIFAR10")
    own = write_pair(folder, "resnet_CIFAR10_bug10", suffix=".pkl")
    assert find_kde_files(tmp_path, "resnet", "CIFAR10", 10) == own
    assert GaussianKDE.load(own[0]).n == 3
    paper = write_pair(folder, "vgg16_GTSRB_bug4", suffix=".pkl")
    assert find_kde_files(tmp_path, "vgg16", "GTSRB", 4) == paper


def test_find_kde_files_does_not_borrow_for_other_faults(tmp_path):
    write_pair(tmp_path / "kde_results", "resnet_CIFAR10")
    with pytest.raises(UsageError, match="resnet_CIFAR10_bug3_") as info:
        find_kde_files(tmp_path, "resnet", "CIFAR10", 3)
    assert "main_train_DeepFailGuard.py" in str(info.value)


def test_find_kde_files_needs_both_files(tmp_path):
    correct, wrong = write_pair(tmp_path / "kde_results", "resnet_CIFAR10")
    wrong.unlink()
    with pytest.raises(UsageError, match="missing KDE files"):
        find_kde_files(tmp_path, "resnet", "CIFAR10", 0)


# ---------------------------------------------------------------------------------------------
# end to end on DIGITS: the session's pipeline trained, fitted and cached its versions
# ---------------------------------------------------------------------------------------------

def test_pipeline_writes_the_papers_files(pipeline, digits):
    info = pipeline.info
    sample = digits.limited(20)  # the pipeline attacks at most 20 validation and test inputs per version
    cached = info / "test_information_cached"
    versions = [("squeezenet", 0), ("squeezenet", 1), ("squeezenet", 10), ("densenet", 0), ("densenet", 10)]
    assert sorted(p.name for p in cached.iterdir()) == sorted(
        ["DIGITS_ground_truth.npy"] + [f"DIGITS_{model}_bug{bug}_{what}.npy" for model, bug in versions
                                       for what in CACHE_FILES]
        + [f"DIGITS_{model}_bug{bug}_manifest.json" for model, bug in versions])  # each version's, written last
    # one failure model per checkpoint: fault 10 uses the healthy squeezenet's
    assert sorted(p.name for p in (info / "kde_results").iterdir()) == sorted(
        f"{key}_{which}.npz" for key in ("squeezenet_DIGITS", "squeezenet_DIGITS_bug1", "densenet_DIGITS")
        for which in ("correct", "wrong"))
    assert pipeline.checkpoint().is_file() and pipeline.checkpoint(bug=10) == pipeline.checkpoint()
    assert (pipeline.out / "figures" / "kde_squeezenet_DIGITS.png").is_file()

    n_test = len(sample.y_test)
    truth = np.load(ground_truth_path(info, "DIGITS", 0))
    distances = np.load(cache_path(info, "squeezenet", "DIGITS", 0, "distances"))
    labels = np.load(cache_path(info, "squeezenet", "DIGITS", 0, "dnn_labels"))
    success = np.load(cache_path(info, "squeezenet", "DIGITS", 0, "success"))
    probabilities = np.load(cache_path(info, "squeezenet", "DIGITS", 0, "probabilities"))
    assert truth.shape == (n_test,) and np.issubdtype(truth.dtype, np.integer)
    np.testing.assert_array_equal(truth, sample.y_test.numpy())
    assert distances.shape == (n_test,) and np.isfinite(distances).all() and (distances >= 0).all()
    assert labels.shape == (n_test,) and np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0 and labels.max() < 10
    assert success.shape == (n_test,) and success.dtype == bool
    assert probabilities.shape == (n_test, 10)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))

    correct = GaussianKDE.load(kde_paths(info, "squeezenet", "DIGITS", 0)[0])
    wrong = GaussianKDE.load(kde_paths(info, "squeezenet", "DIGITS", 0)[1])
    assert correct.n + wrong.n == len(sample.y_val)
    assert np.isfinite(correct.points).all() and np.isfinite(wrong.points).all()


def test_cache_step_reports_the_accuracy_of_the_cached_labels(pipeline, tmp_path, capsys):
    ws = pipeline.clone(tmp_path / "ws")
    result = run_in_process(capsys, "cache", *ws.argv("cache", "--force",
                                                      grid=["--models", "squeezenet", "--bugs", "0"]))
    assert result.returncode == 0, result.stderr[-3000:]
    truth = np.load(ws.truth)
    labels = np.load(ws.cache("dnn_labels"))
    assert f"{np.mean(labels == truth):.4f}" in result.stdout and "cached" in result.stdout
    for what in ("distances", "dnn_labels", "success", "probabilities"):  # the same attack, the same files
        np.testing.assert_array_equal(np.load(ws.cache(what)), np.load(pipeline.cache(what)))


def test_rerun_skips_finished_work(pipeline, tmp_path, capsys):
    ws = pipeline.clone(tmp_path / "ws")
    files = sorted(ws.info.rglob("*.np*"))
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files}
    for script in ("fit", "cache"):
        result = run_in_process(capsys, script, *ws.argv(script))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "skipped" in result.stdout and "fitted" not in result.stdout and "cached" not in result.stdout, \
            result.stdout
    assert sorted(ws.info.rglob("*.np*")) == files
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files} == before


@pytest.mark.parametrize("script", ["fit", "cache"])
def test_missing_checkpoint_is_a_clean_error(empty_workspace, script, capsys):
    ws = empty_workspace
    result = run_in_process(capsys, script, *ws.argv(script, grid=["--models", "squeezenet", "--bugs", "0"]))
    assert_usage_error(result, "checkpoint", "main_train_model.py")
    assert not ws.kdes.exists() or not any(ws.kdes.iterdir())
    assert not ws.cache("distances").exists()


def test_corrupt_kde_file_is_a_clean_error_when_evaluating(pipeline_copy, capsys):
    ws = pipeline_copy
    correct = ws.kde("correct")
    correct.write_bytes(correct.read_bytes()[:40])
    output = ws.root / "fresh-output"
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", output))
    assert_usage_error(result, "corrupt KDE file", str(correct))
    assert not (output / "results.csv").exists()
