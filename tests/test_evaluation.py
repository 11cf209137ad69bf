"""Fault-tolerance evaluation (the ``evaluation`` package and the two evaluation scripts): version sets, every
method on hand-built versions, the paper's cache layout end to end, real time against cached, bad
input, the summary."""

from __future__ import annotations

import csv
import math
import pickle
import shutil
from collections import Counter
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_usage_error, run_in_process, script_module, write_fake_cache
from reliability_tools import payload
from scipy.stats import gaussian_kde, norm
from sklearn.metrics import roc_auc_score

import evaluation
import selection
from DeepFailGuard import DeepFailGuard, DeepFailGuardModule
from evaluation import RESULT_COLUMNS, VersionRecord, evaluate_set, format_summary, summarize, version_sets
from failure_model.kde import GaussianKDE
from selection import METHODS
from storage.settings import mode_outputs
from utils import UsageError

FIVE = ["resnet", "alexnet", "densenet", "vgg16", "squeezenet"]
#: the scores (and the methods selecting by them) that read what only the feature mode's caches keep (fDBD's parts,
#: the features): the session pipeline runs deepfool
FEATURE_ONLY = {"fdbd", "delta_mds", "delta_knn", "delta_mds_rlog", "delta_knn_rlog", "dfg_features"}


def reference_vote(column) -> int:
    """Majority vote, ties to the smallest class, written the obvious way."""
    counts = Counter(int(label) for label in column)
    best = max(counts.values())
    return min(label for label, count in counts.items() if count == best)


def first_best(scores) -> int:
    """Index of the highest score, the first one on ties."""
    scores = list(scores)
    return scores.index(max(scores))


def preferred_best(scores, val_accs) -> int:
    """Index of the highest score, on ties the higher validation accuracy, then the first (the grid's rule)."""
    return max(range(len(scores)), key=lambda m: (scores[m], val_accs[m], -m))


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# a. version sets
# ---------------------------------------------------------------------------------------------

def test_version_set_counts_for_five_models():
    sets = version_sets(FIVE, [0, 1, 11])
    by_setting = Counter((max(bug for _, bug in members), setting) for setting, members in sets)
    assert by_setting == {(0, "healthy"): 26, (1, "all"): 26, (1, "one"): 75, (11, "all"): 26}
    assert len(sets) == 26 + 26 + 75 + 26
    # every N from 2 to 5, as many sets as combinations of N architectures
    healthy_sizes = Counter(len(members) for setting, members in sets if setting == "healthy")
    assert healthy_sizes == {n: comb(5, n) for n in range(2, 6)}
    one_sizes = Counter(len(members) for setting, members in sets if setting == "one")
    assert one_sizes == {n: n * comb(5, n) for n in range(2, 6)}  # each member in turn carries the fault
    # no set repeats, and no set holds one architecture twice
    assert len({members for _, members in sets}) == len(sets)
    assert all(len({model for model, _ in members}) == len(members) for _, members in sets)


def test_version_sets_members_and_order():
    sets = version_sets(["resnet", "alexnet", "densenet"], [1, 0])
    assert sets == [
        ("healthy", (("resnet", 0), ("alexnet", 0))),
        ("healthy", (("resnet", 0), ("densenet", 0))),
        ("healthy", (("alexnet", 0), ("densenet", 0))),
        ("healthy", (("resnet", 0), ("alexnet", 0), ("densenet", 0))),
        ("all", (("resnet", 1), ("alexnet", 1))),
        ("one", (("resnet", 1), ("alexnet", 0))),
        ("one", (("resnet", 0), ("alexnet", 1))),
        ("all", (("resnet", 1), ("densenet", 1))),
        ("one", (("resnet", 1), ("densenet", 0))),
        ("one", (("resnet", 0), ("densenet", 1))),
        ("all", (("alexnet", 1), ("densenet", 1))),
        ("one", (("alexnet", 1), ("densenet", 0))),
        ("one", (("alexnet", 0), ("densenet", 1))),
        ("all", (("resnet", 1), ("alexnet", 1), ("densenet", 1))),
        ("one", (("resnet", 1), ("alexnet", 0), ("densenet", 0))),
        ("one", (("resnet", 0), ("alexnet", 1), ("densenet", 0))),
        ("one", (("resnet", 0), ("alexnet", 0), ("densenet", 1))),
    ]
    # the order the flags were typed in does not matter: architectures and faults in any order, repeated
    for models, bugs in ((["densenet", "resnet", "alexnet"], [0, 1]), (["alexnet", "densenet", "resnet"], [1, 0, 1])):
        assert version_sets(models, bugs) == sets


def test_members_come_in_the_registry_order_and_one_of_them_carries_the_fault():
    for setting, members in version_sets(FIVE[::-1], [7]):
        assert setting in ("all", "one")
        bugs = [bug for _, bug in members]
        assert bugs == [7] * len(members) if setting == "all" else sorted(bugs) == [0] * (len(members) - 1) + [7]
        models = [model for model, _ in members]
        assert models == sorted(models, key=FIVE.index)  # the registry's order, not the order given


@pytest.mark.parametrize("bug", [11, 12])
def test_shifted_test_sets_have_no_one_fault_sets(bug):
    sets = version_sets(FIVE, [bug])
    assert {setting for setting, _ in sets} == {"all"} and len(sets) == 26
    assert all(all(b == bug for _, b in members) for _, members in sets)


def test_version_sets_for_other_numbers_of_models():
    assert version_sets(["resnet"], [0, 1]) == []
    assert version_sets(["resnet", "vgg16"], [0]) == [("healthy", (("resnet", 0), ("vgg16", 0)))]
    # six architectures: sets of at most five versions
    sizes = Counter(len(m) for _, m in version_sets(FIVE + ["extra"], [0]))
    assert sizes == {n: comb(6, n) for n in range(2, 6)}


# ---------------------------------------------------------------------------------------------
# b. every method on hand-built versions
# ---------------------------------------------------------------------------------------------

