"""Reproducing the paper (paper.py; main_test_DeepFailGuard_from_cached.py --configurations paper,
--posterior paper): the published configurations evaluated and compared, the paper's arithmetic to the
last digit (checked against an independent re-implementation of its per-input loop), a release read
with suspicion, a partial release."""

from __future__ import annotations

import csv
import math
import pickle
import subprocess

import numpy as np
import pytest
from conftest import assert_usage_error, run_in_process, write_fake_cache
from scipy.stats import gaussian_kde, mode

from DeepFailGuard import DeepFailGuard, DeepFailGuardModule
from evaluation import paper
from failure_model.kde import GaussianKDE
from storage import layout

MODELS = ["resnet", "alexnet", "densenet", "vgg16", "squeezenet"]
VERSIONS = [(model, 0) for model in MODELS] + [("resnet", 1)]
N_TEST = 80
ALL_FAR = range(0, 10)  # every version's distance far out: both densities exactly 0 everywhere
ONE_FAR = range(10, 16)  # one version's distance far out


def paper_val_acc(model: str, bug: int) -> float:
    """The validation accuracy the paper's code uses: its percent figure divided by 100."""
    with open(layout.PAPER_ACCURACIES, newline="") as handle:
        for row in csv.DictReader(handle):
            if (row["dataset"], row["model"], int(row["bug_id"])) == ("CIFAR10", model, bug):
                return float(row["val_acc_percent"]) / 100
    raise KeyError((model, bug))


def write_cache(info, seed: int = 11) -> dict:
    """A release in the paper's layout: CIFAR10 distances (float64, as the paper saved them), labels,
    ground truth, pickled ``gaussian_kde`` failure models. Returns the versions' (labels, distances, KDEs)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, N_TEST)
    far_version = rng.integers(0, len(VERSIONS), len(ONE_FAR))
    versions = {}
    for index, (model, bug) in enumerate(VERSIONS):
        right = rng.random(N_TEST) < rng.uniform(0.55, 0.8)
        labels = np.where(right, truth, (truth + rng.integers(1, 10, N_TEST)) % 10)
        distances = np.clip(np.where(right, rng.gamma(6.0, 0.05, N_TEST), rng.gamma(3.0, 0.04, N_TEST)), 0.03, 0.6)
        distances[list(ALL_FAR)] = rng.uniform(3.0, 40.0, len(ALL_FAR))
        for i, v in zip(ONE_FAR, far_version):
            if v == index:
                distances[i] = rng.uniform(3.0, 40.0)
        kdes = (gaussian_kde(rng.gamma(6.0, 0.05, int(rng.integers(40, 90)))),
                gaussian_kde(rng.gamma(3.0, 0.04, int(rng.integers(15, 40)))))
        versions[(model, bug)] = (labels, distances.astype(np.float64), *kdes)
    write_fake_cache(info, "CIFAR10", truth, versions)
    return {"truth": truth, "versions": versions}


# ---------------------------------------------------------------------------------------------
# an independent re-implementation of the paper's evaluation loop (per input, as it is written)
# ---------------------------------------------------------------------------------------------

def reference_scores(distances, correct_kde, wrong_kde, a, predictor: str) -> list:
    scores = []
    for d in distances:
        if predictor == "Val_Acc_Only":
            scores.append(a)
            continue
        good, bad = correct_kde(d), wrong_kde(d)  # SciPy, one input per call
        if predictor == "Distance_Only":
            scores.append(good - bad)
            continue
        good, bad = good * a, bad * (1 - a)
        if good + bad == 0:
            if good == 0:
                good = np.log(1 + d) * a
            if bad == 0:
                bad = 1 - good
        scores.append(good / (good + bad))
    return scores


def flat(scores) -> np.ndarray:
    """The loop's scores (one-element arrays, or scalars where the fallback replaced them) as one array."""
    return np.array([float(np.asarray(score).reshape(-1)[0]) for score in scores])


def reference_choices(score_lists) -> list[int]:
    """Per input, the first version with the highest score (``list.index(max(...))``)."""
    choices = []
    for i in range(len(score_lists[0])):
        scores = [version_scores[i] for version_scores in score_lists]
        choices.append(scores.index(max(scores)))
    return choices


