"""Each script parses only the flags it uses: a flag it would ignore is an argparse error naming the flag,
and what a shared flag sets is said truthfully in each script's ``--help``."""

from __future__ import annotations

import pytest
from conftest import SCRIPTS, assert_usage_error, run_in_process, script_flags

import FaultInjector
from DatasetManager import paper_datasets
from ModelManager import MODELS
from pipeline import grids, presets
from storage.settings import ATTACK_BATCH

#: flags of other scripts that each script has no use for
REFUSED = {
    "train": ["--max-inputs", "--info-root", "--posterior", "--configurations"],
    "fit": ["--epochs", "--seed", "--lr", "--image-size", "--amp", "--mode", "--posterior"],
    "cache": ["--epochs", "--seed", "--lr", "--image-size", "--amp", "--mode", "--posterior"],
    "evaluate": ["--epochs", "--seed", "--force", "--batch-size", "--max-inputs", "--device", "--data-root",
                 "--launcher", "--lr"],
    "realtime": ["--epochs", "--seed", "--force", "--lr", "--launcher", "--configurations"],
}
#: what every script takes
SHARED = ["--datasets", "--models", "--bugs", "--preset", "--quiet", "--model-root", "--output"]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_each_script_takes_the_shared_flags(script):
    assert set(SHARED) <= script_flags(script)


@pytest.mark.parametrize("script, flag", [(script, flag) for script, flags in REFUSED.items() for flag in flags])
def test_a_flag_the_script_does_not_use_is_refused(capsys, empty_workspace, script, flag):
    assert flag not in script_flags(script)
    value = [] if flag in ("--force", "--amp") else ["1"]
    result = run_in_process(capsys, script, *empty_workspace.argv(script, flag, *value))
    message = assert_usage_error(result, "unrecognized arguments", flag)
    assert "--help" in message
    assert not empty_workspace.root.exists() or not any(empty_workspace.root.rglob("*.*"))


def help_text(capsys, script: str) -> str:
    """``script --help`` on one line."""
    result = run_in_process(capsys, script, "--help")
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


@pytest.mark.parametrize("script, says", [
    ("train", "training batch size (default: the dataset's recipe"),
    ("fit", f"inputs attacked together (finished inputs leave the batch) (default: {ATTACK_BATCH})"),
    ("cache", f"inputs attacked together (finished inputs leave the batch) (default: {ATTACK_BATCH})"),
    ("realtime", f"inputs attacked together (finished inputs leave the batch) (default: {ATTACK_BATCH})"),
])
def test_batch_size_help_says_what_it_sets(capsys, script, says):
    assert f"--batch-size BATCH_SIZE {says}" in help_text(capsys, script)


def test_presets_read_the_registries():
    datasets, models, bugs = grids.resolved(grids.PRESETS["paper"])
    assert datasets == paper_datasets() and len(datasets) == 7 and "DIGITS" not in datasets
    assert models == tuple(MODELS) and bugs == (0, *FaultInjector.fault_ids(presets.NOT_MUTATIONS)) == tuple(range(13))
    digits = grids.resolved(grids.PRESETS["digits"])
    assert digits[0] == ("DIGITS",) and digits[1] == tuple(MODELS) and digits[2] == tuple(range(13))


@pytest.mark.parametrize("flags, named", [
    (["--cpus-per-job", "2"], ["--cpus-per-job", "--launcher ray"]),
    (["--gpus-per-job", "0.5"], ["--gpus-per-job", "--launcher ray"]),
    (["--slurm-time", "5"], ["--slurm-time", "--launcher slurm"]),
    (["--launcher", "ray", "--slurm-jobs-per-task", "3"], ["--slurm-jobs-per-task", "--launcher ray cannot"]),
])
def test_an_engine_flag_the_launcher_cannot_honour_is_refused(capsys, empty_workspace, flags, named):
    pytest.importorskip("ray")
    result = run_in_process(capsys, "cache", *empty_workspace.argv("cache", *flags))
    assert_usage_error(result, *named)
    assert not empty_workspace.root.exists()  # before any work


@pytest.mark.parametrize("script, flags", [
    ("train", ["--device", "meta"]), ("cache", ["--device", "xpu"]), ("realtime", ["--devices", "cpu", "meta"]),
    ("realtime", ["--devices", "xpu"]), ("fit", ["--device", "cuda:x"]),
])
def test_a_device_of_another_kind_is_refused_while_parsing(capsys, empty_workspace, script, flags):
    result = run_in_process(capsys, script, *empty_workspace.argv(script, *flags))
    assert_usage_error(result, flags[-1], "use cpu, cuda, cuda:N or mps")


@pytest.mark.parametrize("flag", ["--models", "--datasets", "--bugs"])
def test_an_empty_list_is_refused_not_read_as_the_presets(capsys, empty_workspace, flag):
    result = run_in_process(capsys, "train", *empty_workspace.argv("train", flag, "", grid=[]))
    assert_usage_error(result, flag, "names nothing")
    assert not empty_workspace.root.exists()
