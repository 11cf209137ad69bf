"""The registries of failure scores and selection methods (``selection``), each checked against an independent
brute-force version written here: closed forms for the scores, explicit loops for the k-NN competences,
REL-U's D by its definition, the tie-averaged risk-coverage curve by enumerating orderings."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re

import numpy as np
import pytest
from conftest import run_in_process
from scipy.stats import binomtest
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

import evaluation
import selection
from DeepFailGuard import DeepFailGuardModule
from evaluation import metrics
from failure_model.kde import GaussianKDE
from selection import METHODS, NEEDS, SCORES, SetContext, combination, confidence, deepfailguard, dynamic
from storage import caches, layout
from utils import UsageError

CLASSES = 4
MODELS = ["resnet", "alexnet", "densenet"]


def random_answers(rng, truth, accuracy, with_truth=False) -> caches.CachedAnswers:
    """Answers right on about ``accuracy`` of the inputs, with logits peaked on the answer (more when right)."""
    n = len(truth)
    right = rng.random(n) < accuracy
    labels = np.where(right, truth, (truth + rng.integers(1, CLASSES, n)) % CLASSES)
    logits = rng.normal(0.0, 1.0, (n, CLASSES))
    logits[np.arange(n), labels] += np.where(right, 3.0, 1.0) + rng.random(n)
    labels = logits.argmax(axis=1)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    distances = np.where(labels == truth, rng.gamma(4.0, 0.25, n), rng.gamma(1.5, 0.2, n))
    # fDBD's parts and the features, from what is drawn (no draw of their own: the other arrays stay as they were)
    margins, deviations = 2.0 * distances + 0.1, 1.0 + logits.std(axis=1)
    features = np.column_stack([logits, distances])
    return caches.CachedAnswers(labels, distances, probabilities, logits, truth if with_truth else None,
                                {"feature_margins": margins, "feature_deviations": deviations, "features": features})


@pytest.fixture
def versions(tmp_path):
    """Healthy and faulty versions of three architectures, with test and validation outputs (seeded)."""
    rng = np.random.default_rng(3)
    test_truth, validation_truth = rng.integers(0, CLASSES, 60), rng.integers(0, CLASSES, 40)
    records = {}
    for model in MODELS:
        for bug, accuracy in ((0, 0.8), (1, 0.55)):
            validation = random_answers(rng, validation_truth, accuracy, with_truth=True)
            test = random_answers(rng, test_truth, accuracy)
            paths = tmp_path / f"{model}{bug}_correct.npz", tmp_path / f"{model}{bug}_wrong.npz"
            GaussianKDE.fit(validation.distances[validation.correct]).save(paths[0])
            GaussianKDE.fit(validation.distances[~validation.correct]).save(paths[1])
            module = DeepFailGuardModule(None, *paths, float(validation.correct.mean()), name=f"{model}{bug}")
            records[model, bug] = evaluation.VersionRecord("TOY", model, bug, test.labels, test.distances, module, "",
                                                          test.probabilities, test.logits, validation,
                                                          toy_costs(MODELS.index(model)),
                                                          outputs=test.outputs)
    return records, test_truth


def toy_costs(rank: int) -> dict:
    """A costs record (``distances/costs.py``) for the rank-th architecture: the later, the dearer."""
    return {"forward_flops": (rank + 1) * 10**6, "distance_flops": {"deepfool": (rank + 1) * 5 * 10**7}}


# ---------------------------------------------------------------------------------------------
# the registries
# ---------------------------------------------------------------------------------------------

def test_every_score_selects_and_every_need_is_declared():
    for name, score in SCORES.items():
        assert set(score.needs) <= set(NEEDS), name
        if score.selects:
            assert METHODS[name].score == name
    for name, method in METHODS.items():
        assert set(method.needs) <= set(NEEDS), name
    assert list(METHODS)[:2] == ["dfg", "distance_only"]
    assert {"val_acc_only", "voting", "soft_voting", "max_softmax", "stacking", "ola", "lca", "knora_e",
            "knora_u", "soft_voting_ts", "dfg_plus", "rel_u", "doctor", "entropy", "energy",
            "softmax_margin", "maxlogit_pnorm", "gen", "delta_mds", "delta_knn", "delta_mds_rlog", "delta_knn_rlog",
            "dfg_features"} <= set(METHODS)


def test_a_score_is_registered_once(restore_registries):
    with pytest.raises(ValueError, match="registered twice"):
        @selection.register_score
        class Again(selection.Score):
            name = "doctor"


# ---------------------------------------------------------------------------------------------
# scores: closed forms
# ---------------------------------------------------------------------------------------------

def test_softmax_scores_closed_forms(versions):
    records, _ = versions
    record = records["resnet", 0]
    record.probabilities[0] = [1.0, 0.0, 0.0, 0.0]  # exact zeros: 0·log 0 counts 0
    for i, (p, logits) in enumerate(zip(record.probabilities, record.logits)):
        ordered = sorted(p, reverse=True)
        assert record.score("max_softmax")[i] == pytest.approx(ordered[0])
        assert record.score("softmax_margin")[i] == pytest.approx(ordered[0] - ordered[1])
        assert record.score("doctor")[i] == pytest.approx(-(1 - sum(x * x for x in p)))
        assert record.score("entropy")[i] == pytest.approx(sum(x * math.log(x) for x in p if x > 0))
        assert record.score("energy")[i] == pytest.approx(math.log(sum(math.exp(x) for x in logits)))
        assert record.score("distance")[i] == record.distances[i]
    assert record.score("entropy")[0] == 0.0


def rel_u_matrix_by_definition(probabilities, correct, weight=0.5):
    """D_ij = ReLU(λ·mean over wrong of p_i p_j − (1 − λ)·mean over right of p_i p_j) off the diagonal, over its
    Frobenius norm; the all-ones off-diagonal matrix where no entry is positive."""
    classes = probabilities.shape[1]
    d = np.zeros((classes, classes))
    for i in range(classes):
        for j in range(classes):
            if i == j:
                continue
            wrong = [p[i] * p[j] for p, c in zip(probabilities, correct) if not c]
            right = [p[i] * p[j] for p, c in zip(probabilities, correct) if c]
            value = weight * (sum(wrong) / len(wrong) if wrong else 0) - (1 - weight) * (
                sum(right) / len(right) if right else 0)
            d[i, j] = max(value, 0.0)
    if not (d > 0).any():
        d = np.ones((classes, classes)) - np.eye(classes)
    return d / math.sqrt(sum(x * x for x in d.ravel()))


def test_rel_u_by_its_definition(versions):
    records, _ = versions
    record = records["alexnet", 1]
    d = rel_u_matrix_by_definition(record.validation.probabilities, record.validation.correct)
    assert (d > 0).any() and not (d == d.max()).all()  # the learned case, not the fallback
    for i, p in enumerate(record.probabilities):
        expected = -sum(p[a] * d[a, b] * p[b] for a in range(CLASSES) for b in range(CLASSES))
        assert record.score("rel_u")[i] == pytest.approx(expected)


def test_rel_u_without_wrong_validation_answers_is_the_gini_impurity(versions):
    records, _ = versions
    record = records["densenet", 0]
    record.validation.truth = record.validation.labels.copy()  # never wrong: no positive entry
    d = rel_u_matrix_by_definition(record.validation.probabilities, record.validation.correct)
    np.testing.assert_allclose(d, (np.ones((CLASSES, CLASSES)) - np.eye(CLASSES)) / math.sqrt(CLASSES ** 2 - CLASSES))
    gini = 1 - (record.probabilities ** 2).sum(axis=1)
    np.testing.assert_allclose(record.score("rel_u"), -gini / math.sqrt(CLASSES ** 2 - CLASSES))


def maxlogit_pnorm_by_definition(logits, p):
    centred = [x - sum(logits) / len(logits) for x in logits]
    norm = sum(abs(x) ** p for x in centred) ** (1 / p)
    return max(centred) / norm if norm else 0.0


def test_maxlogit_pnorm_picks_p_by_validation_auroc_and_is_its_definition(versions):
    records, _ = versions
    record = records["alexnet", 1]
    score = SCORES["maxlogit_pnorm"]
    validation = record.validation
    aurocs = [roc_auc_score(validation.correct, [maxlogit_pnorm_by_definition(z, p) for z in validation.logits])
              for p in score.candidates]
    chosen = score.candidates[aurocs.index(max(aurocs))]
    assert score.fit(record) == chosen
    for i, logits in enumerate(record.logits):
        assert record.score("maxlogit_pnorm")[i] == pytest.approx(maxlogit_pnorm_by_definition(list(logits), chosen))
    assert confidence.pnorm_max_logit(np.ones((1, 4)), 2.0).tolist() == [0.0]  # nothing stands out
    record.validation.truth = record.validation.labels.copy()  # never wrong: p cannot be chosen
    assert score.fit(record) == score.fallback == 2.0


def test_dfg_plus_picks_its_form_by_cross_validated_validation_auroc(versions):
    records, _ = versions
    record = records["resnet", 1]
    correct = record.validation.correct
    folds = StratifiedKFold(SCORES["dfg_plus"].folds, shuffle=True, random_state=0)
    quality = {form: cross_val_score(LogisticRegression(), deepfailguard._features(record.validation, form), correct,
                                     cv=folds, scoring="roc_auc").mean() for form in deepfailguard.FORMS}
    best = max(quality.values())
    chosen, model = record.learn("score dfg_plus", SCORES["dfg_plus"].fit)
    assert quality[chosen] == best and chosen == next(f for f in deepfailguard.FORMS if quality[f] == best)
    # the form's features by hand: log distance, then the top softmax raw or as its logit
    top = record.probabilities.max(axis=1)
    raw = {"distance": np.log(record.distances + 1e-6)[:, None], "softmax": np.log(top / (1 - top))[:, None],
           "linear": np.column_stack([np.log(record.distances + 1e-6), top]),
           "logit": np.column_stack([np.log(record.distances + 1e-6), np.log(top / (1 - top))])}
    raw["logit_interaction"] = np.column_stack([raw["logit"], raw["logit"][:, 0] * raw["logit"][:, 1]])
    expected = LogisticRegression().fit(deepfailguard._features(record.validation, chosen), correct)
    np.testing.assert_allclose(record.score("dfg_plus"), expected.predict_proba(raw[chosen])[:, 1], rtol=1e-6)
    assert SCORES["dfg_plus"].probability and ((record.score("dfg_plus") >= 0) & (record.score("dfg_plus") <= 1)).all()


def test_dfg_plus_falls_back_to_dfg_with_too_few_wrong_validation_answers(versions):
    records, _ = versions
    record = records["resnet", 0]
    record.validation.truth = record.validation.labels.copy()
    record.validation.truth[:2] = (record.validation.truth[:2] + 1) % CLASSES  # two wrong: fewer than the folds
    np.testing.assert_array_equal(record.score("dfg_plus"), record.score("dfg"))


@pytest.mark.parametrize("trials", [0, 1, 2, 5, 10, 33, 200])
def test_two_sided_binomial_closed_form_equals_scipy_binomtest(trials):
    for successes in range(trials + 1):
        expected = binomtest(successes, trials, 0.5).pvalue if trials else 1.0
        assert metrics.two_sided_half_p(np.array([successes]), np.array([trials]))[0] == pytest.approx(expected,
                                                                                                      rel=1e-9)


# ---------------------------------------------------------------------------------------------
# methods: explicit loops
# ---------------------------------------------------------------------------------------------

def neighbours_by_loops(validation_features, test_features, k):
    """Indices of the k nearest validation rows of every test row (Euclidean), nearest first."""
    result = []
    for x in test_features:
        distances = [math.dist(x, v) for v in validation_features]
        result.append(sorted(range(len(validation_features)), key=lambda i: distances[i])[:k])
    return result


def vote(labels, weights):
    totals = {}
    for label, weight in zip(labels, weights):
        totals[label] = totals.get(label, 0) + weight
    best = max(totals.values())
    return min(label for label, total in totals.items() if total == best)


def des_by_loops(members, healthy, test_truth_count, k=7):
    """OLA, LCA, KNORA-E and KNORA-U as DESlib defines them, input by input."""
    validation_features = np.concatenate([r.validation.probabilities for r in healthy], axis=1)
    test_features = np.concatenate([r.probabilities for r in healthy], axis=1)
    region = neighbours_by_loops(validation_features, test_features, k)
    truth = healthy[0].validation.truth
    answers = {"ola": [], "lca": [], "knora_e": [], "knora_u": []}
    for j in range(test_truth_count):
        labels = [int(m.labels[j]) for m in members]
        hits = [[bool(m.validation.labels[i] == truth[i]) for i in region[j]] for m in members]
        ola = [sum(h) / k for h in hits]
        answers["ola"].append(labels[ola.index(max(ola))])
        lca = []
        for m, label in zip(members, labels):
            same = [i for i in region[j] if truth[i] == label]
            lca.append(sum(m.validation.labels[i] == truth[i] for i in same) / len(same) if same else 0.0)
        answers["lca"].append(labels[lca.index(max(lca))])
        chosen = []
        for size in range(k, 0, -1):  # KNORA-E: shrink the region until some member is right on all of it
            chosen = [v for v, h in enumerate(hits) if all(h[:size])]
            if chosen:
                break
        chosen = chosen or list(range(len(members)))
        answers["knora_e"].append(vote([labels[v] for v in chosen], [1] * len(chosen)))
        weights = [sum(h) for h in hits]
        answers["knora_u"].append(vote(labels, weights) if sum(weights) else vote(labels, [1] * len(labels)))
    return answers


def predict(name: str, members, context) -> np.ndarray:
    """One registered method's labels for a set, fitted as the evaluation fits it (``evaluation.run_set``)."""
    method = METHODS[name]
    return np.asarray(method.predict(method.fit(members, context), members, context))