def reference_log_choices(members, written) -> np.ndarray:
    """The default posterior's choices, from SciPy's log densities (not failure_model/kde.py)."""
    posteriors = []
    for member in members:
        _, distances, correct_kde, wrong_kde = written["versions"][member]
        a = paper_val_acc(*member)
        log_correct = math.log(a) + correct_kde.logpdf(distances)
        log_wrong = math.log1p(-a) + wrong_kde.logpdf(distances)
        posteriors.append(np.exp(log_correct - np.logaddexp(log_correct, log_wrong)))
    return np.argmax(np.stack(posteriors), axis=0)


def reference_figures(members, written, predictor: str) -> dict:
    truth = written["truth"]
    labels = [written["versions"][m][0] for m in members]
    scores = [reference_scores(written["versions"][m][1], *written["versions"][m][2:], paper_val_acc(*m), predictor)
              for m in members]
    choices = reference_choices(scores)
    outputs = np.array([labels[k][i] for i, k in enumerate(choices)])
    voting = mode(np.array(labels), axis=0)[0]  # ties: the smallest label
    return {"accuracy": float(np.mean(outputs == truth)), "voting": float(np.mean(voting == truth)),
            "upper": float(np.mean(np.any(np.array(labels) == truth, axis=0))), "choices": np.array(choices)}


PUBLISHED = [  # (predictor, members): version order as published, not the grid's
    ("full", (("resnet", 0), ("alexnet", 0))),
    ("full", (("densenet", 0), ("resnet", 0), ("vgg16", 0))),
    ("full", (("squeezenet", 0), ("densenet", 0), ("alexnet", 0), ("resnet", 0))),
    ("full", (("vgg16", 0), ("squeezenet", 0), ("resnet", 0), ("alexnet", 0), ("densenet", 0))),
    ("full", (("resnet", 1), ("alexnet", 0), ("densenet", 0))),
    ("Distance_Only", (("densenet", 0), ("resnet", 0), ("vgg16", 0))),
    ("Distance_Only", (("vgg16", 0), ("squeezenet", 0), ("resnet", 0), ("alexnet", 0), ("densenet", 0))),
    ("Val_Acc_Only", (("densenet", 0), ("resnet", 0), ("vgg16", 0))),
    ("Val_Acc_Only", (("alexnet", 0), ("squeezenet", 0), ("resnet", 0))),
]
ABSENT = [("CIFAR10", (("alexnet", 2), ("vgg16", 2))), ("ATS", (("resnet", 0), ("alexnet", 0)))]


def write_published(path, written) -> list[dict]:
    """A table in paper_results.csv's format whose figures are the reference loop's (full precision),
    plus configurations the cache does not hold."""
    rows = []
    for predictor, members in PUBLISHED:
        figures = reference_figures(members, written, predictor)
        rows.append({"predictor": predictor, "dataset": "CIFAR10", "members": members, **figures})
    for dataset, members in ABSENT:
        rows.append({"predictor": "full", "dataset": dataset, "members": members, "accuracy": 0.5, "voting": 0.5,
                     "upper": 0.6})
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(paper.PUBLISHED_COLUMNS)
        for row in rows:
            out.writerow([row["predictor"], row["dataset"], len(row["members"]),
                          "-".join(m for m, _ in row["members"]), "-".join(str(b) for _, b in row["members"]),
                          repr(row["accuracy"]), repr(row["voting"]), repr(row["upper"])])
    return rows


def run(capsys, *args) -> subprocess.CompletedProcess:
    """The cached evaluation's entry point under the exit-status contract, in this process."""
    return run_in_process(capsys, "evaluate", *args)


def agreement(stdout: str, predictor: str) -> list[str]:
    """The comparison summary's line of a predictor: method, rows, agreeing method/voting/upper figures."""
    lines = [line.split() for line in stdout.splitlines() if line.startswith(predictor + " ")]
    assert len(lines) == 1, stdout
    return lines[0][1:6]


def read_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    written = write_cache(root / "info")
    published = write_published(root / "published.csv", written)
    return root, written, published


def flags(root, output, *extra):
    return ["--preset", "paper", "--paper-results", root / "published.csv", "--info-root", root / "info",
            "--model-root", root / "model", "--output", output, "--quiet", *extra]


# ---------------------------------------------------------------------------------------------
# the paper's arithmetic, digit for digit
# ---------------------------------------------------------------------------------------------

