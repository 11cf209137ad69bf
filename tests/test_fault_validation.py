"""Fault validation: the statistics against SciPy and closed forms, the bisection, and the script end to end on a
tiny run (three seeds, one epoch) with its files, reruns and the ``validated`` preset."""

from __future__ import annotations

import argparse
import itertools
import re

import numpy as np
import pandas as pd
import pytest
from conftest import SLURM_GROUP, assert_usage_error, run_in_process
from scipy.stats import mannwhitneyu

import FaultInjector
from evaluation import fault_validation as fv
from pipeline import grids
from storage import layout
from utils import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")

REQUIRED = ["dataset", "model", "bug", "fault", "seeds", "healthy_mean", "healthy_std", "faulty_mean", "faulty_std",
            "p_value", "effect_size", "killed", "trivial"]
HEALTHY = [0.962, 0.955, 0.971, 0.948, 0.966, 0.959]
FAULTY = [0.941, 0.955, 0.930, 0.952, 0.938]


def a12_by_pairs(x, y) -> float:
    """Vargha-Delaney A12 from its definition: every pair, ties half."""
    return sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(x, y)) / (len(x) * len(y))


def test_the_test_is_scipys_mann_whitney_and_the_effect_is_a12():
    result = fv.compare(HEALTHY, FAULTY)
    expected = mannwhitneyu(HEALTHY, FAULTY, alternative="two-sided")
    assert result.p_value == pytest.approx(float(expected.pvalue))
    assert result.effect_size == pytest.approx(a12_by_pairs(HEALTHY, FAULTY))  # a tie (0.955) counts half
    assert result.effect_size == pytest.approx(27.5 / 30)  # 0.948 beats 3, 0.955 beats 4 and ties 1
    assert result.killed  # p < 0.05 and a large effect


@pytest.mark.parametrize("healthy, faulty, killed, p", [
    ([0.9, 0.91, 0.92, 0.93, 0.94], [0.5, 0.6, 0.7, 0.8, 0.85], True, 2 / 252),  # exact: 2 of C(10, 5) orderings
    ([0.9, 0.91, 0.92], [0.5, 0.6, 0.7], False, 0.1),  # three seeds a side can never reach 0.05
    ([0.5, 0.6, 0.7, 0.8, 0.85], [0.9, 0.91, 0.92, 0.93, 0.94], False, 2 / 252),  # better, not a fault that bites
    ([0.9] * 4, [0.9] * 4, False, 1.0),  # no spread at all: no evidence
])
def test_killed_needs_significance_and_a_harmful_medium_effect(healthy, faulty, killed, p):
    result = fv.compare(healthy, faulty)
    assert result.killed is killed and result.p_value == pytest.approx(p) and 0 <= result.p_value <= 1


def test_trivial_is_chance_plus_five_points():
    assert fv.is_trivial(0.15, 10) and fv.is_trivial(0.10, 10) and not fv.is_trivial(0.1501, 10)
    assert fv.is_trivial(0.55, 2) and not fv.is_trivial(0.56, 2)


def test_the_summary_row_has_both_samples_moments():
    row = fv.summary("DIGITS", "squeezenet", 9, HEALTHY, FAULTY, 10, epochs=2)
    assert row["epochs"] == 2
    assert row["healthy_mean"] == pytest.approx(np.mean(HEALTHY))
    assert row["faulty_std"] == pytest.approx(np.std(FAULTY, ddof=1))
    assert (row["seeds"], row["fault"], row["family"], row["killed"], row["trivial"]) == (
        5, "not enough training data", "paper", True, False)


@pytest.mark.parametrize("threshold", [0.0002, 0.0123, 0.37, 0.99])
def test_bisection_closes_in_on_the_weakest_killing_value(threshold):
    """Killed from ``threshold`` up (weight decay: stronger high, searched on a log scale)."""
    parameter = FaultInjector.FAULTS[14].parameter
    measured = []

    def killed_at(value):
        measured.append(value)
        return value >= threshold

    weakest = fv.bisect(parameter, parameter.default >= threshold, killed_at, steps=12)
    assert weakest >= threshold and all(v >= weakest or v < threshold for v in measured)
    assert weakest / threshold < 1.02  # twelve halvings of a log interval, values kept to three digits


def test_bisection_with_nothing_killed_within_the_bounds_measures_the_strong_end_only():
    parameter = FaultInjector.FAULTS[19].parameter  # stronger low: the strong end is the lower bound
    measured = []
    assert fv.bisect(parameter, False, lambda v: measured.append(v) or False, steps=5) is None
    assert measured == [parameter.low]
    assert fv.midpoint(0.01, 1.0, log=True) == 0.1 and fv.midpoint(0.5, 0.9, log=False) == 0.7