# 3 versions × 8 inputs, classes 0-3 (the example of test_metrics.py):
#   input          0      1      2      3        4        5      6      7
#   truth          0      1      2      3        0        1      2      3
#   versions     0 0 1  1 2 1  2 2 2  0 3 1    1 2 3    1 0 0  3 3 0  3 1 3
#   vote           0      1      2    0 (tie)  1 (tie)    0      3      3      -> 4/8
#   wrong votes    1      1      0      2        3        2      3      1      -> e = 1/8 3/8 2/8 2/8
# upper limit 6/8 (all wrong on inputs 4 and 6), lower limit 1/8 (input 2)
TRUTH = np.array([0, 1, 2, 3, 0, 1, 2, 3])
LABELS = np.array([[0, 1, 2, 0, 1, 1, 3, 3],
                   [0, 2, 2, 3, 2, 0, 3, 1],
                   [1, 1, 2, 1, 3, 0, 0, 3]])
# every version has the same failure model: correct answers lie far from the boundary (~1.0),
# wrong ones close (~0.2), so P(correct) grows with the distance; the priors differ
DISTANCES = np.array([[0.9, 0.9, 0.5, 0.2, 0.7, 1.0, 0.4, 1.2],
                      [0.5, 0.3, 0.5, 1.0, 0.6, 1.0, 0.3, 0.2],
                      [0.2, 0.9, 0.5, 0.4, 1.1, 0.2, 0.2, 0.2]])
VAL_ACC = [0.6, 0.9, 0.75]
CORRECT_POINTS, WRONG_POINTS, BANDWIDTH = [0.8, 1.0, 1.2], [0.1, 0.2, 0.3], 0.2
TOP_SOFTMAX = np.array([[0.9, 0.5, 0.6, 0.4, 0.7, 0.55, 0.9, 0.8],
                        [0.6, 0.8, 0.6, 0.95, 0.4, 0.9, 0.5, 0.3],
                        [0.5, 0.6, 0.6, 0.4, 0.9, 0.7, 0.6, 0.9]])


def softmax_rows(labels, top, num_classes=4) -> np.ndarray:
    """Probabilities whose argmax is ``labels``, with ``top`` there and the rest shared evenly."""
    probabilities = np.repeat(((1 - top) / (num_classes - 1))[:, None], num_classes, axis=1)
    probabilities[np.arange(len(labels)), labels] = top
    return probabilities


@pytest.fixture
def hand_built(tmp_path):
    correct, wrong = tmp_path / "v_correct.npz", tmp_path / "v_wrong.npz"
    GaussianKDE(CORRECT_POINTS, BANDWIDTH).save(correct)
    GaussianKDE(WRONG_POINTS, BANDWIDTH).save(wrong)
    records = []
    for index, (model, bug) in enumerate((("resnet", 3), ("alexnet", 0), ("densenet", 0))):
        module = DeepFailGuardModule(None, correct, wrong, VAL_ACC[index], name=model)
        records.append(VersionRecord("DIGITS", model, bug, LABELS[index], DISTANCES[index], module, "",
                                     softmax_rows(LABELS[index], TOP_SOFTMAX[index])))
    return records


def mixture_pdf(points, d) -> float:
    return float(np.mean(norm.pdf(d, loc=np.asarray(points), scale=BANDWIDTH)))


def reference_row(method, predictions, models, bugs, setting="one") -> dict:
    """A results row computed with plain loops from ``LABELS``/``TRUTH``."""
    n_inputs, n_versions = len(TRUTH), len(LABELS)
    right = [[LABELS[v][i] == TRUTH[i] for v in range(n_versions)] for i in range(n_inputs)]
    voting = sum(reference_vote(LABELS[:, i]) == TRUTH[i] for i in range(n_inputs)) / n_inputs
    upper = sum(any(r) for r in right) / n_inputs
    method_accuracy = sum(predictions[i] == TRUTH[i] for i in range(n_inputs)) / n_inputs
    row = {"dataset": "DIGITS", "n_versions": n_versions, "models": "-".join(models),
           "bug_ids": "-".join(map(str, bugs)), "setting": setting, "shift": "none", "method": method,
           "accuracy": method_accuracy, "voting_accuracy": voting, "upper_limit": upper,
           "lower_limit": sum(all(r) for r in right) / n_inputs,
           "abs_improvement": method_accuracy - voting,
           "rel_improvement": None if upper == voting else (method_accuracy - voting) / (upper - voting),
           "version_accuracies": "-".join(f"{sum(r[v] for r in right) / n_inputs:.4f}" for v in range(n_versions))}
    for k in range(n_versions + 1):
        inputs = [i for i in range(n_inputs) if right[i].count(False) == k]
        row[f"e{k}"] = len(inputs) / n_inputs
        row[f"acc_e{k}"] = (sum(predictions[i] == TRUTH[i] for i in inputs) / len(inputs)) if inputs else None
    return row


PAPER_SIX = ("dfg", "distance_only", "val_acc_only", "voting", "soft_voting", "max_softmax")


def methods_needing_at_most(*available) -> list[str]:
    """The registered methods a set can run when its members have only ``available`` beyond labels, distances and
    failure models, in registry order."""
    return [name for name, method in METHODS.items() if set(method.needs) <= set(available)]


