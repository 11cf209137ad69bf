"""Benchmark: the cached evaluation over a paper-sized synthetic grid, against the paper's way.

Synthetic cache: 10,000 test inputs, 5 architectures, 13 fault settings (0-12), each version's
KDEs fitted on 10,000 validation distances, its validation outputs (labels, softmax, logits, distances)
kept for the methods that learn from them. Ours computes every registered score once per version
and evaluates every registered method on every set of versions (the cost of each is printed). The
paper's way recomputes P(correct) for every (version, set) pair, calling each ``gaussian_kde`` once
per input; it is timed on a sample of pairs and extrapolated to the grid (running it in full takes
hours). Decisions of both are compared on whole sets, wherever the paper's densities do not
underflow to 0/0.

First, the log-density alone: ``GaussianKDE.logpdf`` (failure_model/kde.py's block expansion) against the obvious
replacement, one vectorised ``scipy.stats.gaussian_kde(points, bw_method=...).logpdf(queries)`` call
with the same points, weights and bandwidth, on the same queries in the same process (median of
3 runs each), at the grid's size (KDE points × test inputs) and at 1,000 × 1,000.

    python benchmarks/bench_evaluation.py [--inputs 10000] [--kde-points 10000] [--paper-sets 2] [--logpdf-only]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluation  # noqa: E402
from DeepFailGuard import DeepFailGuard, DeepFailGuardModule  # noqa: E402
from failure_model.kde import GaussianKDE  # noqa: E402
from pipeline import flags  # noqa: E402
from selection import METHODS, SCORES  # noqa: E402
from storage import (
    caches,  # noqa: E402
    layout,  # noqa: E402
)

MODELS = ["resnet", "alexnet", "densenet", "vgg16", "squeezenet"]
NUM_CLASSES = 10


def synthetic_answers(rng, accuracy: float, truth: np.ndarray) -> caches.CachedAnswers:
    """Answers whose wrong ones sit closer to the decision boundary and carry a flatter softmax, as real ones do."""
    n = len(truth)
    correct = rng.random(n) < accuracy
    labels = np.where(correct, truth, (truth + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES)
    distances = np.where(correct, rng.gamma(4.0, 0.25, n), rng.gamma(1.5, 0.2, n))
    logits = rng.normal(0.0, 1.0, (n, NUM_CLASSES))
    logits[np.arange(n), labels] += np.where(correct, rng.gamma(6.0, 0.6, n), rng.gamma(2.0, 0.6, n))
    logits = logits.astype(np.float32)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return caches.CachedAnswers(logits.argmax(axis=1), distances, probabilities, logits, None)


def synthetic_version(rng, model: str, bug: int, truth: np.ndarray, validation_truth: np.ndarray, folder: Path):
    """A version with its KDEs fitted on its validation distances, and its test and validation answers."""
    accuracy = rng.uniform(0.6, 0.95)
    validation = synthetic_answers(rng, accuracy, validation_truth)
    validation.truth = validation_truth
    val_correct = validation.correct
    correct_path, wrong_path = folder / f"{model}_{bug}_correct.npz", folder / f"{model}_{bug}_wrong.npz"
    GaussianKDE.fit(validation.distances[val_correct]).save(correct_path)
    GaussianKDE.fit(validation.distances[~val_correct]).save(wrong_path)
    test = synthetic_answers(rng, accuracy, truth)
    module = DeepFailGuardModule(None, correct_path, wrong_path, float(val_correct.mean()), name=f"{model}_bug{bug}")
    return evaluation.VersionRecord("SYNTHETIC", model, bug, test.labels, test.distances, module,
                                   layout.test_set_of(bug), test.probabilities, test.logits, validation)


def paper_confidence(record: evaluation.VersionRecord) -> tuple[np.ndarray, np.ndarray]:
    """The paper's way: SciPy KDE objects called once per input; returns P(correct) and an underflow mask."""
    from scipy.stats import gaussian_kde

    correct_kde, wrong_kde = record.module.correct_kde, record.module.wrong_kde
    scipy_correct, scipy_wrong = gaussian_kde(correct_kde.points), gaussian_kde(wrong_kde.points)
    a = record.val_acc
    probabilities, underflow = np.empty(len(record.distances)), np.zeros(len(record.distances), dtype=bool)
    for i, distance in enumerate(record.distances):
        f_correct, f_wrong = scipy_correct(distance)[0], scipy_wrong(distance)[0]
        denominator = a * f_correct + (1 - a) * f_wrong
        underflow[i] = denominator == 0
        probabilities[i] = a * f_correct / denominator if denominator > 0 else a
    return probabilities, underflow


def scipy_twin(kde: GaussianKDE):
    """SciPy's ``gaussian_kde`` on the same points and weights, with exactly ``kde``'s bandwidth (SciPy's
    ``bw_method`` scalar is the factor that multiplies the data's standard deviation)."""
    from scipy.stats import gaussian_kde

    spread = math.sqrt(float(np.cov(kde.points, aweights=kde.weights)))
    return gaussian_kde(kde.points, bw_method=kde.bandwidth / spread, weights=kde.weights)