def test_dynamic_selection_equals_deslibs_definitions(versions):
    records, truth = versions
    healthy = [records[m, 0] for m in MODELS]
    region = evaluation.region_of(records, "")
    assert region.reference == tuple(MODELS)
    for members in ([records["resnet", 1], records["alexnet", 0]], [records[m, 1] for m in MODELS],
                    [records["densenet", 0], records["resnet", 0], records["alexnet", 1]]):
        context = SetContext(CLASSES, region)
        expected = des_by_loops(members, healthy, len(truth))
        for name in ("ola", "lca", "knora_e", "knora_u"):
            assert list(predict(name, members, context)) == expected[name], name


def test_dynamic_selection_ties_go_to_the_member_with_the_higher_validation_accuracy(versions):
    """With the evaluation's tie rule, OLA and LCA answer as DESlib does but where members tie in competence:
    there the more accurate member on validation answers (DESlib: the first of the pool); KNORA-E and KNORA-U,
    whose ties are between classes, are DESlib's everywhere."""
    records, truth = versions
    healthy = [records[m, 0] for m in MODELS]
    region = evaluation.region_of(records, "")
    changed = 0
    for members in ([records["resnet", 1], records["alexnet", 0]], [records[m, 1] for m in MODELS],
                    [records["resnet", 0], records["alexnet", 1], records["densenet", 0]]):
        context = SetContext(CLASSES, region, selection.preference_by_validation_accuracy(members))
        predictions = {name: predict(name, members, context) for name in ("ola", "lca", "knora_e", "knora_u")}
        expected = des_by_loops(members, healthy, len(truth))
        for name in ("knora_e", "knora_u"):
            assert list(predictions[name]) == expected[name], name
        for name in ("ola", "lca"):
            competence = METHODS[name].fit(members, context)
            for j, (ours, deslib) in enumerate(zip(predictions[name], expected[name])):
                tied = [i for i in range(len(members)) if competence[i, j] == competence[:, j].max()]
                preferred = max(tied, key=lambda i: (members[i].val_acc, -i))
                assert ours == members[preferred].labels[j], (name, j)
                if ours != deslib:
                    assert len(tied) > 1 and members[tied[0]].labels[j] == deslib, (name, j)
                    changed += 1
    assert changed > 0  # the rule decides some answers here