def test_evaluate_set_hand_built_rows(hand_built):
    rows = evaluate_set("DIGITS", "one", hand_built, TRUTH)
    assert [row["method"] for row in rows] == methods_needing_at_most("probabilities")
    assert set(PAPER_SIX) <= set(methods_needing_at_most("probabilities"))
    for row in rows:
        assert set(row) <= set(RESULT_COLUMNS)
    rows = [row for row in rows if row["method"] in PAPER_SIX]

    # DeepFailGuard by hand: P = a·fc / (a·fc + (1 − a)·fw), the version with the highest P answers
    fc = np.array([[mixture_pdf(CORRECT_POINTS, d) for d in version] for version in DISTANCES])
    fw = np.array([[mixture_pdf(WRONG_POINTS, d) for d in version] for version in DISTANCES])
    a = np.array(VAL_ACC)[:, None]
    confidence = a * fc / (a * fc + (1 - a) * fw)
    dfg = [LABELS[first_best(confidence[:, i]), i] for i in range(8)]
    # input 1: versions 0 and 2 at the same distance, the better prior (0.75) wins; input 5: versions
    # 0 and 1 at the same distance, version 1's prior (0.9) wins though it is wrong
    assert dfg == [0, 1, 2, 3, 3, 0, 3, 3]
    # distance only: largest fc − fw, no prior: the first version wins ties of equal distance
    distance_only = [LABELS[first_best((fc - fw)[:, i]), i] for i in range(8)]
    assert distance_only == [0, 1, 2, 3, 3, 1, 3, 3]
    # validation accuracy only: always version 1 (0.9)
    val_acc_only = list(LABELS[1])
    voting = [reference_vote(LABELS[:, i]) for i in range(8)]
    assert voting == [0, 1, 2, 0, 1, 0, 3, 3]
    probabilities = np.stack([softmax_rows(LABELS[v], TOP_SOFTMAX[v]) for v in range(3)])
    soft_voting = [int(np.argmax(probabilities[:, i].mean(axis=0))) for i in range(8)]
    max_softmax = [LABELS[first_best(TOP_SOFTMAX[:, i]), i] for i in range(8)]
    assert max_softmax == [0, 2, 2, 3, 3, 0, 3, 3]  # input 2: a three-way tie, the first version

    models, bugs = ["resnet", "alexnet", "densenet"], [3, 0, 0]
    expected = [reference_row(method, predictions, models, bugs) for method, predictions in (
        ("dfg", dfg), ("distance_only", distance_only), ("val_acc_only", val_acc_only), ("voting", voting),
        ("soft_voting", soft_voting), ("max_softmax", max_softmax))]
    significance = ("mcnemar_p", "abs_improvement_low", "abs_improvement_high", "dfg_accuracy", "mcnemar_p_dfg")
    costs = ("compute", "flops_per_input")  # hand-built versions have no recorded costs
    assert [{k: v for k, v in row.items() if k not in significance + costs} for row in rows] == expected
    assert all(row["compute"] == 1.0 and np.isnan(row["flops_per_input"]) for row in rows)
    assert all(row["dfg_accuracy"] == 0.625 for row in rows)
    assert [row["mcnemar_p_dfg"] for row in rows][0] == 1.0  # DeepFailGuard against itself
    # significance by hand: dfg is right where voting is wrong on inputs 3 and 4 (truth 3, 3), wrong where
    # voting is right on input 5... McNemar counts only such discordant inputs, two-sided exact binomial
    for row, (_, predictions) in zip(rows, [("dfg", dfg), ("distance_only", distance_only),
                                            ("val_acc_only", val_acc_only), ("voting", voting),
                                            ("soft_voting", soft_voting), ("max_softmax", max_softmax)]):
        wins = sum(p == t != v for p, t, v in zip(predictions, TRUTH, voting))
        losses = sum(v == t != p for p, t, v in zip(predictions, TRUTH, voting))
        assert row["mcnemar_p"] == pytest.approx(min(1.0, 2 * sum(math.comb(wins + losses, k) for k in range(
            min(wins, losses) + 1)) / 2 ** (wins + losses)) if wins + losses else 1.0)
        assert row["abs_improvement_low"] <= row["abs_improvement"] <= row["abs_improvement_high"]
    assert (rows[3]["mcnemar_p"], rows[3]["abs_improvement_low"], rows[3]["abs_improvement_high"]) == (1.0, 0.0, 0.0)

    # the hand-checked figures themselves
    by_method = {row["method"]: row for row in rows}
    assert by_method["voting"]["accuracy"] == by_method["dfg"]["voting_accuracy"] == 0.5
    assert by_method["dfg"]["upper_limit"] == 0.75 and by_method["dfg"]["lower_limit"] == 0.125
    assert by_method["dfg"]["accuracy"] == 0.625
    assert by_method["dfg"]["abs_improvement"] == 0.125 and by_method["dfg"]["rel_improvement"] == 0.5
    assert by_method["distance_only"]["accuracy"] == 0.75 and by_method["distance_only"]["rel_improvement"] == 1.0
    assert by_method["val_acc_only"]["accuracy"] == 0.375
    assert by_method["max_softmax"]["accuracy"] == 0.5 and by_method["max_softmax"]["rel_improvement"] == 0.0
    assert by_method["dfg"]["version_accuracies"] == "0.6250-0.3750-0.3750"
    assert [by_method["dfg"][f"e{k}"] for k in range(4)] == [0.125, 0.375, 0.25, 0.25]
    assert [by_method["dfg"][f"acc_e{k}"] for k in range(4)] == [1.0, 1.0, 0.5, 0.0]
    assert [by_method["voting"][f"acc_e{k}"] for k in range(4)] == [1.0, 1.0, 0.0, 0.0]
    assert "e4" not in by_method["dfg"] and "acc_e5" not in by_method["dfg"]  # k > N: empty cells


def test_evaluate_set_without_probabilities_has_no_softmax_baselines(hand_built):
    hand_built[1].probabilities = None
    rows = evaluate_set("DIGITS", "one", hand_built, TRUTH)
    assert [row["method"] for row in rows] == methods_needing_at_most()
    assert {"dfg", "distance_only", "val_acc_only", "voting"} <= set(methods_needing_at_most())


def test_evaluate_set_without_headroom_has_no_relative_improvement(hand_built):
    # two versions that always agree: voting reaches the upper limit
    pair = [hand_built[0], hand_built[0]]
    rows = evaluate_set("DIGITS", "healthy", pair, TRUTH)
    assert all(row["upper_limit"] == row["voting_accuracy"] == 0.625 for row in rows)
    assert all(row["rel_improvement"] is None and row["abs_improvement"] == 0.0 for row in rows)