def test_release_exercises_the_paper_arithmetic(release):
    """The fabricated release has what makes the paper's arithmetic differ: both densities exactly 0 (its
    fallback), fallback scores above 1, and inputs where the two posteriors choose differently."""
    _, written, _ = release
    for member, (_, distances, correct_kde, wrong_kde) in written["versions"].items():
        far = distances[list(ALL_FAR)]
        assert all(correct_kde(d)[0] == 0.0 and wrong_kde(d)[0] == 0.0 for d in far), member
    a = paper_val_acc("resnet", 0)
    assert max(np.log(1 + written["versions"][("resnet", 0)][1][list(ALL_FAR)]) * a) > 1
    differing = [int((reference_figures(m, written, "full")["choices"] != reference_log_choices(m, written)).sum())
                 for p, m in PUBLISHED if p == "full"]
    assert sum(differing) > 0 and min(differing) >= 0


def test_paper_posterior_equals_the_reference_loop_to_the_last_digit(release):
    root, written, _ = release
    for member, (_, distances, correct_kde, wrong_kde) in written["versions"].items():
        module = DeepFailGuardModule.of_version(None, root / "info", root / "model", "CIFAR10", *member)
        assert module.val_acc == paper_val_acc(*member)  # the shipped percent figure / 100, to the last bit
        assessment = paper.paper_assessment(module, distances)
        expected = reference_scores(distances, correct_kde, wrong_kde, module.val_acc, "full")
        np.testing.assert_array_equal(assessment.confidence, flat(expected))
        margin = reference_scores(distances, correct_kde, wrong_kde, module.val_acc, "Distance_Only")
        np.testing.assert_array_equal(assessment.margin, flat(margin))
    # the decisions, and which of them the default posterior makes differently
    for predictor, members in PUBLISHED:
        if predictor != "full":
            continue
        modules = [DeepFailGuardModule.of_version(None, root / "info", root / "model", "CIFAR10", *m) for m in members]
        labels = np.stack([written["versions"][m][0] for m in members])
        distances = [written["versions"][m][1] for m in members]
        paper_scores = np.stack([paper.paper_assessment(mod, d).confidence for mod, d in zip(modules, distances)])
        log_scores = np.stack([mod.log_assessment(d).confidence for mod, d in zip(modules, distances)])
        reference = reference_figures(members, written, "full")["choices"]
        np.testing.assert_array_equal(DeepFailGuard.select(paper_scores, labels)[1], reference)
        np.testing.assert_array_equal(np.flatnonzero(DeepFailGuard.select(log_scores, labels)[1] != reference),
                                      np.flatnonzero(reference_log_choices(members, written) != reference))


def test_densities_must_be_scipys_own():
    """exp(logpdf) agrees with SciPy's pdf to ~1e-13 but not to the last digit, and underflows differently:
    SciPy multiplies each kernel term by its normalisation after exp, so a term below exp(-745) is 0 even
    where the density (here ~100 times larger) is representable. The paper's fallback fires on SciPy's 0."""
    rng = np.random.default_rng(5)
    points = rng.normal(0.3, 0.001, 4)
    reference = gaussian_kde(points)
    kde = GaussianKDE.load(_pickled(reference))
    width = float(reference.cho_cov[0, 0])
    scale = 1 / (math.sqrt(2 * math.pi) * width) / len(points)  # each term's weight times normalisation
    assert scale > 20
    x = points.max() + width * math.sqrt(2 * (745.2 + 0.5 * math.log(scale)))  # every term underflows in SciPy
    assert reference(x)[0] == 0.0 and paper.paper_densities(kde, np.array([x]))[0] == 0.0
    assert kde.pdf(np.array([x]))[0] > 0.0  # exact in log space: a subnormal, not 0
    with_ours = paper.paper_posterior(kde.pdf(np.array([x])), np.zeros(1), np.array([x]), 0.8)
    with_scipys = paper.paper_posterior(paper.paper_densities(kde, np.array([x])), np.zeros(1), np.array([x]), 0.8)
    assert with_ours[0] == 1.0 and with_scipys[0] == pytest.approx(math.log(1 + x) * 0.8)  # the fallback
    kde = GaussianKDE.load(_pickled(gaussian_kde(rng.gamma(6.0, 0.05, 60))))
    ordinary = rng.uniform(0.05, 0.6, 300)  # densities far from underflow
    ours, scipys = kde.pdf(ordinary), paper.paper_densities(kde, ordinary)
    assert scipys.min() > 1e-30
    np.testing.assert_allclose(ours, scipys, rtol=1e-11)
    assert (ours != scipys).any()  # close, not equal: the paper's decisions need SciPy's own numbers


def _pickled(kde) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix=".pkl", delete=False)
    handle.write(pickle.dumps(kde))
    handle.close()
    return handle.name


