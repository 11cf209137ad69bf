"""What a step writes is one unit, made from a known checkpoint in one distance mode, and every input the
steps read is checked before it is used: distance modes that share no file, a refit killed mid-write never
taken as finished, stale failure models and caches of a retrained version refused, validation outputs that do
not fit skipped with a note, metadata checked field by field, two evaluations into one folder one after the
other, interrupted attacks that stop at their next step, launcher and thread flags checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import REPO, SCRIPT_ENV, assert_usage_error, run_in_process, script_file
from reliability_tools import Killed, killed_at_write

from Attacker import AttackCancelled
from DeepFailGuard import DeepFailGuardModule
from distances import concurrent as concurrent_attacks
from distances.concurrent import attack_concurrently
from failure_model.kde import GaussianKDE
from storage import files, layout, manifests

SQUEEZENET = ["--models", "squeezenet", "--bugs", "0"]


def validation_arrays(ws, mode: str = "deepfool") -> dict:
    return {what: np.load(layout.validation_path(ws.info, "squeezenet", "DIGITS", 0, what, mode))
            for what in layout.VALIDATION_FILES}


# ---------------------------------------------------------------------------------------------
# 1, 2: files of one mode and one input count, committed as a unit
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_distance_modes_share_no_file(pipeline_copy, capsys):
    """A first-order:2 fit at 30 inputs beside the deepfool fit at 20: the deepfool files are untouched, the
    deepfool fit stays up to date and its evaluation runs."""
    ws = pipeline_copy
    folder = ws.info / layout.VALIDATION_SUBDIR
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    other = run_in_process(capsys, "fit", *ws.argv("fit", "--distance", "first-order:2", "--max-inputs", "30",
                                                   grid=SQUEEZENET))
    assert other.returncode == 0, other.stderr
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert len(validation_arrays(ws, "first-order:2")["dnn_labels"]) == 30
    again = run_in_process(capsys, "fit", *ws.argv("fit", grid=SQUEEZENET))
    assert again.returncode == 0 and "skipped (up to date)" in again.stdout, again.stdout
    evaluated = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "evaluated"))
    assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.slow
@pytest.mark.parametrize("write", [1, 3, 7])
def test_a_refit_killed_mid_write_is_redone(pipeline_copy, capsys, write):
    """A refit at 30 inputs (the fit had 20) dies at its first, third (the first validation array) or last
    write: the rerun does not take the mix of 20- and 30-input files for finished work, and ends whole."""
    ws = pipeline_copy
    argv = ws.argv("fit", "--max-inputs", "30", grid=SQUEEZENET)
    with killed_at_write(write, ws.info), pytest.raises(Killed):
        run_in_process(capsys, "fit", *argv)
    rerun = run_in_process(capsys, "fit", *argv)
    assert rerun.returncode == 0 and "fitted" in rerun.stdout and "skipped" not in rerun.stdout, rerun.stdout
    assert {len(array) for array in validation_arrays(ws).values()} == {30}
    manifest = manifests.read(layout.manifest_path(ws.info, "fit", "squeezenet", "DIGITS", 0))
    assert manifest.inputs == 30
    assert manifests.mismatch(manifest, ws.info, manifest.checkpoint, 30) is None


# ---------------------------------------------------------------------------------------------
# 10: a retrained version's old failure model and caches are not used
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_retrained_versions_old_files_are_refused_then_redone(pipeline_copy, capsys):
    ws = pipeline_copy
    retrained = run_in_process(capsys, "train", *ws.argv("train", "--force", "--seed", "7", "--epochs", "1",
                                                         grid=SQUEEZENET))
    assert retrained.returncode == 0, retrained.stderr
    refused = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "stale"))
    assert_usage_error(refused, "squeezenet_DIGITS", "another checkpoint", "main_train_DeepFailGuard.py")
    for script, done in (("fit", "fitted"), ("cache", "cached")):
        redone = run_in_process(capsys, script, *ws.argv(script))
        assert redone.returncode == 0, redone.stderr
        assert f"{done} (made from another checkpoint" in redone.stdout, redone.stdout
    evaluated = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "fresh"))
    assert evaluated.returncode == 0, evaluated.stderr


def test_a_missing_cache_names_the_mode_it_looked_for(pipeline_copy, capsys):
    ws = pipeline_copy
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--distance", "first-order"))
    assert_usage_error(result, "no first-order test cache", "main_cache_test_distances.py --distance first-order")


def test_more_threads_than_cpus_is_refused(pipeline_copy, capsys):
    ws = pipeline_copy
    result = run_in_process(capsys, "cache", *ws.argv("cache", "--threads", "100000"))
    assert_usage_error(result, "--threads 100000", f"{os.cpu_count()} CPUs")


# ---------------------------------------------------------------------------------------------
# 5, 6: validation outputs that do not fit
# ---------------------------------------------------------------------------------------------

def rewrite_validation(ws, change) -> None:
    """Change squeezenet's healthy validation arrays, then vouch for them in a manifest (as consistent files
    from elsewhere would be): what the evaluation then makes of them is the screening's, not the manifest's."""
    paths = layout.validation_paths(ws.info, "squeezenet", "DIGITS", 0)
    for what, array in change(validation_arrays(ws)).items():
        files.atomic_save_npy(paths[what], array)
    manifest_path = layout.manifest_path(ws.info, "fit", "squeezenet", "DIGITS", 0)
    old = manifests.read(manifest_path)
    kdes = layout.kde_paths(ws.info, "squeezenet", "DIGITS", 0)
    manifests.write(manifest_path, manifests.describe("fit", old.version, old.distance, old.inputs, old.checkpoint,
                                                      ws.info, [*kdes, *paths.values()]))


def wider(arrays: dict) -> dict:
    pad = ((0, 0), (0, 2))
    return dict(arrays, probabilities=np.pad(arrays["probabilities"], pad) / 1.0,
                logits=np.pad(arrays["logits"], pad, constant_values=-50.0))


def emptied(arrays: dict) -> dict:
    return {what: array[:0] for what, array in arrays.items()}


@pytest.mark.parametrize("change, said", [(wider, "have 12 classes where its test cache has 10"),
                                          (emptied, "hold no input")])
def test_validation_outputs_that_do_not_fit_skip_the_methods_that_need_them(pipeline_copy, capsys, change, said):
    ws = pipeline_copy
    rewrite_validation(ws, change)
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "screened"))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "bug 0's validation outputs" in line]
    assert len(notes) == 1 and f"squeezenet bug 0's validation outputs {said}" in notes[0]
    assert "main_train_DeepFailGuard.py" in notes[0]
    rows = [row.split(",") for row in (ws.root / "screened" / layout.RESULTS_CSV).read_text().splitlines()]
    header = rows[0]
    methods = {(row[header.index("models")], row[header.index("bug_ids")], row[header.index("method")])
               for row in rows[1:]}
    assert ("densenet-squeezenet", "0-0", "stacking") not in methods  # needs squeezenet 0's validation outputs
    assert ("densenet-squeezenet", "0-0", "dfg") in methods and ("densenet-squeezenet", "0-1", "stacking") in methods


def test_a_validation_split_of_one_class_skips_stacking_with_a_note(pipeline_copy, capsys):
    """Reached honestly: a fit on one validation input."""
    ws = pipeline_copy
    fitted = run_in_process(capsys, "fit", *ws.argv("fit", "--max-inputs", "1", "--force"))
    assert fitted.returncode == 0, fitted.stderr
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "one-class"))
    assert result.returncode == 0, result.stderr
    assert "stacking (the validation split holds 1 class(es); a classifier needs two)" in result.stderr
    written = (ws.root / "one-class" / layout.RESULTS_CSV).read_text()
    assert ",stacking," not in written and ",knora_e," in written and ",dfg," in written


def test_a_damaged_validation_file_names_the_fit_step(pipeline_copy, capsys):
    ws = pipeline_copy
    path = layout.validation_path(ws.info, "squeezenet", "DIGITS", 0, "probabilities")
    files.atomic_save_npy(path, np.load(path) * 2)
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "damaged"))
    message = assert_usage_error(result, str(path), "main_train_DeepFailGuard.py --force")
    assert "main_cache_test_distances.py" not in message


# ---------------------------------------------------------------------------------------------
# 8: metadata of the wrong types
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, field, value", [
    *((script, field, value) for script in ("fit", "evaluate")
      for field, value in (("structure_fault", None), ("num_classes", "ten"), ("image_size", "big"), ("settings", None),
                           ("val_acc", "high"))),
    ("fit", "image_size", 1),  # below the architecture's minimum: what loads the network refuses it
])
def test_metadata_of_the_wrong_type_is_one_line_naming_file_and_field(pipeline_copy, capsys, script, field, value):
    ws = pipeline_copy
    metadata = json.loads(ws.metadata().read_text())
    metadata[field] = value
    files.atomic_write_json(ws.metadata(), metadata)
    extra = ["--force"] if script == "fit" else ["--output", ws.root / "typed"]
    models = ["squeezenet", "densenet"] if script == "evaluate" else ["squeezenet"]  # a set needs two; a fit one
    result = run_in_process(capsys, script, *ws.argv(script, *extra, grid=["--models", *models, "--bugs", "0"]))
    assert_usage_error(result, str(ws.metadata()), repr(field))


# ---------------------------------------------------------------------------------------------
# 7: launcher flags checked before any engine starts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [(["--cpus-per-job", "0.00001"], ["--cpus-per-job 1e-05", "0.0001"]),
                                          (["--gpus-per-job", "1.5"], ["--gpus-per-job 1.5", "whole number"]),
                                          (["--cpus-per-job", "100000"], ["--cpus-per-job 100000", "CPUs"])])
def test_a_ray_job_size_ray_would_reject_is_refused_before_ray_starts(pipeline_copy, capsys, flags, named):
    pytest.importorskip("ray")
    import ray

    ws = pipeline_copy
    result = run_in_process(capsys, "cache", *ws.argv("cache", "--launcher", "ray", *flags))
    assert_usage_error(result, *named)
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------
# 11: two evaluations into one output folder
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_evaluation_waits_for_another_one_writing_the_same_folder(pipeline_copy):
    ws = pipeline_copy
    output = ws.root / "shared"
    command = [sys.executable, str(REPO / script_file("evaluate")), *ws.argv("evaluate", "--output", output)]
    with files.folder_lock(output, "a test's evaluation"):
        second = subprocess.Popen(command, cwd=REPO, env={**os.environ, **SCRIPT_ENV}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        waiting = second.stderr.readline()  # its first words: it waits, and for whom
        assert f"note: {output} is being written by a test's evaluation (process {os.getpid()}" in waiting, waiting
        assert second.poll() is None and not (output / layout.RESULTS_CSV).exists()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert (output / layout.RESULTS_CSV).read_bytes() == (ws.out / layout.RESULTS_CSV).read_bytes()


# ---------------------------------------------------------------------------------------------
# 4: an interrupted real-time evaluation stops its other attacks at their next step
# ---------------------------------------------------------------------------------------------

class CountingLoader:
    """``batches`` small batches of images; counts those handed out; raises ``interrupt`` at batch ``at``."""

    def __init__(self, batches: int, interrupt: BaseException | None = None, at: int = 1):
        self.batches, self.interrupt, self.at, self.served = batches, interrupt, at, 0
        self.images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def __iter__(self):
        for index in range(self.batches):
            if self.interrupt is not None and index == self.at:
                time.sleep(0.05)  # the other slot is attacking by now
                raise self.interrupt
            self.served += 1
            yield self.images, torch.zeros(4, dtype=torch.long)


def test_an_interrupt_stops_the_other_slots_at_their_next_step(tmp_path, monkeypatch):
    """One slot's loader raises KeyboardInterrupt (Ctrl-C) early; the other slot, with a long loader, stops at its
    next step instead of attacking to its end, and the attackers are left ready for another run."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    kdes = tmp_path / "correct.npz", tmp_path / "wrong.npz"
    GaussianKDE.fit(np.array([0.5, 0.7, 0.9])).save(kdes[0])
    GaussianKDE.fit(np.array([0.1, 0.2, 0.3])).save(kdes[1])
    modules = [DeepFailGuardModule(network, *kdes, 0.9, device="cpu", name=f"v{i}") for i in range(2)]
    for slot, module in enumerate(modules):
        module.device_slot = slot
    long = CountingLoader(10_000)
    monkeypatch.setattr(concurrent_attacks, "_INTERRUPTED", False)
    with pytest.raises(KeyboardInterrupt):
        attack_concurrently([(modules[0], CountingLoader(5, KeyboardInterrupt(), at=1)), (modules[1], long)])
    assert long.served < 1_000, long.served  # stopped long before the end of its loader
    assert concurrent_attacks.interrupted_attacks()  # so the script ends at once (cli.run_main)
    assert all(module.attacker.cancel is None for module in modules)  # ready for the next run
    modules[1].attacker.cancel = threading.Event()
    modules[1].attacker.cancel.set()
    with pytest.raises(AttackCancelled):
        modules[1].attacker.attack_loader(CountingLoader(3))