def test_evaluate_grid_skips_incomplete_sets_and_refuses_mixed_test_sets(hand_built):
    records = {("resnet", 3): hand_built[0], ("alexnet", 0): hand_built[1], ("densenet", 0): hand_built[2]}
    three = ["resnet", "alexnet", "densenet"]
    rows = evaluation.evaluate_sets("DIGITS", records, {"": TRUTH}, version_sets(three, [0, 3]))
    # complete: healthy (alexnet, densenet); one: resnet 3 with alexnet 0, with densenet 0, with both
    assert sorted({(row["setting"], row["models"], row["bug_ids"]) for row in rows}) == [
        ("healthy", "alexnet-densenet", "0-0"), ("one", "resnet-alexnet", "3-0"),
        ("one", "resnet-alexnet-densenet", "3-0-0"), ("one", "resnet-densenet", "3-0")]
    assert len(rows) == 4 * len(methods_needing_at_most("probabilities"))
    hand_built[2].test_set = "bug11"
    with pytest.raises(UsageError, match="different test sets"):
        evaluation.evaluate_sets("CIFAR10", records, {"": TRUTH, "bug11": TRUTH}, version_sets(three, [0, 3]))


def test_failure_prediction_rows_hand_built(hand_built):
    records = {("resnet", 3): hand_built[0], ("alexnet", 0): hand_built[1], ("densenet", 0): hand_built[2]}
    rows = evaluation.failure_prediction_rows(records, {"": TRUTH})
    assert [(row["model"], row["bug_id"]) for row in rows] == [("alexnet", 0), ("densenet", 0), ("resnet", 3)]
    for row, index in zip(rows, (1, 2, 0)):
        correct = LABELS[index] == TRUTH
        fc = np.array([mixture_pdf(CORRECT_POINTS, d) for d in DISTANCES[index]])
        fw = np.array([mixture_pdf(WRONG_POINTS, d) for d in DISTANCES[index]])
        a = VAL_ACC[index]
        assert row["test_accuracy"] == correct.mean() and row["val_acc"] == a and row["n_test"] == 8
        assert row["auroc_dfg"] == pytest.approx(roc_auc_score(correct, a * fc / (a * fc + (1 - a) * fw)))
        assert row["auroc_distance"] == pytest.approx(roc_auc_score(correct, DISTANCES[index]))
        assert row["auroc_max_softmax"] == pytest.approx(roc_auc_score(correct, TOP_SOFTMAX[index]))


# ---------------------------------------------------------------------------------------------
# c. the paper's cache layout, evaluated by the real script
# ---------------------------------------------------------------------------------------------

PAPER_MODELS = ["resnet", "alexnet", "densenet"]
# mymodel/paper_version_accuracies.csv: CIFAR10 resnet 0 80.58 %, alexnet 0 78.83 %, densenet 0 86.03 %
PAPER_VAL_ACC = {"resnet": 0.8058, "alexnet": 0.7883, "densenet": 0.8603}
N_TEST = 40


