"""Each script parses only the flags it uses: a flag it would ignore is an argparse error naming the flag,
and what a shared flag sets is said truthfully in each script's ``--help``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, SCRIPTS, assert_usage_error, run_in_process, script_flags

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


#: what a script must not load to answer ``--help`` or a usage error (the parser needs none of them)
HEAVY = ("torch", "torchvision", "pandas", "scipy", "sklearn", "matplotlib", "ray", "submitit")
#: runs a script as ``python main_x.py ARGS`` would, then prints which of ``HEAVY`` it loaded
LOADED = ("import runpy, sys\nsys.argv = [{script!r}, *{args!r}]\ntry:\n    runpy.run_path({script!r}, "
          "run_name='__main__')\nexcept SystemExit as exit:\n    status = exit.code\n"
          "print(status, [name for name in {heavy!r} if name in sys.modules])")


@pytest.mark.parametrize("script", list(SCRIPTS.values()))
def test_help_and_usage_errors_answer_without_loading_torch(script):
    """``--help`` and a usage error are answered from the light parser: none of torch, pandas, SciPy, scikit-learn,
    matplotlib or the engines is imported (benchmarks/bench_cli.py times it); the usage error is one line."""
    for args, status in ((["--help"], "0"), (["--bugs", "x"], "2")):
        done = subprocess.run([sys.executable, "-c", LOADED.format(script=script, args=args, heavy=HEAVY)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == f"{status} []", (args, done.stdout[-300:], done.stderr)
        if status == "2":
            assert done.stderr.startswith(f"{script}: error: argument --bugs: 'x' is not a fault id"), done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
