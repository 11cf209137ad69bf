"""Deployment: what a version costs (FLOPs, latency) in its metadata, the fused first-order distance, cascades and
their ``compute``, Learn-then-Test abstention (``selective.csv``) and the live policies' ``latency.csv``."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_usage_error, run_in_process
from scipy.stats import binom
from test_selection import MODELS, versions  # noqa: F401 - the seeded toy versions, with costs

import evaluation
from distances import costs
from evaluation.selective import COLUMNS, least_answered, ltt_threshold
from selection import METHODS, SetContext, preference_by_validation_accuracy
from selection.cascade import walk
from storage import layout
from storage.settings import distance_mode

# ---------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------


def test_flops_of_a_linear_network_are_its_closed_form():
    """One linear layer d -> k: the forward pass is 2dk FLOPs per input; first-order:2, as deployed, is that
    forward pass (with its graph) and the input gradient (2dk): no pass at the stepped point."""
    torch.manual_seed(0)
    d, k = 2 * 6 * 6, 4
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, k)).eval()
    record = costs.measure(network, torch.rand(8, 2, 6, 6), "cpu", modes=("first-order:2", "first-order"))
    assert record["forward_flops"] == 2 * d * k
    assert record["distance_flops"]["first-order:2"] == 2 * 2 * d * k
    # first-order (10 candidates, 4 classes here): a clean pass, then the batch replicated per other candidate
    # (3) through one forward and one backward pass
    assert record["distance_flops"]["first-order"] == 2 * d * k * (1 + 3 + 3)
    assert record["flops_inputs"] == 8 and record["latency_threads"] == torch.get_num_threads()
    assert record["forward_ms_per_input"] > 0 and record["latency_device"].startswith("cpu")


def test_training_records_costs_and_older_metadata_gets_them_on_the_next_step(pipeline_copy, capsys):
    ws = pipeline_copy
    recorded = json.loads(ws.metadata().read_text())["costs"]
    flops = recorded["distance_flops"]
    assert set(costs.cost_modes()) <= set(flops)
    assert flops["deepfool"] > flops["first-order"] > flops["first-order:2"] > recorded["forward_flops"] > 0
    metadata = json.loads(ws.metadata().read_text())
    del metadata["costs"]
    ws.metadata().write_text(json.dumps(metadata))
    os.utime(ws.metadata(), ns=(10**18, 10**18))
    result = run_in_process(capsys, "cache", *ws.argv("cache"))  # finished: it skips, but costs the version
    assert result.returncode == 0, result.stderr
    assert "squeezenet_DIGITS.json had no costs" in result.stderr
    again = json.loads(ws.metadata().read_text())["costs"]
    assert again["forward_flops"] == recorded["forward_flops"]
    for mode in costs.cost_modes():  # DeepFool's steps depend on the inputs: the fit's are a stratified sample
        assert again["distance_flops"][mode] == pytest.approx(flops[mode], rel=0 if "first" in mode else 0.1)
    assert os.stat(ws.metadata()).st_mtime_ns == 10**18  # the version did not change: its time stays


def test_fused_first_order_gives_the_unfused_distances():
    torch.manual_seed(1)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 6 * 6, 5)).eval()
    images = torch.rand(16, 1, 8, 8)
    fused = distance_mode("first-order:2").attacker(network, "cpu", check_success=False)
    result = fused.attack(images)
    assert result.success is None  # deployment does not pay for the flag
    unfused = distance_mode("first-order:2").attacker(network, "cpu")
    x0 = images.contiguous(memory_format=unfused.memory_format)
    logits, classes = unfused._clean(x0)
    distances, _ = unfused._first_order(x0, classes)
    np.testing.assert_array_equal(result.distances, distances.numpy())
    np.testing.assert_array_equal(result.labels, classes[:, 0].numpy())
    assert distance_mode("first-order:2").attacker(network, "cpu").attack(images).success is not None


# ---------------------------------------------------------------------------------------------
# cascades
# ---------------------------------------------------------------------------------------------

def test_the_cascade_walk_on_a_hand_checked_case():
    scores = np.array([[0.9, 0.2, 0.4, 0.1],    # member 0, visited first
                       [0.1, 0.8, 0.3, 0.2],    # member 1
                       [0.5, 0.5, 0.9, 0.3]])   # member 2, last
    labels = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
    answer, visited = walk(scores, labels, [0, 1, 2], 0.7, SetContext(3))
    # input 0 stops at member 0; input 1 at member 1; inputs 2 and 3 reach the end: the highest score answers
    assert answer.tolist() == [0, 1, 2, 2]
    assert visited.tolist() == [[True] * 4, [False, True, True, True], [False, False, True, True]]
    never, all_visited = walk(scores, labels, [0, 1, 2], np.inf, SetContext(3))
    assert all_visited.all() and never.tolist() == [0, 1, 2, 2]


def test_compute_is_one_for_full_set_methods_and_below_for_cascades(versions):  # noqa: F811
    records, truth = versions
    members = [records[model, 0] for model in MODELS]
    context = SetContext(4, None, preference_by_validation_accuracy(members))
    rows = {row["method"]: row for row in evaluation.evaluate_set("TOY", "healthy", members, truth, context)}
    forward = sum(member.costs["forward_flops"] for member in members)
    attack = sum(member.costs["distance_flops"]["deepfool"] for member in members)
    assert rows["voting"]["compute"] == 1.0 and rows["voting"]["flops_per_input"] == forward
    assert rows["dfg"]["compute"] == 1.0 and rows["dfg"]["flops_per_input"] == attack
    assert rows["max_softmax"]["flops_per_input"] == forward
    for name in ("cascade_dfg", "cascade_max_softmax", "cascade_doctor", "cascade_agreement"):
        assert 0 < rows[name]["compute"] <= 1.0
    assert min(rows[name]["compute"] for name in rows if name.startswith("cascade")) < 1.0
    state = METHODS["cascade_dfg"].fit(members, context)
    visited = METHODS["cascade_dfg"].visits(state, members, context)
    expected = (visited * np.array([m.costs["distance_flops"]["deepfool"] for m in members])[:, None]).sum(0).mean()
    assert rows["cascade_dfg"]["flops_per_input"] == pytest.approx(expected)
    assert rows["cascade_dfg"]["compute"] == pytest.approx(expected / attack)
    assert state[0] == [0, 1, 2]  # the toy architectures' costs rise in registry order


def test_the_agreement_cascade_runs_all_only_where_the_two_cheapest_disagree(versions):  # noqa: F811
    records, truth = versions
    members = [records[model, 0] for model in MODELS]
    context = SetContext(4, None, preference_by_validation_accuracy(members))
    method = METHODS["cascade_agreement"]
    state = method.fit(members, context)
    agree = members[0].labels == members[1].labels
    visited = method.visits(state, members, context)
    assert visited[:2].all() and (visited[2] == ~agree).all()
    predicted = method.predict(state, members, context)
    np.testing.assert_array_equal(predicted[agree], members[0].labels[agree])


# ---------------------------------------------------------------------------------------------
# Learn-then-Test
# ---------------------------------------------------------------------------------------------

def brute_force_coverage(confidence, wrong, alpha, delta) -> int:
    """Inputs answered at the certified threshold, testing every distinct confidence from the highest down."""
    answered_at_last = 0
    for threshold in np.unique(confidence)[::-1]:
        answered = int((confidence >= threshold).sum())
        if answered < least_answered(alpha, delta):
            continue
        if binom.cdf(int(wrong[confidence >= threshold].sum()), answered, alpha) > delta:
            break
        answered_at_last = answered
    return answered_at_last


@pytest.mark.parametrize("seed", range(4))
def test_ltt_certifies_what_testing_every_threshold_certifies(seed):
    rng = np.random.default_rng(seed)
    confidence = rng.random(300)
    wrong = rng.random(300) < 0.25 * (1 - confidence)
    threshold = ltt_threshold(confidence, wrong, 0.05, 0.1, grid=10_000)
    expected = brute_force_coverage(confidence, wrong, 0.05, 0.1)
    assert (0 if threshold is None else int((confidence >= threshold).sum())) == expected


def test_ltt_closed_cases():
    assert least_answered(0.05, 0.1) == 45  # 0.95**45 < 0.1 < 0.95**44
    assert ltt_threshold(np.linspace(0, 1, 100), np.zeros(100, bool), 0.05, 0.1) == 0.0  # all answered
    assert ltt_threshold(np.linspace(0, 1, 44), np.zeros(44, bool), 0.05, 0.1) is None  # too few to certify
    assert ltt_threshold(np.linspace(0, 1, 100), np.ones(100, bool), 0.05, 0.1) is None  # always wrong


def test_ltt_controls_the_risk_over_calibration_draws():
    """P(wrong | u) = 0.2(1 − u) for u uniform: the selective risk above t is 0.1(1 − t). Over 300 calibration
    draws the certified threshold's true risk exceeds alpha in at most delta of them (9 here)."""
    rng = np.random.default_rng(7)
    alpha, delta, failures, certified = 0.05, 0.1, 0, 0
    for _ in range(300):
        u = rng.random(400)
        threshold = ltt_threshold(u, rng.random(400) < 0.2 * (1 - u), alpha, delta, grid=200)
        if threshold is not None:
            certified += 1
            failures += 0.1 * (1 - threshold) > alpha
    # the sequence stops at once where one of the first 45 answered is wrong: certified in 186 of the draws
    assert certified > 150 and failures / 300 <= delta