def write_paper_cache(info: Path, seed: int = 7) -> dict:
    """The paper's files for three healthy CIFAR10 versions: distances and labels (no softmax), the
    ground truth, and pickled ``scipy.stats.gaussian_kde`` failure models. Returns what was written."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, N_TEST)
    written = {"truth": truth, "versions": {}}
    for model, test_accuracy in zip(PAPER_MODELS, (0.75, 0.65, 0.6)):
        right = rng.random(N_TEST) < test_accuracy
        labels = np.where(right, truth, (truth + rng.integers(1, 10, N_TEST)) % 10)
        distances = np.where(right, rng.gamma(6.0, 0.05, N_TEST), rng.gamma(3.0, 0.04, N_TEST))
        distances = np.clip(distances, 0.03, 0.6).astype(np.float32)  # the paper's caches are float32
        correct_kde = gaussian_kde(rng.gamma(6.0, 0.05, 60))
        wrong_kde = gaussian_kde(rng.gamma(3.0, 0.04, 25))
        written["versions"][model] = (labels, distances, correct_kde, wrong_kde)
    write_fake_cache(info, "CIFAR10", truth, {(model, 0): v for model, v in written["versions"].items()})
    return written


PAPER_ARGS = ["--datasets", "CIFAR10", "--models", *PAPER_MODELS, "--bugs", "0"]


def test_paper_cache_evaluates_as_computed_by_hand(tmp_path, monkeypatch, capsys):
    info, model_root, output = tmp_path / "info", tmp_path / "model", tmp_path / "output"
    written = write_paper_cache(info)
    result = run_in_process(capsys, "evaluate", *PAPER_ARGS, "--info-root", info, "--model-root", model_root,
                            "--output", output, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not model_root.exists()  # no metadata: the validation accuracies are the paper's

    truth = written["truth"]
    labels, confidence, margin, distances = {}, {}, {}, {}
    for model, (model_labels, model_distances, correct_kde, wrong_kde) in written["versions"].items():
        d = np.load(info / "test_information_cached" / f"CIFAR10_{model}_bug0_distances.npy").astype(np.float64)
        np.testing.assert_array_equal(d, model_distances)
        fc, fw = correct_kde(d), wrong_kde(d)  # SciPy's own densities
        assert (fc > 1e-250).all() and (fw > 1e-250).all()  # the direct formula does not underflow here
        a = PAPER_VAL_ACC[model]
        labels[model], distances[model] = model_labels, d
        confidence[model] = a * fc / (a * fc + (1 - a) * fw)
        margin[model] = fc - fw

    rows = read_csv(output / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    sets = [list(pair) for pair in combinations(PAPER_MODELS, 2)] + [PAPER_MODELS]
    assert [row["models"] for row in rows if row["method"] == "dfg"] == ["-".join(s) for s in sets]
    assert [row["method"] for row in rows[:len(methods_needing_at_most())]] == methods_needing_at_most()  # no softmax
    assert len(rows) == len(methods_needing_at_most()) * len(sets)
    dfg_beats_voting = 0
    for members in sets:
        got = {row["method"]: row for row in rows if row["models"] == "-".join(members)}
        version_labels = np.stack([labels[m] for m in members])
        accs = [PAPER_VAL_ACC[m] for m in members]
        dfg = [version_labels[preferred_best([confidence[m][i] for m in members], accs), i] for i in range(N_TEST)]
        distance_only = [version_labels[preferred_best([margin[m][i] for m in members], accs), i]
                         for i in range(N_TEST)]
        best_prior = preferred_best(accs, accs)
        voting = [reference_vote(version_labels[:, i]) for i in range(N_TEST)]
        upper = np.mean([any(labels[m][i] == truth[i] for m in members) for i in range(N_TEST)])
        lower = np.mean([all(labels[m][i] == truth[i] for m in members) for i in range(N_TEST)])
        accuracies = {"dfg": np.mean(np.array(dfg) == truth), "voting": np.mean(np.array(voting) == truth),
                      "distance_only": np.mean(np.array(distance_only) == truth),
                      "val_acc_only": np.mean(version_labels[best_prior] == truth)}
        dfg_beats_voting += accuracies["dfg"] > accuracies["voting"]
        for method, method_accuracy in accuracies.items():
            row = got[method]
            assert row["dataset"] == "CIFAR10" and row["setting"] == "healthy"
            assert row["n_versions"] == str(len(members)) and row["bug_ids"] == "-".join("0" * len(members))
            assert float(row["accuracy"]) == pytest.approx(method_accuracy, abs=1e-6), (members, method)
            assert float(row["voting_accuracy"]) == pytest.approx(accuracies["voting"], abs=1e-6)
            assert float(row["upper_limit"]) == pytest.approx(upper, abs=1e-6)
            assert float(row["lower_limit"]) == pytest.approx(lower, abs=1e-6)
            assert float(row["abs_improvement"]) == pytest.approx(method_accuracy - accuracies["voting"], abs=1e-6)
            assert float(row["rel_improvement"]) == pytest.approx(
                (method_accuracy - accuracies["voting"]) / (upper - accuracies["voting"]), abs=1e-6)
            assert row["version_accuracies"] == "-".join(f"{np.mean(labels[m] == truth):.4f}" for m in members)
            assert all(row[f"e{k}"] == "" for k in range(len(members) + 1, 6))  # k > N: empty
            assert all(row[f"e{k}"] != "" for k in range(len(members) + 1))
    # the example is not degenerate: pairs disagree (voting ties) and the methods differ
    assert dfg_beats_voting >= 1
    assert any(reference_vote([labels["resnet"][i], labels["alexnet"][i]]) != labels["resnet"][i]
               for i in range(N_TEST))

    failure = read_csv(output / "failure_prediction.csv")
    assert [(row["model"], row["bug_id"]) for row in failure] == [("resnet", "0"), ("alexnet", "0"),
                                                                 ("densenet", "0")]  # faults, then canonical
    for row in failure:
        correct = labels[row["model"]] == truth
        assert float(row["val_acc"]) == pytest.approx(PAPER_VAL_ACC[row["model"]], abs=1e-6)
        assert float(row["test_accuracy"]) == pytest.approx(correct.mean(), abs=1e-6)
        assert float(row["auroc_dfg"]) == pytest.approx(roc_auc_score(correct, confidence[row["model"]]), abs=1e-6)
        assert float(row["auroc_distance"]) == pytest.approx(roc_auc_score(correct, distances[row["model"]]),
                                                             abs=1e-6)
        assert row["auroc_max_softmax"] == ""

    summary = read_csv(output / "summary.csv")
    assert [(row["n_versions"], row["method"], row["configurations"]) for row in summary] == [
        (n, method, configurations) for n, configurations in (("2", "3"), ("3", "1"))
        for method in methods_needing_at_most()]
    dfg_pairs = [float(row["accuracy"]) for row in rows if row["method"] == "dfg" and row["n_versions"] == "2"]
    assert float(summary[0]["accuracy"]) == pytest.approx(np.mean(dfg_pairs), abs=2e-6)
    assert (output / "figures" / "methods_CIFAR10.png").is_file()
    assert "CIFAR10" in result.stdout and "results in" in result.stdout


# ---------------------------------------------------------------------------------------------
# e. bad input to the cached evaluation: exit 2, one line, no CSV at all
# ---------------------------------------------------------------------------------------------

def truncate_distances(info):
    path = info / "test_information_cached" / "CIFAR10_alexnet_bug0_distances.npy"
    np.save(path, np.load(path)[:-1])
    return ["alexnet", "39 distances", "40 inputs"]


def two_dimensional_distances(info):
    path = info / "test_information_cached" / "CIFAR10_alexnet_bug0_distances.npy"
    np.save(path, np.load(path)[:, None])  # (inputs, 1): used to crash when the versions were stacked
    return ["1-D array of distances", str(path)]


def softmax_of_different_widths(info):
    cached = info / "test_information_cached"
    np.save(cached / "CIFAR10_resnet_bug0_probabilities.npy", np.full((N_TEST, 10), 0.1))
    np.save(cached / "CIFAR10_alexnet_bug0_probabilities.npy", np.full((N_TEST, 12), 1 / 12))  # used to crash
    np.save(cached / "CIFAR10_densenet_bug0_probabilities.npy", np.full((N_TEST, 10), 0.1))
    return ["different numbers of classes", "'alexnet bug 0': 12"]


def remove_ground_truth(info):
    (info / "test_information_cached" / "CIFAR10_ground_truth.npy").unlink()
    return ["missing ground truth", "CIFAR10_ground_truth.npy"]


def nan_distances(info):
    path = info / "test_information_cached" / "CIFAR10_densenet_bug0_distances.npy"
    distances = np.load(path)
    distances[[3, 17]] = np.nan
    np.save(path, distances)
    return ["2 NaN or infinite distance(s)", "CIFAR10_densenet_bug0_distances.npy"]


def only_one_version(info):
    for model in ("alexnet", "densenet"):
        for what in ("distances", "dnn_labels"):
            (info / "test_information_cached" / f"CIFAR10_{model}_bug0_{what}.npy").unlink()
    return ["CIFAR10: 1 version(s) available", "at least two"]


def corrupt_npy(info):
    path = info / "test_information_cached" / "CIFAR10_resnet_bug0_dnn_labels.npy"
    path.write_bytes(path.read_bytes()[:100])  # header, then half of the data
    return ["cannot read", str(path)]


def garbage_npy(info):
    path = info / "test_information_cached" / "CIFAR10_ground_truth.npy"
    path.write_bytes(b"not a NumPy file at all")
    return ["cannot read", str(path)]


def empty_npy(info):
    path = info / "test_information_cached" / "CIFAR10_alexnet_bug0_distances.npy"
    path.write_bytes(b"")
    return ["cannot read", str(path)]


def object_array_npy(info):
    path = info / "test_information_cached" / "CIFAR10_alexnet_bug0_dnn_labels.npy"
    np.save(path, np.array([{"label": 1}] * N_TEST, dtype=object), allow_pickle=True)
    return ["cannot read", str(path)]


def float_labels(info):
    path = info / "test_information_cached" / "CIFAR10_alexnet_bug0_dnn_labels.npy"
    np.save(path, np.load(path).astype(np.float64))
    return ["integer labels", str(path)]


def negative_labels(info):
    """A -1 label used to be counted as a vote for the previous input's last class (or crash on input 0)."""
    path = info / "test_information_cached" / "CIFAR10_resnet_bug0_dnn_labels.npy"
    labels = np.load(path)
    labels[5] = -1
    np.save(path, labels)
    return ["non-negative integer labels", str(path)]