def test_scipy_kde_keeps_the_pickles_kernel_width():
    """A pickled gaussian_kde evaluates exactly as the original, one input per call, also where
    sqrt(covariance) is not SciPy's Cholesky factor to the last bit."""
    rng = np.random.default_rng(2)
    widths_differ = 0
    for _ in range(12):
        original = gaussian_kde(rng.gamma(2.0, 0.3, int(rng.integers(5, 200))))
        widths_differ += math.sqrt(original.covariance[0, 0]) != original.cho_cov[0, 0]
        rebuilt = paper.scipy_kde(GaussianKDE.load(_pickled(original)))
        queries = np.concatenate([rng.gamma(2.0, 0.5, 50), [0.0, 1e-9, 50.0]])
        assert [rebuilt(q)[0] for q in queries] == [original(q)[0] for q in queries]
    assert widths_differ  # the case that needs cho_cov kept


# ---------------------------------------------------------------------------------------------
# the published configurations, compared, through the script
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_paper_posterior_reproduces_every_published_figure(release, tmp_path, capsys):
    root, written, published = release
    result = run(capsys, *flags(root, tmp_path / "out", "--posterior", "paper"))
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "out" / layout.PAPER_COMPARISON_CSV)
    assert [(r["predictor"], r["dataset"], r["models"], r["bug_ids"]) for r in rows] == [
        (p["predictor"], p["dataset"], "-".join(m for m, _ in p["members"]), "-".join(str(b) for _, b in p["members"]))
        for p in published]  # one row per published row, in its order, members in version order
    for row, expected in zip(rows, published):
        if (row["dataset"], tuple(row["bug_ids"].split("-"))) in (("CIFAR10", ("2", "2")), ("ATS", ("0", "0"))):
            assert row["status"] == "not in cache" and row["our_accuracy"] == ""
            continue
        assert row["status"] == "ok" and row["posterior"] == "paper"
        for ours, theirs, diff, key in (("our_accuracy", "paper_accuracy", "accuracy_diff", "accuracy"),
                                        ("our_voting", "paper_voting", "voting_diff", "voting"),
                                        ("our_upper_limit", "paper_upper_limit", "upper_limit_diff", "upper")):
            assert float(row[theirs]) == pytest.approx(expected[key], abs=1e-6)
            assert float(row[ours]) == pytest.approx(expected[key], abs=1e-9) and float(row[diff]) == 0.0
        members = expected["members"]
        predicted = int((reference_figures(members, written, "full")["choices"]
                         != reference_log_choices(members, written)).sum())
        assert int(row["decisions_differing"]) == predicted
    assert agreement(result.stdout, "full") == ["dfg", "5", "5/5", "5/5", "5/5"]
    assert agreement(result.stdout, "Distance_Only") == ["distance_only", "2", "2/2", "2/2", "2/2"]
    assert agreement(result.stdout, "Val_Acc_Only") == ["val_acc_only", "2", "2/2", "2/2", "2/2"]
    assert "largest disagreements (ours - paper): none" in result.stdout
    assert "disagrees" not in result.stdout
    assert "2 not in cache" in result.stdout
    # the usual tables, for the configurations evaluated (each once)
    results = read_rows(tmp_path / "out" / "results.csv")
    assert len([r for r in results if r["method"] == "dfg"]) == len({(r["models"], r["bug_ids"]) for r in results}) == 6
    assert {r["setting"] for r in results} == {"healthy", "one"}
    assert (tmp_path / "out" / "summary.csv").is_file() and (tmp_path / "out" / "failure_prediction.csv").is_file()
    assert "ATS: 0 version(s) available" in result.stderr  # a dataset with nothing: a note