def logpdf_row(rng, n_points: int, n_queries: int, repeats: int = 3) -> None:
    """Ours against one vectorised SciPy ``logpdf`` call: same KDE, same queries, medians of ``repeats``."""
    points = rng.gamma(4.0, 0.25, n_points)  # validation distances of correct answers, as in the grid
    kde = GaussianKDE.fit(points)
    correct = rng.random(n_queries) < 0.8
    queries = np.where(correct, rng.gamma(4.0, 0.25, n_queries), rng.gamma(1.5, 0.2, n_queries))
    kde.logpdf(queries[:10]), scipy_twin(kde).logpdf(queries[:10])  # one-off set-up (imports, threads) untimed
    ours_seconds, scipy_seconds = [], []
    for _ in range(repeats):  # interleaved, so that the load of a shared machine falls on both alike
        started = time.perf_counter()
        ours = kde.logpdf(queries)
        ours_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        theirs = scipy_twin(kde).logpdf(queries)  # built inside the timing: a replacement builds it too
        scipy_seconds.append(time.perf_counter() - started)
    bandwidth_gap = abs(math.sqrt(scipy_twin(kde).covariance[0, 0]) / kde.bandwidth - 1)
    ours_median, scipy_median = statistics.median(ours_seconds), statistics.median(scipy_seconds)
    print(f"logpdf, {n_points} points x {n_queries} queries: ours {1e3 * ours_median:.1f} ms, "
          f"SciPy gaussian_kde.logpdf {1e3 * scipy_median:.1f} ms (medians of {repeats}); "
          f"SciPy/ours = {scipy_median / ours_median:.1f}x; "
          f"max |difference| of log densities {np.max(np.abs(ours - theirs)):.2e} "
          f"(bandwidths agree to {bandwidth_gap:.0e}; torch threads {torch.get_num_threads()})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=flags.positive_int, default=10_000)
    parser.add_argument("--kde-points", type=flags.positive_int, default=10_000)
    parser.add_argument("--paper-sets", type=flags.positive_int, default=2,
                        help="two-version sets evaluated the paper's way (timed, and decisions compared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logpdf-only", action="store_true", help="only the log-density rows (ours vs SciPy)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for n_points, n_queries in [(1_000, 1_000), (args.kde_points, args.inputs)]:
        # a generator of its own, so that the grid below is the same with or without these rows
        logpdf_row(np.random.default_rng([args.seed, n_points, n_queries]), n_points, n_queries)
    if args.logpdf_only:
        return 0
    bugs = list(range(13))
    truths = {"": rng.integers(0, NUM_CLASSES, args.inputs)}
    truths.update({f"bug{b}": rng.integers(0, NUM_CLASSES, args.inputs) for b in (11, 12)})
    validation_truth = rng.integers(0, NUM_CLASSES, args.kde_points)
    with tempfile.TemporaryDirectory() as folder:
        records = {(m, b): synthetic_version(rng, m, b, truths[layout.test_set_of(b)], validation_truth, Path(folder))
                   for m in MODELS for b in bugs}
    sets = evaluation.version_sets(MODELS, bugs)
    pairs = sum(len(members) for _, members in sets)
    print(f"synthetic grid: {len(records)} versions, {args.inputs} test inputs, {args.kde_points} validation inputs "
          f"per version (KDEs on their distances), {len(sets)} version sets, {pairs} (version, set) pairs, "
          f"{len(METHODS)} methods, {len(SCORES)} scores")

    started = time.perf_counter()
    score_seconds = {}
    for name in SCORES:  # each score once per version (fitted on its validation outputs), cached on the record
        score_started = time.perf_counter()
        for record in records.values():
            record.score(name)
        score_seconds[name] = time.perf_counter() - score_started
    scores_done = time.perf_counter()
    log = evaluation.MethodLog()
    rows = evaluation.evaluate_sets("SYNTHETIC", records, truths, sets, log=log)
    ours = time.perf_counter() - started
    method_seconds = sum(log.seconds.values())
    print(f"ours: {ours:.1f} s for the whole grid: {scores_done - started:.1f} s for {len(SCORES)} scores of "
          f"{len(records)} versions, {method_seconds:.1f} s fitting and running {len(METHODS)} methods on "
          f"{len(sets)} sets, {ours - (scores_done - started) - method_seconds:.1f} s for the rest (regions of "
          f"competence, statistics of {len(rows)} result rows)")
    print("per score (all versions, once):  " + ", ".join(f"{name} {seconds:.2f} s"
                                                          for name, seconds in score_seconds.items()))
    print("per method (all sets; selection by a score counts only the argmax):  "
          + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in log.seconds.items()))

    pair_seconds, agreements, compared = [], [], 0
    for members in [members for _, members in sets if len(members) == 2][:args.paper_sets]:
        chosen = [records[member] for member in members]
        paper = []
        for record in chosen:
            started = time.perf_counter()
            paper.append(paper_confidence(record))
            pair_seconds.append(time.perf_counter() - started)
        labels = np.stack([r.labels for r in chosen])
        paper_choice = DeepFailGuard.select(np.stack([p for p, _ in paper]), labels)[1]
        our_choice = DeepFailGuard.select(np.stack([r.confidence for r in chosen]), labels)[1]
        valid = ~np.any(np.stack([u for _, u in paper]), axis=0)
        agreements.append(np.mean(paper_choice[valid] == our_choice[valid]))
        compared += int(valid.sum())
    per_pair = statistics.median(pair_seconds)
    paper_total = per_pair * pairs
    print(f"paper's way: {per_pair:.2f} s per (version, set) pair (median of {len(pair_seconds)}), "
          f"extrapolated to {pairs} pairs: {paper_total / 60:.0f} min")
    print(f"speed-up: {paper_total / ours:.0f}x")
    if agreements:
        print(f"chosen versions identical to the paper's way on {100 * min(agreements):.2f} % of {compared} inputs "
              f"compared (inputs where its densities underflow to 0/0 excluded)")
    return 0


if __name__ == "__main__":
    flags.run_main(main)