def test_dynamic_selection_region_of_a_shifted_test_set_is_its_own_healthy_weights(versions):
    records, _ = versions
    for model in MODELS:
        records[model, 0].test_set = "bug11"
        records[model, 11] = records.pop((model, 0))
    assert evaluation.region_of(records, "bug11").reference == tuple(MODELS)
    assert evaluation.region_of(records, "") is None


def test_stacking_is_a_logistic_regression_on_the_validation_softmax(versions):
    records, _ = versions
    members = [records["resnet", 1], records["densenet", 0]]
    features = np.concatenate([m.validation.probabilities for m in members], axis=1)
    expected = LogisticRegression(solver="newton-cg").fit(features, members[0].validation.truth)
    test_features = np.concatenate([m.probabilities for m in members], axis=1)
    predictions = evaluation.predict_set(members, SetContext(CLASSES))
    np.testing.assert_array_equal(predictions["stacking"], expected.predict(test_features))
    # a split larger than the cap: a stratified sample of it, the same for every set
    kept = combination.stacking_sample(members[0].validation.truth, 20)
    assert len(kept) == 20 and np.array_equal(kept, combination.stacking_sample(members[0].validation.truth.copy(),
                                                                                20))
    assert set(np.bincount(members[0].validation.truth[kept], minlength=CLASSES)) <= {4, 5, 6}