def test_default_posterior_differs_where_predicted(release, tmp_path, capsys):
    root, written, published = release
    result = run(capsys, *flags(root, tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "out" / layout.PAPER_COMPARISON_CSV)
    full = [(row, p) for row, p in zip(rows, published) if row["status"] == "ok" and row["predictor"] == "full"]
    for row, expected in full:
        members = expected["members"]
        log_choices = reference_log_choices(members, written)
        labels = np.stack([written["versions"][m][0] for m in members])
        log_accuracy = float(np.mean(labels[log_choices, np.arange(N_TEST)] == written["truth"]))
        assert row["posterior"] == "log"
        assert float(row["our_accuracy"]) == pytest.approx(log_accuracy, abs=1e-6)
        assert float(row["accuracy_diff"]) == pytest.approx(log_accuracy - expected["accuracy"], abs=1e-6)
        assert int(row["decisions_differing"]) == int((expected["choices"] != log_choices).sum())
        assert float(row["voting_diff"]) == 0.0 and float(row["upper_limit_diff"]) == 0.0
    agreeing = sum(abs(float(row["accuracy_diff"])) < paper.AGREEMENT for row, _ in full)
    assert agreement(result.stdout, "full") == ["dfg", "5", f"{agreeing}/5", "5/5", "5/5"]
    assert agreeing < 5  # the default posterior does not reproduce the paper's figures here


def test_missing_configurations_and_a_foreign_cache(release, tmp_path, capsys):
    """Rows whose versions are not cached say so (no crash); voting that disagrees is called out."""
    root, written, published = release
    table = root / "published.csv"
    lines = table.read_text().splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    first[header.index("voting_acc")] = "0.1234"  # the paper's voting on "another cache"
    altered = tmp_path / "altered.csv"
    altered.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    (tmp_path / "info").symlink_to(root / "info")
    result = run(capsys, "--preset", "paper", "--paper-results", altered, "--info-root", tmp_path / "info",
                 "--model-root", tmp_path / "model", "--output", tmp_path / "out", "--quiet", "--models", "resnet",
                 "alexnet", "densenet", "vgg16", "squeezenet")
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "out" / layout.PAPER_COMPARISON_CSV)
    absent = [r for r in rows if r["status"] == "not in cache"]
    assert [(r["dataset"], r["missing"]) for r in absent] == [("CIFAR10", "alexnet/bug2 vgg16/bug2"),
                                                              ("ATS", "resnet/bug0 alexnet/bug0")]
    assert "note: voting disagrees on 1 configuration(s): a different cache than the paper's" in result.stdout
    assert "the upper limit disagrees" not in result.stdout
    assert "full CIFAR10 resnet-alexnet 0-0: method" in result.stdout  # among the largest disagreements


# ---------------------------------------------------------------------------------------------
# a release read with suspicion, a partial release
# ---------------------------------------------------------------------------------------------

def test_negative_distance_in_a_paper_cache_is_refused(tmp_path, capsys):
    info = tmp_path / "info"
    write_cache(info)
    path = layout.cache_path(info, "alexnet", "CIFAR10", 0, "distances")
    distances = np.load(path)
    distances[7] = -0.25
    np.save(path, distances)
    result = run(capsys, "--datasets", "CIFAR10", "--models", *MODELS, "--bugs", "0", "--info-root", info,
                 "--model-root", tmp_path / "model", "--output", tmp_path / "out", "--quiet")
    assert_usage_error(result, "1 negative distance(s)", str(path))
    assert not list((tmp_path / "out").rglob("*.csv"))


@pytest.mark.slow
def test_partial_release_evaluates_what_is_there(release, tmp_path, capsys):
    """--preset paper with the shipped table on a release that holds only some CIFAR10 versions: the other
    datasets are notes, the published CIFAR10 configurations it holds are evaluated; with nothing, exit 2."""
    root, _, _ = release
    common = ["--preset", "paper", "--model-root", tmp_path / "model", "--quiet"]
    result = run(capsys, *common, "--info-root", root / "info", "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "note: skipped ATS: 0 version(s) available" in result.stderr
    assert "error" not in result.stderr
    rows = read_rows(tmp_path / "out" / layout.PAPER_COMPARISON_CSV)
    assert len(rows) == 887 and {r["status"] for r in rows} == {"ok", "not in cache"}
    assert {r["dataset"] for r in rows if r["status"] == "ok"} == {"CIFAR10"}
    # the grid on the same partial release: also notes, not errors
    result = run(capsys, *common, "--configurations", "grid", "--info-root", root / "info", "--output",
                 tmp_path / "grid")
    assert result.returncode == 0, result.stderr
    assert "note: skipped GTSRB: 0 version(s) available" in result.stderr
    assert {r["dataset"] for r in read_rows(tmp_path / "grid" / "results.csv")} == {"CIFAR10"}
    # nothing at all
    (tmp_path / "empty").mkdir()
    result = run(capsys, *common, "--info-root", tmp_path / "empty", "--output", tmp_path / "none")
    assert_usage_error(result, "none of the 887 published configurations")
    result = run(capsys, *common, "--configurations", "grid", "--info-root", tmp_path / "empty", "--output",
                 tmp_path / "none")
    assert_usage_error(result, "no deepfool test cache of the clean test set (none) for any requested version",
                       "main_cache_test_distances.py")
    assert not list((tmp_path / "none").rglob("*.csv"))