@pytest.mark.slow
def test_ctrl_c_during_real_time_attacks_exits_130_without_a_trace(pipeline, tmp_path):
    """SIGINT a real-time evaluation while two device slots attack: exit status 130, the one "interrupted" line
    last, no traceback, no crash in the interpreter's shutdown (it crashed, SIGSEGV or SIGABRT, in 2 of 3 probes
    before the script ended the process at once), nothing written."""
    import signal

    flags, out = pipeline.flags("realtime"), tmp_path / "realtime"
    flags[flags.index("--output") + 1] = str(out)
    command = [sys.executable, REPO / script_file("realtime"), "--models", "squeezenet", "densenet", "--bugs", "0",
               *flags, "--device", "cpu", "--devices", "cpu", "cpu", "--max-inputs", "200"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("TQDM_DISABLE", None)  # the progress bar says when the attacks are under way
    # a background job of a non-interactive shell (`make test &` in a script) starts with SIGINT ignored, and the
    # interpreter keeps an ignored SIGINT ignored: the child gets the default back, as a terminal would give it
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while b"DeepFool" not in seen:
        chunk = process.stderr.read1(4096)
        assert chunk, f"ended before attacking ({process.wait()}): {seen.decode(errors='replace')[-2000:]}"
        seen += chunk
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    stderr = (seen + rest).decode(errors="replace")
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-3000:]
    assert stderr.replace("\r", "\n").strip().splitlines()[-1].endswith("interrupted; finished work is kept, "
                                                                         "rerun to resume")
    assert not (out / "results.csv").exists()