def negative_log_likelihood(logits, truth):
    """The mean negative log-likelihood of the truth under softmax(logits / T), as a function of log T."""
    def nll(log_t):
        scaled = logits / math.exp(log_t)
        return -np.mean([row[t] - math.log(sum(math.exp(x) for x in row)) for row, t in zip(scaled, truth)])
    return nll


def test_temperature_scaled_soft_voting(versions):
    records, _ = versions
    members = [records["alexnet", 1], records["resnet", 0], records["densenet", 1]]
    grid = np.linspace(-3, 3, 601)
    temperatures = []
    for member in members:
        fitted = combination.fit_temperature(member)
        nll = negative_log_likelihood(member.validation.logits, member.validation.truth)
        assert nll(math.log(fitted)) <= min(nll(g) for g in grid) + 1e-6
        temperatures.append(fitted)
    predictions = evaluation.predict_set(members, SetContext(CLASSES))
    for j in range(len(members[0].labels)):
        mean = np.zeros(CLASSES)
        for member, temperature in zip(members, temperatures):
            row = np.exp(member.logits[j] / temperature)
            mean += row / row.sum() / len(members)
        assert predictions["soft_voting_ts"][j] == int(np.argmax(mean))


def test_no_test_truth_reaches_any_fit(versions, tmp_path):
    """Every method's fitted state and predictions are the same when the test labels are shuffled."""
    records, truth = versions
    members_keys = [("resnet", 1), ("alexnet", 0), ("densenet", 0)]
    seen = []

    def run(test_truth):
        fresh = {key: evaluation.VersionRecord(r.dataset, r.model, r.bug, r.labels, r.distances, r.module, r.test_set,
                                              r.probabilities, r.logits, r.validation, r.costs,
                                              outputs=r.outputs)
                 for key, r in records.items()}
        members = [fresh[key] for key in members_keys]
        context = SetContext(CLASSES, evaluation.region_of(fresh, ""))
        states = {name: method.fit(members, context) for name, method in METHODS.items()}
        rows = evaluation.evaluate_set("TOY", "one", members, test_truth, context)
        seen.append((states, evaluation.predict_set(members, context), [m._cache for m in members], rows))

    run(truth)
    run(np.random.default_rng(0).permutation(truth))
    (states, predictions, caches, rows), (states2, predictions2, caches2, rows2) = seen
    assert set(predictions) == set(METHODS)
    for name in METHODS:
        np.testing.assert_array_equal(predictions[name], predictions2[name], err_msg=name)
        assert_same_state(states[name], states2[name])
    for cache, cache2 in zip(caches, caches2):
        cache, cache2 = without_region_tokens(cache), without_region_tokens(cache2)
        assert cache.keys() == cache2.keys()
        for key in cache:
            assert_same_state(cache[key], cache2[key])
    assert [r["accuracy"] for r in rows] != [r["accuracy"] for r in rows2]  # the truth did change