def negative_ground_truth(info):
    path = info / "test_information_cached" / "CIFAR10_ground_truth.npy"
    truth = np.load(path)
    truth[0] = -3
    np.save(path, truth)
    return ["non-negative integer labels", str(path)]


def two_dimensional_ground_truth(info):
    path = info / "test_information_cached" / "CIFAR10_ground_truth.npy"
    np.save(path, np.eye(10, dtype=np.int64)[np.load(path)])  # one-hot
    return ["1-D array", str(path)]


@pytest.mark.parametrize("spoil", [truncate_distances, two_dimensional_distances, softmax_of_different_widths,
                                   remove_ground_truth, nan_distances, only_one_version,
                                   corrupt_npy, garbage_npy, empty_npy, object_array_npy, float_labels,
                                   negative_labels, negative_ground_truth, two_dimensional_ground_truth])
def test_bad_cache_is_a_usage_error_and_writes_nothing(tmp_path, capsys, single_thread, spoil):
    info, output = tmp_path / "info", tmp_path / "output"
    write_paper_cache(info)
    fragments = spoil(info)
    result = run_in_process(capsys, "evaluate", *PAPER_ARGS, "--info-root", info,
                            "--model-root", tmp_path / "model", "--output", output, "--quiet")
    assert_usage_error(result, *fragments)
    assert not any(output.rglob("*.csv")) and not (output / "figures").exists()


def test_two_versions_of_one_architecture_make_no_set(tmp_path, capsys, single_thread):
    """resnet healthy and resnet with fault 1: two versions, but no set of distinct architectures."""
    info, output = tmp_path / "info", tmp_path / "output"
    write_paper_cache(info)
    cached, kdes = info / "test_information_cached", info / "kde_results"
    for what in ("distances", "dnn_labels"):
        shutil.copy(cached / f"CIFAR10_resnet_bug0_{what}.npy", cached / f"CIFAR10_resnet_bug1_{what}.npy")
    for which in ("correct", "wrong"):
        shutil.copy(kdes / f"resnet_CIFAR10_{which}.pkl", kdes / f"resnet_CIFAR10_bug1_{which}.pkl")
    result = run_in_process(capsys, "evaluate", "--datasets", "CIFAR10", "--models",
                            "resnet", "--bugs", "0", "1", "--info-root", info, "--model-root", tmp_path / "model",
                            "--output", output, "--quiet")
    assert_usage_error(result, "CIFAR10: no set of two or more versions")
    assert not any(output.rglob("*.csv"))


def hostile_pickle(marker):
    return payload("exec", marker)


def kde_carrying_hostile_state(marker):
    kde = gaussian_kde([0.1, 0.2, 0.4])
    kde.extra = payload("exec", marker)  # a real gaussian_kde whose state smuggles the payload
    return kde


@pytest.mark.parametrize("payload", [hostile_pickle, kde_carrying_hostile_state])
def test_kde_pickle_that_would_run_code_is_refused(tmp_path, capsys, single_thread, payload):
    info, output = tmp_path / "info", tmp_path / "output"
    write_paper_cache(info)
    marker = tmp_path / "marker"
    hostile = info / "kde_results" / "alexnet_CIFAR10_wrong.pkl"
    hostile.write_bytes(pickle.dumps(payload(marker)))
    result = run_in_process(capsys, "evaluate", *PAPER_ARGS, "--info-root", info,
                            "--model-root", tmp_path / "model", "--output", output, "--quiet")
    assert_usage_error(result, "refused", str(hostile))
    assert not marker.exists()
    assert not any(output.rglob("*.csv"))
    # the payload is real: an ordinary unpickler would have run it
    pickle.loads(hostile.read_bytes())
    assert marker.exists()


def test_unknown_dataset_or_model_is_a_usage_error(tmp_path, capsys):
    for flag, value, fragment in (("--datasets", "MNIST", "unknown dataset"), ("--models", "lenet", "unknown model")):
        result = run_in_process(capsys, "evaluate", flag, value, "--info-root",
                                tmp_path / "info", "--output", tmp_path / "output", "--quiet")
        assert_usage_error(result, fragment)
    assert not any((tmp_path).rglob("*.csv"))


# ---------------------------------------------------------------------------------------------
# f. summary
# ---------------------------------------------------------------------------------------------

def summary_input() -> list[dict]:
    def row(dataset, n, method, accuracy, voting, upper=0.9):
        return {"dataset": dataset, "n_versions": n, "method": method, "accuracy": accuracy,
                "voting_accuracy": voting, "upper_limit": upper, "abs_improvement": accuracy - voting}

    return [
        row("DIGITS", 2, "voting", 0.6, 0.6), row("DIGITS", 2, "dfg", 0.7, 0.6),
        row("DIGITS", 2, "voting", 0.5, 0.5, 0.7), row("DIGITS", 2, "dfg", 0.4, 0.5, 0.7),
        row("DIGITS", 2, "voting", 0.8, 0.8, 0.8), row("DIGITS", 2, "dfg", 0.8, 0.8, 0.8),
        row("DIGITS", 3, "dfg", 0.9, 0.7, 0.95), row("DIGITS", 3, "voting", 0.7, 0.7, 0.95),
        row("CIFAR10", 2, "max_softmax", 0.55, 0.5), row("CIFAR10", 2, "dfg", 0.6, 0.5),
        row("CIFAR10", 2, "voting", 0.5, 0.5),
    ]