def test_selective_csv_and_bad_levels(pipeline, capsys):
    table = pd.read_csv(pipeline.out / layout.SELECTIVE_CSV)
    assert list(table.columns) == COLUMNS
    assert set(table["shift"]) == {"none"} and set(table["alpha"]) == {0.05} and set(table["delta"]) == {0.1}
    results = pd.read_csv(pipeline.out / layout.RESULTS_CSV)
    assert len(table.drop_duplicates(["models", "bug_ids", "setting"])) == \
        len(results.drop_duplicates(["models", "bug_ids", "setting"]))
    uncertified = table[~table["certified"]]
    assert (uncertified["coverage"] == 0).all() and uncertified["threshold"].isna().all()
    held = table[table["certified"] & (table["coverage"] > 0)]
    assert ((held["selective_risk"] <= held["alpha"]) == held["risk_held"]).all()
    for flag, value in (("--alpha", "1.5"), ("--delta", "0")):
        result = run_in_process(capsys, "evaluate", *pipeline.argv("evaluate", flag, value))
        assert_usage_error(result, flag)


@pytest.mark.slow
def test_latency_csv_of_the_live_policies(pipeline_realtime):
    table = pd.read_csv(pipeline_realtime.realtime / layout.LATENCY_CSV)
    assert list(table["policy"]) == ["voting", "dfg", "cascade_dfg"]
    assert table.loc[0, "ratio_to_voting"] == 1.0 and (table["ms_per_input"] > 0).all()
    assert table.loc[1, "compute"] == 1.0 and 0 < table.loc[2, "compute"] <= 1.0
    assert table.loc[1, "agreement"] == 1.0  # full DeepFailGuard live gives the evaluation's labels
    assert table["device"].str.startswith("cpu").all() and table["threads"].nunique() == 1