def without_region_tokens(cache: dict) -> dict:
    """A version's cache with each region's serial number dropped from the keys (each run builds its own)."""
    return {tuple(re.sub(r"region \d+", "region", part) for part in key): value for key, value in cache.items()}


def assert_same_state(a, b):
    if isinstance(a, LogisticRegression):
        np.testing.assert_array_equal(a.coef_, b.coef_)
        np.testing.assert_array_equal(a.intercept_, b.intercept_)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif dataclasses.is_dataclass(a):  # the cross-fitted assessment of a version's validation inputs
        assert_same_state(dataclasses.astuple(a), dataclasses.astuple(b))
    elif isinstance(a, BaseEstimator):  # a fitted covariance or neighbour index: everything it holds
        assert pickle.dumps(a) == pickle.dumps(b)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------
# what a release without validation outputs gets
# ---------------------------------------------------------------------------------------------

def test_methods_needing_validation_outputs_are_skipped_with_one_note(versions, capsys):
    records, truth = versions
    for record in records.values():
        record.validation = None
    evaluated = evaluation.evaluate_datasets({"TOY": records}, {"TOY": {"": truth}}, MODELS, {"TOY": [0, 1]})
    methods = {row["method"] for row in evaluated.rows}
    needing = {name for name, method in METHODS.items() if "validation" in method.needs}
    assert needing and not methods & needing
    assert methods == {name for name, method in METHODS.items() if "validation" not in method.needs}
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert all(name in notes[0] for name in needing) and "main_train_DeepFailGuard.py" in notes[0]
    row = evaluated.failure_rows[0]
    assert row["auroc_rel_u"] is None and row["auroc_dfg_plus"] is None and row["auroc_doctor"] is not None