def test_summarize_means_wins_and_losses():
    summary = summarize(summary_input()).to_dict("records")
    assert [(r["dataset"], r["n_versions"], r["method"]) for r in summary] == [
        ("CIFAR10", 2, "dfg"), ("CIFAR10", 2, "voting"), ("CIFAR10", 2, "max_softmax"),
        ("DIGITS", 2, "dfg"), ("DIGITS", 2, "voting"), ("DIGITS", 3, "dfg"), ("DIGITS", 3, "voting")]
    digits_dfg = summary[3]
    assert digits_dfg["configurations"] == 3
    assert digits_dfg["accuracy"] == pytest.approx((0.7 + 0.4 + 0.8) / 3)
    assert digits_dfg["voting_accuracy"] == pytest.approx((0.6 + 0.5 + 0.8) / 3)
    assert digits_dfg["upper_limit"] == pytest.approx((0.9 + 0.7 + 0.8) / 3)
    assert digits_dfg["abs_improvement"] == pytest.approx((0.1 - 0.1 + 0.0) / 3)
    assert (digits_dfg["wins_over_voting"], digits_dfg["losses_to_voting"]) == (1, 1)  # the tie counts as neither
    assert (summary[4]["wins_over_voting"], summary[4]["losses_to_voting"]) == (0, 0)
    assert (summary[5]["configurations"], summary[5]["wins_over_voting"]) == (1, 1)
    assert summary[2]["accuracy"] == pytest.approx(0.55) and summary[2]["wins_over_voting"] == 1


def test_format_summary_one_line_per_method_columns_per_n():
    text = format_summary(summarize(summary_input()))
    cifar, digits = (block.splitlines() for block in text.split("\n\n"))
    assert cifar[0].split() == ["CIFAR10", "N=2", "(1", "sets)"]
    assert [line.split()[0] for line in cifar[2:]] == ["dfg", "voting", "max_softmax", "upper"]
    assert cifar[2].split() == ["dfg", "0.6000", "1/1"]
    assert cifar[4].split() == ["max_softmax", "0.5500", "1/1"]
    assert cifar[5].split() == ["upper", "limit", "0.9000"]
    assert digits[0].split() == ["DIGITS", "N=2", "(3", "sets)", "N=3", "(1", "sets)"]
    assert digits[2].split() == ["dfg", f"{(0.7 + 0.4 + 0.8) / 3:.4f}", "1/3", "0.9000", "1/1"]
    assert digits[3].split() == ["voting", f"{(0.6 + 0.5 + 0.8) / 3:.4f}", "0/3", "0.7000", "0/1"]
    assert digits[4].split() == ["upper", "limit", f"{(0.9 + 0.7 + 0.8) / 3:.4f}", "0.9500"]
    assert len(digits) == 5  # DIGITS has no max_softmax: no line for it


# ---------------------------------------------------------------------------------------------
# d. real time against cached: the same decisions and metrics on the same data
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluated_both_ways(pipeline, tmp_path_factory):
    """The session pipeline evaluated again from its cache and in real time (into fresh output folders,
    in process, default flags), keeping what each evaluation script hands to ``run_evaluation`` (its version
    records: labels, distances, softmax, failure models)."""
    base = tmp_path_factory.mktemp("realtime")
    previous = torch.get_num_threads()  # each script sets its own (--threads): restored after
    outputs, records = {}, {}
    evaluate = evaluation.run_evaluation

    def keep_records(name):
        def run_evaluation(records_by_dataset, truths_by_dataset, *rest, **options):
            records[name] = (records_by_dataset["DIGITS"], truths_by_dataset["DIGITS"])
            return evaluate(records_by_dataset, truths_by_dataset, *rest, **options)
        return run_evaluation

    try:
        for name, script in (("cached", "evaluate"), ("realtime", "realtime")):
            outputs[name] = base / name
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(evaluation, "run_evaluation", keep_records(name))
                assert script_module(script).main(pipeline.argv(script, "--output", outputs[name])) == 0, name
    finally:
        torch.set_num_threads(previous)
    return pipeline, outputs, records


@pytest.mark.slow
def test_realtime_and_cached_results_are_identical(pipeline_realtime):
    """The session pipeline's two evaluations of the same grid: one from the cache, one attacking live."""
    pipeline = pipeline_realtime
    for name in ("results.csv", "failure_prediction.csv", "summary.csv"):
        assert read_csv(pipeline.out / name) == read_csv(pipeline.realtime / name), name
        assert (pipeline.out / name).read_text() == (pipeline.realtime / name).read_text(), name
    rows = read_csv(pipeline.out / "results.csv")
    sets = list(dict.fromkeys((row["models"], row["bug_ids"]) for row in rows))
    assert ("densenet-squeezenet", "0-0") in sets and ("densenet-squeezenet", "10-10") in sets
    assert ("densenet-squeezenet", "0-1") in sets  # fault 1 carried by one version (densenet's is not trained)
    # every method on every set (softmax probabilities are cached too), but those reading the feature mode's outputs
    ran = [name for name, method in selection.METHODS.items() if not set(mode_outputs("feature")) & set(method.needs)]
    assert ran == [name for name in selection.METHODS if name not in FEATURE_ONLY]
    assert [(row["models"], row["bug_ids"], row["method"]) for row in rows] == [
        (*members, method) for members in sets for method in ran]
    failure = read_csv(pipeline.out / "failure_prediction.csv")
    assert [(row["model"], row["bug_id"], row["n_test"]) for row in failure] == [
        ("densenet", "0", "20"), ("squeezenet", "0", "20"), ("squeezenet", "1", "20"), ("densenet", "10", "20"),
        ("squeezenet", "10", "20")]  # by fault, then in the registry's order