def validate(capsys, ws, *flags):
    return run_in_process(capsys, "validate", "--datasets", "DIGITS", "--models", "squeezenet", "--epochs", "1",
                          "--data-root", ws.data, "--model-root", ws.model, "--output", ws.out, "--quiet", *flags)


@pytest.mark.slow
def test_tiny_validation_writes_the_table_and_reruns_skip(capsys, empty_workspace):
    """Two seeds, faults 4 and 9, one epoch: the file and its columns; the seeds' versions where documented; a
    rerun trains nothing and writes the same table; ``--force`` retrains."""
    ws = empty_workspace
    result = validate(capsys, ws, "--bugs", "4", "9", "--seeds", "2")
    assert result.returncode == 0, result.stderr
    path = ws.out / layout.FAULT_VALIDATION_CSV
    table = pd.read_csv(path)
    assert list(table.columns[:len(REQUIRED)]) == REQUIRED
    assert table["bug"].tolist() == [4, 9] and (table["seeds"] == 2).all()
    assert table["p_value"].between(0, 1).all() and table["effect_size"].between(0, 1).all()
    assert not table["killed"].any()  # two seeds a side cannot reach p < 0.05
    assert "warning: --seeds 2: no fault can be killed with fewer than 4 seeds a side" in result.stderr
    first = ws.checkpoint("squeezenet", 9)
    others = [ws.model / "fault_validation" / f"seed{seed}" / first.name for seed in (43,)]
    assert first.is_file() and all(path.is_file() for path in others)
    accuracies = [pd.read_json(p.with_suffix(".json"), typ="series")["test_acc"] for p in (first, *others)]
    assert table.loc[1, "faulty_mean"] == pytest.approx(np.mean(accuracies), abs=1e-6)

    stamps = {p: p.stat().st_mtime_ns for p in (first, *others)}
    text = path.read_text()
    again = validate(capsys, ws, "--bugs", "4", "9", "--seeds", "2")
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and path.read_text() == text

    forced = validate(capsys, ws, "--bugs", "9", "--seeds", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)
    assert pd.read_csv(path)["bug"].tolist() == [4, 9]  # the other fault's row is kept

    searched = validate(capsys, ws, "--bugs", "4", "--seeds", "2", "--search")
    assert_usage_error(searched, "--search", "no parametric fault")


def namespace(ws, bugs):
    return argparse.Namespace(datasets=["DIGITS"], models=["squeezenet", "densenet"], bugs=bugs, preset="digits",
                              output=str(ws.out), epochs=None, max_inputs=None)


def test_validated_keeps_the_killed_faults_that_are_not_trivial(capsys, empty_workspace, monkeypatch):
    ws = empty_workspace
    monkeypatch.chdir(ws.root.parent)  # the default output, dfg_results/, is looked at too: none here
    with pytest.raises(UsageError, match="main_validate_faults.py --datasets DIGITS --models densenet squeezenet"):
        grids.resolve_grid(namespace(ws, ["validated"]))
    refused = run_in_process(capsys, "train", *ws.argv("train", "--bugs", "validated"))
    assert_usage_error(refused, "--bugs validated needs", "main_validate_faults.py")
    assert not ws.model.exists()

    recipe = grids.Grid(["DIGITS"], ["squeezenet"], [0]).training_epochs("DIGITS", "squeezenet")
    rows = [fv.summary("DIGITS", "squeezenet", bug, HEALTHY, faulty, 10, recipe) for bug, faulty in
            ((4, [0.1] * 5), (9, FAULTY), (14, [0.95, 0.96, 0.97, 0.95, 0.96]), (19, FAULTY))]
    rows[3]["killed"] = False
    rows.append(fv.summary("DIGITS", "squeezenet", 18, HEALTHY, FAULTY, 10, 2))  # killed, at another recipe
    fv.merge_rows(ws.out / layout.FAULT_VALIDATION_CSV, rows)
    assert fv.validated_faults(ws.out / layout.FAULT_VALIDATION_CSV) == {("DIGITS", "squeezenet", 2): (18,),
                                                                         ("DIGITS", "squeezenet", recipe): (9,)}
    grid = grids.resolve_grid(namespace(ws, ["validated", "5"]))
    assert set(grid.versions("DIGITS")) == {("squeezenet", 0), ("densenet", 0), ("squeezenet", 5), ("densenet", 5),
                                            ("squeezenet", 9)}
    said = capsys.readouterr().err
    assert "does not cover densenet on DIGITS" in said
    dropped = [line for line in said.splitlines() if line.startswith("warning: --bugs validated drops")]
    assert len(dropped) == 1 and f"squeezenet's fault(s) on DIGITS at {recipe} epochs" in dropped[0]
    assert "4 (suboptimal learning rate: trivial, accuracy 0.100)" in dropped[0]
    assert "14 (" in dropped[0] and "19 (" in dropped[0] and "not killed, p = " in dropped[0]
    assert "18 (" not in dropped[0] and " 9 (" not in dropped[0]  # killed here, or at another recipe
    brief = grids.resolve_grid(argparse.Namespace(**{**vars(namespace(ws, ["validated"])), "epochs": 2}))
    assert set(brief.versions("DIGITS")) == {("squeezenet", 0), ("densenet", 0), ("squeezenet", 18)}