def test_validation_outputs_of_different_splits_are_refused(versions):
    records, truth = versions
    records["alexnet", 0].validation.truth = records["alexnet", 0].validation.truth[::-1].copy()
    with pytest.raises(UsageError, match="different validation splits"):
        evaluation.evaluate_datasets({"TOY": records}, {"TOY": {"": truth}}, MODELS, {"TOY": [0, 1]})


# ---------------------------------------------------------------------------------------------
# the pipeline keeps what the methods need, and a method added in one file shows up everywhere
# ---------------------------------------------------------------------------------------------

def test_fit_keeps_the_validation_outputs_and_cache_the_test_logits(pipeline):
    import DatasetManager

    data = DatasetManager.create_dataset("DIGITS", data_root=pipeline.data).limited(20)
    for model, bug in (("squeezenet", 0), ("squeezenet", 1), ("densenet", 0), ("squeezenet", 10)):
        answers = caches.read_validation_outputs(pipeline.info, model, "DIGITS", bug, 10)
        assert answers is not None, (model, bug)
        np.testing.assert_array_equal(answers.truth, data.y_val.numpy())
        np.testing.assert_array_equal(answers.labels, answers.logits.argmax(axis=1))
        np.testing.assert_allclose(answers.probabilities, np.exp(answers.logits) / np.exp(answers.logits).sum(
            axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
        kde_points = sum(GaussianKDE.load(p).n for p in layout.find_kde_files(pipeline.info, model, "DIGITS", bug))
        assert kde_points == len(answers.distances)
        cached = caches.read_version_cache(pipeline.info, model, "DIGITS", bug, 10)
        np.testing.assert_array_equal(cached.labels, cached.logits.argmax(axis=1))
    # a test-data fault's version answers validation with the healthy weights: the same files
    assert layout.validation_path(pipeline.info, "squeezenet", "DIGITS", 10, "logits") == \
        layout.validation_path(pipeline.info, "squeezenet", "DIGITS", 0, "logits")


def test_a_score_and_a_method_added_in_one_file_reach_every_output(pipeline_copy, capsys, restore_registries,
                                                                   monkeypatch):
    from evaluation import figures as plotting

    @selection.register_score
    class Shortfall(selection.Score):
        """A made-up probability: 1 − the distance to the boundary, clipped at ``floor``."""

        name = "shortfall"
        probability = True
        floor: float = 0.0

        def compute(self, state, answers, version):
            return np.clip(1.0 - answers.distances, self.floor, 1.0)

    @selection.register_method
    class FirstMember(selection.Method):
        name = "first_member"

        def predict(self, state, members, context):
            return members[0].labels

    # one class, registered again under other names with other values
    selection.register_score(Shortfall, name="shortfall_half", floor=0.5)
    selection.register_method(dynamic.KnoraEliminate, name="knora_e15", k=15)
    with pytest.raises(TypeError, match="no parameter.*kk.*its parameters: k"):
        selection.register_method(dynamic.KnoraEliminate, name="knora_e_bad", kk=15)
    with pytest.raises(ValueError, match="registered twice"):
        selection.register_method(dynamic.KnoraEliminate, name="knora_e", k=15)
    legends = []
    draw = plotting.atomic_save_figure

    def keep_legend(path, figure):
        legends.extend(text.get_text() for axis in figure.axes if axis.get_legend()
                       for text in axis.get_legend().get_texts())
        draw(path, figure)

    monkeypatch.setattr(plotting, "atomic_save_figure", keep_legend)
    ws = pipeline_copy
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "added"))
    assert result.returncode == 0, result.stderr
    import pandas as pd

    results = pd.read_csv(ws.root / "added" / layout.RESULTS_CSV)
    summary = pd.read_csv(ws.root / "added" / layout.SUMMARY_CSV)
    failure = pd.read_csv(ws.root / "added" / layout.FAILURE_PREDICTION_CSV)
    for name in ("shortfall", "shortfall_half", "first_member", "knora_e15"):
        assert name in set(results["method"]) and name in set(summary["method"]) and name in legends
    for name in ("shortfall", "shortfall_half"):
        assert {f"auroc_{name}", f"aurc_{name}", f"ece_{name}", f"brier_{name}"} <= set(failure.columns)
    recorded = json.loads((ws.root / "added" / layout.METHODS_JSON).read_text())
    assert recorded["scores"]["shortfall_half"]["parameters"] == {"floor": 0.5}
    assert recorded["scores"]["shortfall"]["parameters"] == {"floor": 0.0}
    assert recorded["methods"]["knora_e15"] == dict(recorded["methods"]["knora_e"], parameters={"k": 15})
    assert recorded["methods"]["first_member"]["class"].endswith("FirstMember")
    first = results[results["method"] == "first_member"]
    assert (first["accuracy"] == first["version_accuracies"].str.split("-").str[0].astype(float)).all()
    assert "first_member" in result.stdout