@pytest.mark.slow
def test_realtime_and_cached_decisions_are_identical(evaluated_both_ways):
    """The live attack in the real-time script gives the cached labels, distances and softmax bit
    for bit, hence the same P(correct) and the same DeepFailGuard decision on every input."""
    from storage.layout import cache_path

    pipeline, outputs, records = evaluated_both_ways
    cached, cached_truth = records["cached"]
    live, live_truth = records["realtime"]
    assert sorted(cached) == sorted(live) == [("densenet", 0), ("densenet", 10), ("squeezenet", 0),
                                              ("squeezenet", 1), ("squeezenet", 10)]
    np.testing.assert_array_equal(cached_truth[""], live_truth[""])
    np.testing.assert_array_equal(cached_truth[""], np.load(pipeline.truth))
    for key in cached:
        model, bug = key
        np.testing.assert_array_equal(live[key].labels, np.load(cache_path(pipeline.info, model, "DIGITS", bug,
                                                                           "dnn_labels")))
        np.testing.assert_array_equal(live[key].distances, cached[key].distances)
        np.testing.assert_array_equal(live[key].labels, cached[key].labels)
        np.testing.assert_array_equal(live[key].probabilities, cached[key].probabilities)
        assert live[key].val_acc == cached[key].val_acc
        np.testing.assert_array_equal(live[key].confidence, cached[key].confidence)
    both_chosen = []
    for order in combinations(sorted(live), 2):
        decisions = {}
        for name, versions in (("cached", cached), ("realtime", live)):
            decisions[name] = DeepFailGuard.select(np.stack([versions[k].confidence for k in order]),
                                                   np.stack([versions[k].labels for k in order]))
        np.testing.assert_array_equal(decisions["cached"][0], decisions["realtime"][0])
        np.testing.assert_array_equal(decisions["cached"][1], decisions["realtime"][1])
        if set(decisions["realtime"][1]) == {0, 1} and (live[order[0]].labels != live[order[1]].labels).any():
            both_chosen.append((order, decisions["realtime"][0]))
    # not a degenerate case: somewhere two versions answer differently and each of them is chosen (two
    # squeezenets: the densenet's failure model, fitted without a wrong validation input, always trusts it)
    assert both_chosen
    # and these decisions are the ones the results report, on every set
    checked = set()
    for row in read_csv(outputs["realtime"] / "results.csv"):
        if row["method"] != "dfg":
            continue
        members = tuple(zip(row["models"].split("-"), map(int, row["bug_ids"].split("-"))))
        labels, _ = DeepFailGuard.select(np.stack([live[k].confidence for k in members]),
                                         np.stack([live[k].labels for k in members]))
        assert float(row["accuracy"]) == pytest.approx(np.mean(labels == live_truth[""]), abs=1e-6), members
        checked.add(tuple(sorted(members)))
    assert len(checked) == 5


@pytest.mark.slow
def test_the_order_flags_are_typed_in_changes_no_byte(pipeline, tmp_path, capsys):
    """``--models squeezenet densenet`` and ``--models densenet squeezenet`` (and the faults in another order)
    write byte-identical tables and ``methods.json``: members come in the canonical order, whatever was typed."""
    outputs = []
    for grid in (["--models", "squeezenet", "densenet", "--bugs", "0", "1", "10"],
                 ["--models", "densenet,squeezenet", "--bugs", "10", "1", "0"]):
        outputs.append(tmp_path / f"out{len(outputs)}")
        result = run_in_process(capsys, "evaluate", *pipeline.argv("evaluate", "--output", outputs[-1], grid=grid))
        assert result.returncode == 0, result.stderr
    for name in ("results.csv", "summary.csv", "failure_prediction.csv", "selective.csv", "methods.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    assert (outputs[0] / "results.csv").read_bytes() == (pipeline.out / "results.csv").read_bytes()


def test_methods_json_records_every_method_and_score_that_ran(pipeline):
    import json

    recorded = json.loads((pipeline.out / "methods.json").read_text())
    results = read_csv(pipeline.out / "results.csv")
    assert list(recorded["methods"]) == sorted({row["method"] for row in results})
    assert recorded["methods"]["knora_e"] == {"class": "selection.dynamic.KnoraEliminate", "parameters": {"k": 7},
                                              "needs": ["validation", "region"], "ties": "the smallest class index",
                                              "attacks": False}
    assert recorded["methods"]["dfg"]["attacks"] and recorded["methods"]["cascade_dfg"]["attacks"]
    assert recorded["methods"]["cascade_dfg"]["parameters"] == {"score": "dfg", "tolerance": 0.005, "thresholds": 200}
    assert recorded["methods"]["stacking"]["parameters"] == {"max_inputs": 3000, "solver": "newton-cg", "C": 1.0}
    assert recorded["methods"]["dfg"]["parameters"] == {"score": "dfg"} and "validation accuracy" in \
        recorded["methods"]["dfg"]["ties"]
    assert recorded["scores"]["rel_u"]["parameters"] == {"weight": 0.5}
    # every score but those reading what only the feature mode's caches keep (the pipeline runs deepfool)
    assert set(recorded["scores"]) == set(selection.SCORES) - FEATURE_ONLY


def test_the_summary_says_where_the_files_are_and_names_only_the_figures_there(tmp_path):
    from evaluation.report import format_whereabouts

    assert format_whereabouts(tmp_path).splitlines()[1] == f"figures in {tmp_path / 'figures'}/ (none)"
    (tmp_path / "figures").mkdir()
    for name in ("methods_DIGITS.png", "risk_coverage_DIGITS.png", "notes.txt"):
        (tmp_path / "figures" / name).write_bytes(b"")
    results, figures = format_whereabouts(tmp_path).splitlines()
    assert results.startswith(f"results in {tmp_path}/results.csv, summary.csv") and "docs/outputs.md" in results
    assert figures == f"figures in {tmp_path / 'figures'}/ (methods_*, risk_coverage_*)"