@pytest.mark.slow
@SLURM_GROUP
def test_validation_on_slurm_writes_what_local_writes(capsys, loopback_ns, slurm_cluster, tmp_path):
    """The seeds' trainings are ordinary jobs: on a real (one-node) Slurm they leave the same versions and table."""
    import importlib.util

    from conftest import Workspace
    from reliability_tools import assert_same_file
    from test_launchers import run_in_ns, slurm_flags

    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit not installed: pip install -r envs_requirements/requirements-cluster.txt")
    local, slurm = Workspace(tmp_path / "local"), Workspace(tmp_path / "slurm")
    flags = ["--bugs", "9", "--seeds", "2"]
    assert validate(capsys, local, *flags).returncode == 0
    argv = ["--models", "squeezenet", "--epochs", "1", "--model-root", slurm.model, "--output", slurm.out, "--quiet",
            *flags, *slurm_flags(slurm_cluster)]
    result = run_in_ns(loopback_ns, "validate", [str(a) for a in argv], slurm_cluster.env)
    assert result.returncode == 0, result.stderr[-3000:]
    table = layout.FAULT_VALIDATION_CSV
    assert (slurm.out / table).read_text() == (local.out / table).read_text()
    checkpoints = sorted(p.relative_to(local.model) for p in local.model.rglob("*.pth"))
    assert len(checkpoints) == 4
    assert checkpoints == sorted(p.relative_to(slurm.model) for p in slurm.model.rglob("*.pth"))
    for rel in checkpoints:
        assert_same_file(slurm.model / rel, local.model / rel)


def test_a_table_without_epochs_is_one_clear_line(tmp_path):
    path = tmp_path / layout.FAULT_VALIDATION_CSV
    row = fv.summary("DIGITS", "squeezenet", 9, HEALTHY, FAULTY, 10, 24)
    pd.DataFrame([{**row, "epochs": None}]).to_csv(path, index=False)
    with pytest.raises(UsageError, match="without their training epochs.*rerun main_validate_faults.py"):
        fv.validated_faults(path)
    path.write_text("dataset,model\nDIGITS,squeezenet\n")
    with pytest.raises(UsageError, match="lacks the column"):
        fv.validated_faults(path)


@pytest.mark.parametrize("column, damage", [("killed", "yes"), ("p_value", "n.s."), ("trivial", "1.5")])
def test_a_damaged_cell_is_one_clear_line_whatever_rows_a_run_reads(tmp_path, column, damage):
    """A cell that is not what its column holds is refused naming it, also in a row of another training recipe
    (a damaged table is damaged whatever rows a run needs)."""
    path = tmp_path / layout.FAULT_VALIDATION_CSV
    rows = [fv.summary("DIGITS", "squeezenet", 9, HEALTHY, FAULTY, 10, 24),
            fv.summary("DIGITS", "squeezenet", 9, HEALTHY, FAULTY, 10, 2)]
    table = pd.DataFrame(rows, columns=list(fv.COLUMNS)).astype({column: object})
    table.loc[1, column] = damage
    table.to_csv(path, index=False)
    with pytest.raises(UsageError, match=rf"row 3, column {column}: '{re.escape(damage)}' is not .*damaged"):
        fv.validated_faults(path)


def test_the_fewest_seeds_that_can_kill_is_four_at_5_percent():
    """Two samples of n that do not overlap give the exact two-sided p of 2 / C(2n, n): SciPy's, for n = 2 ... 5."""
    for n in range(2, 6):
        healthy, faulty = np.linspace(0.9, 0.95, n), np.linspace(0.5, 0.55, n)
        assert fv.smallest_p(n) == pytest.approx(mannwhitneyu(healthy, faulty, method="exact").pvalue)
    assert fv.least_killing_seeds(0.05) == 4 and fv.least_killing_seeds(0.01) == 5
    assert fv.seeds_warning(4) is None and "every row will read killed False" in fv.seeds_warning(3)