def test_failure_prediction_columns_come_from_the_registry(versions):
    records, truth = versions
    rows = evaluation.failure_prediction_rows(records, {"": truth})
    for row in rows:
        record = records[row["model"], row["bug_id"]]
        correct = record.labels == truth
        for name, score in SCORES.items():
            assert row[f"auroc_{name}"] == pytest.approx(roc_auc_score(correct, record.score(name)))
            assert row[f"aurc_{name}"] == pytest.approx(metrics.aurc(record.score(name), correct))
            assert row[f"augrc_{name}"] == pytest.approx(metrics.augrc(record.score(name), correct))
            assert row[f"eaurc_{name}"] == pytest.approx(metrics.eaurc(record.score(name), correct))
            assert (f"ece_{name}" in row) == score.probability == (f"brier_{name}" in row)
    assert confidence.RelativeUncertainty.name in SCORES and METHODS["ola"].k == 7


@pytest.mark.parametrize("defect", ["nan-logits", "truncated-distances", "other-split", "fewer-inputs"])
def test_damaged_validation_outputs_are_one_line_errors(pipeline_copy, capsys, defect):
    from conftest import assert_usage_error

    ws = pipeline_copy
    path = layout.validation_path(ws.info, "squeezenet", "DIGITS", 1, {"nan-logits": "logits",
                                                                       "truncated-distances": "distances",
                                                                       "other-split": "ground_truth",
                                                                       "fewer-inputs": "probabilities"}[defect])
    array = np.load(path)
    path.unlink()
    if defect == "truncated-distances":
        path.write_bytes(b"\x93NUMPY truncated")
    else:
        np.save(path, {"nan-logits": lambda a: a * np.nan, "other-split": lambda a: a[::-1].copy(),
                       "fewer-inputs": lambda a: a[:-1]}[defect](array))
    result = run_in_process(capsys, "evaluate", *ws.argv("evaluate", "--output", ws.root / "damaged"))
    fragments = {"nan-logits": [path], "truncated-distances": [path], "other-split": ["different validation splits"],
                 "fewer-inputs": ["squeezenet_DIGITS_bug1", "main_train_DeepFailGuard.py"]}[defect]
    assert_usage_error(result, *fragments)
    assert not (ws.root / "damaged" / layout.RESULTS_CSV).exists()


def test_accuracy_weighted_voting_by_loops(versions):
    records, _ = versions
    members = [records["resnet", 1], records["alexnet", 0], records["densenet", 1]]
    weights = [math.log((CLASSES - 1) * m.val_acc / (1 - m.val_acc)) for m in members]
    predictions = evaluation.predict_set(members, SetContext(CLASSES))
    expected = [vote([int(m.labels[j]) for m in members], weights) for j in range(len(members[0].labels))]
    assert list(predictions["weighted_voting"]) == expected
