"""The failure predictor and the selector (DeepFailGuard.py): posterior, per-version module,
fitting the KDEs, choosing a version."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from Attacker import Attacker, AttackResult
from DeepFailGuard import DeepFailGuard, DeepFailGuardModule, DeepFailGuardTrainer, posterior
from failure_model.kde import GaussianKDE
from storage.settings import DistanceSettings
from utils import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cnn(seed: int, num_classes: int = 4, side: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * (side // 2) ** 2, num_classes)).eval()


def images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def write_kdes(folder, name: str, correct_points, wrong_points):
    correct_path, wrong_path = folder / f"{name}_correct.npz", folder / f"{name}_wrong.npz"
    GaussianKDE.fit(correct_points).save(correct_path)
    GaussianKDE.fit(wrong_points).save(wrong_path)
    return correct_path, wrong_path


@pytest.fixture
def kde_pair(tmp_path):
    """Correct inputs lie far from the boundary, wrong ones close to it (as in the paper)."""
    rng = np.random.default_rng(0)
    return write_kdes(tmp_path, "v", rng.gamma(4.0, 0.1, 80), rng.gamma(1.5, 0.05, 40))


# ---------------------------------------------------------------------------------------------
# posterior
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("val_acc", [0.05, 0.5, 0.93])
def test_posterior_equals_bayes_rule_in_normal_range(val_acc):
    rng = np.random.default_rng(1)
    correct = GaussianKDE.fit(rng.gamma(4.0, 0.1, 60))
    wrong = GaussianKDE.fit(rng.gamma(1.5, 0.05, 30))
    d = np.linspace(0.01, 0.8, 50)
    fc, fw = correct.pdf(d), wrong.pdf(d)
    assert (fc > 1e-200).all() and (fw > 1e-200).all()  # densities in float64's normal range
    expected = val_acc * fc / (val_acc * fc + (1 - val_acc) * fw)
    np.testing.assert_allclose(posterior(correct.logpdf(d), wrong.logpdf(d), val_acc), expected, rtol=1e-12)
    # it is informative: near the boundary the wrong density wins, far away the correct one
    p = posterior(correct.logpdf(d), wrong.logpdf(d), val_acc)
    assert p[0] < val_acc < p[-1]


def test_posterior_limits():
    log_c = np.array([-1.0, 0.5, -300.0, -1e6])
    log_w = np.array([0.0, -2.0, -1e6, -300.0])
    neg_inf = np.full(4, -np.inf)
    np.testing.assert_array_equal(posterior(log_c, log_w, 1.0), 1.0)
    np.testing.assert_array_equal(posterior(log_c, log_w, 0.0), 0.0)
    np.testing.assert_array_equal(posterior(log_c, neg_inf, 0.6), 1.0)  # wrong KDE empty
    np.testing.assert_array_equal(posterior(neg_inf, log_w, 0.6), 0.0)  # correct KDE empty
    np.testing.assert_array_equal(posterior(neg_inf, neg_inf, 0.6), 0.6)  # both empty: the prior
    np.testing.assert_array_equal(posterior(neg_inf, log_w, 1.0), 1.0)  # both weighted densities zero
    np.testing.assert_array_equal(posterior(log_c, neg_inf, 0.0), 0.0)
    np.testing.assert_array_equal(posterior(neg_inf, neg_inf, 1.0), 1.0)


def test_posterior_in_far_tails_uses_log_space():
    """Both densities far below float64's smallest number: the ratio is still right."""
    log_c = np.array([-1e6, -5e5 - 2.0, -2e4])
    log_w = np.array([-1e6 + np.log(3.0), -5e5, -2e4 - 40.0])
    assert (np.exp(log_c) == 0).all() and (np.exp(log_w) == 0).all()
    a = 0.4
    expected = 1.0 / (1.0 + (1 - a) / a * np.exp(log_w - log_c))
    # rtol: at log densities near -5e5 a float64 log carries ~1e-10 absolute rounding
    np.testing.assert_allclose(posterior(log_c, log_w, a), expected, rtol=1e-9)


def test_posterior_is_never_nan():
    values = np.array([-np.inf, -1e300, -1e6, -700.0, -1.0, 0.0, 3.0])
    log_c, log_w = np.meshgrid(values, values)
    for a in (0.0, 1e-300, 0.3, 1.0 - 1e-16, 1.0):
        p = posterior(log_c, log_w, a)
        assert p.shape == log_c.shape
        assert not np.isnan(p).any(), a
        assert ((p >= 0) & (p <= 1)).all()


# ---------------------------------------------------------------------------------------------
# DeepFailGuardModule
# ---------------------------------------------------------------------------------------------

def test_confidence_is_vectorised_and_a_probability(kde_pair):
    module = DeepFailGuardModule(None, *kde_pair, val_acc=0.8)
    d = np.concatenate([np.linspace(0.0, 2.0, 40), [10.0, 1e3]])
    p = module.confidence(d)
    assert isinstance(p, np.ndarray) and p.shape == d.shape
    assert ((p >= 0) & (p <= 1)).all() and np.isfinite(p).all()
    np.testing.assert_allclose(p, [module.confidence(np.array([x]))[0] for x in d], rtol=1e-12)
    grid = d[:12].reshape(3, 4)
    np.testing.assert_allclose(module.confidence(grid), p[:12].reshape(3, 4), rtol=1e-12)
    np.testing.assert_allclose(module.confidence(list(d[:5])), p[:5], rtol=1e-12)
    correct, wrong = GaussianKDE.load(kde_pair[0]), GaussianKDE.load(kde_pair[1])
    np.testing.assert_allclose(p, posterior(correct.logpdf(d), wrong.logpdf(d), 0.8), rtol=1e-12)
    # the paper's ablation score
    np.testing.assert_allclose(module.density_margin(d[:40]), correct.pdf(d[:40]) - wrong.pdf(d[:40]), atol=1e-12)


@pytest.mark.parametrize("bad", [[0.1, np.nan], [np.inf], [0.2, -np.inf, 0.3]])
def test_non_finite_distances_are_a_usage_error(kde_pair, bad):
    module = DeepFailGuardModule(None, *kde_pair, val_acc=0.8, name="resnet_DIGITS")
    with pytest.raises(UsageError, match="resnet_DIGITS"):
        module.confidence(np.array(bad))


@pytest.mark.parametrize("val_acc", [1.5, -0.1, float("nan"), "high", None])
def test_validation_accuracy_outside_unit_interval_is_a_usage_error(kde_pair, val_acc):
    with pytest.raises(UsageError, match="validation accuracy"):
        DeepFailGuardModule(None, *kde_pair, val_acc=val_acc)


@pytest.mark.parametrize("val_acc", [0.0, 1.0, "0.75", np.float32(0.5)])
def test_validation_accuracy_at_the_limits_is_accepted(kde_pair, val_acc):
    module = DeepFailGuardModule(None, *kde_pair, val_acc=val_acc)
    assert module.val_acc == float(val_acc)
    assert ((module.confidence([0.1, 0.5]) >= 0) & (module.confidence([0.1, 0.5]) <= 1)).all()


def test_module_without_network_cannot_attack(kde_pair):
    module = DeepFailGuardModule(None, *kde_pair, val_acc=0.5, name="cached_only")
    assert module.attacker is None
    with pytest.raises(UsageError, match="cached_only"):
        module.attack(images(2))
    with pytest.raises(UsageError, match="cached_only"):
        module.attack_loader([(images(2), torch.zeros(2))])


def test_module_with_missing_kde_is_a_usage_error(tmp_path, kde_pair):
    with pytest.raises(UsageError, match="missing KDE file"):
        DeepFailGuardModule(None, kde_pair[0], tmp_path / "absent_wrong.npz", val_acc=0.5)


# ---------------------------------------------------------------------------------------------
# DeepFailGuardTrainer
# ---------------------------------------------------------------------------------------------

def hand_made_result(distances, labels) -> AttackResult:
    distances = np.asarray(distances, dtype=np.float32)
    n = len(distances)
    return AttackResult(distances, np.asarray(labels), np.ones(n, dtype=bool), np.full((n, 10), 0.1, np.float32))


def test_fit_splits_correct_and_wrong():
    distances = [0.5, 0.6, 0.7, 0.05, 0.08, 0.1, 0.55]
    result = hand_made_result(distances, labels=[0, 1, 2, 3, 4, 5, 6])
    truth = np.array([0, 1, 2, 9, 9, 9, 6])
    fit = DeepFailGuardTrainer.fit(result, truth)
    np.testing.assert_array_equal(fit.correct, [True, True, True, False, False, False, True])
    assert fit.accuracy == pytest.approx(4 / 7)
    np.testing.assert_array_equal(fit.correct_kde.points, np.float32([0.5, 0.6, 0.7, 0.55]).astype(np.float64))
    np.testing.assert_array_equal(fit.wrong_kde.points, np.float32([0.05, 0.08, 0.1]).astype(np.float64))
    assert fit.correct_kde.bandwidth == GaussianKDE.fit(fit.correct_kde.points).bandwidth
    assert fit.wrong_kde.bandwidth == GaussianKDE.fit(fit.wrong_kde.points).bandwidth
    assert fit.result is result
    np.testing.assert_array_equal(fit.distances, result.distances)


def test_fit_degenerate_groups():
    # every input correct: the wrong density is empty and P(correct) is 1 everywhere
    result = hand_made_result([0.2, 0.4, 0.9], labels=[1, 2, 3])
    fit = DeepFailGuardTrainer.fit(result, np.array([1, 2, 3]))
    assert fit.wrong_kde.n == 0 and fit.correct_kde.n == 3
    np.testing.assert_array_equal(posterior(fit.correct_kde.logpdf([0.3]), fit.wrong_kde.logpdf([0.3]), 0.9), 1.0)
    # one wrong input: its width comes from the spread of all distances
    result = hand_made_result([0.2, 0.4, 0.9, 0.05], labels=[1, 2, 3, 0])
    fit = DeepFailGuardTrainer.fit(result, np.array([1, 2, 3, 4]))
    spread = np.std(result.distances, ddof=1)
    assert fit.wrong_kde.n == 1
    assert fit.wrong_kde.bandwidth == pytest.approx(spread, rel=1e-6)
    # no input at all
    fit = DeepFailGuardTrainer.fit(hand_made_result([], labels=np.zeros(0, dtype=int)), np.zeros(0, dtype=int))
    assert fit.correct_kde.n == fit.wrong_kde.n == 0 and np.isnan(fit.accuracy)


def test_fit_with_mismatched_truth_is_a_usage_error():
    with pytest.raises(UsageError, match="ground-truth"):
        DeepFailGuardTrainer.fit(hand_made_result([0.1, 0.2], labels=[0, 1]), np.array([0, 1, 2]))


def test_train_writes_two_kde_files_that_load_back(tmp_path):
    model = tiny_cnn(seed=3)
    x = images(12, seed=4)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    truth = predicted.clone()
    truth[::3] = (truth[::3] + 1) % 4  # every third input is misclassified
    loader = [(x[i:i + 5], truth[i:i + 5]) for i in range(0, 12, 5)]
    correct_path = tmp_path / "kde_results" / "tiny_DIGITS_correct.npz"
    wrong_path = tmp_path / "kde_results" / "tiny_DIGITS_wrong.npz"

    fit = DeepFailGuardTrainer(DistanceSettings(steps=50)).train(model, loader, correct_path, wrong_path, device="cpu")

    expected = Attacker(model, device="cpu").attack(x)
    np.testing.assert_allclose(fit.distances, expected.distances, rtol=1e-5)
    np.testing.assert_array_equal(fit.correct, (predicted == truth).numpy())
    assert fit.correct.sum() == 8
    correct_kde, wrong_kde = GaussianKDE.load(correct_path), GaussianKDE.load(wrong_path)
    np.testing.assert_array_equal(correct_kde.points, fit.distances[fit.correct].astype(np.float64))
    np.testing.assert_array_equal(wrong_kde.points, fit.distances[~fit.correct].astype(np.float64))
    assert correct_kde.bandwidth == fit.correct_kde.bandwidth and wrong_kde.bandwidth == fit.wrong_kde.bandwidth
    # the files work as a version's failure model
    module = DeepFailGuardModule(None, correct_path, wrong_path, val_acc=fit.accuracy)
    assert module.confidence(fit.distances).shape == (12,)


# ---------------------------------------------------------------------------------------------
# DeepFailGuard: selection
# ---------------------------------------------------------------------------------------------

def test_select_picks_the_most_confident_version_and_the_first_on_ties():
    confidences = np.array([[0.9, 0.2, 0.5, 0.3, 0.0],
                            [0.1, 0.8, 0.5, 0.7, 0.0],
                            [0.3, 0.8, 0.4, 0.7, 0.0]])
    labels = np.array([[1, 2, 3, 4, 5],
                       [6, 7, 8, 9, 0],
                       [2, 3, 4, 5, 6]])
    chosen_labels, chosen = DeepFailGuard.select(confidences, labels)
    np.testing.assert_array_equal(chosen, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(chosen_labels, [1, 7, 3, 9, 5])


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_versions_is_a_usage_error(kde_pair, count):
    modules = [DeepFailGuardModule(None, *kde_pair, val_acc=0.5)] * count
    with pytest.raises(UsageError, match="at least two"):
        DeepFailGuard(modules)


@pytest.fixture
def cached_guard(tmp_path):
    """Three cached-only versions with different failure models and priors."""
    rng = np.random.default_rng(2)
    modules = []
    for i, (acc, scale) in enumerate([(0.9, 0.1), (0.6, 0.2), (0.75, 0.05)]):
        paths = write_kdes(tmp_path, f"v{i}", rng.gamma(4.0, scale, 50), rng.gamma(1.5, scale / 2, 20))
        modules.append(DeepFailGuardModule(None, *paths, val_acc=acc, name=f"v{i}"))
    return DeepFailGuard(modules)


def test_batch_infer_cached_decides_from_confidences(cached_guard):
    rng = np.random.default_rng(3)
    distances = rng.uniform(0.0, 1.0, (3, 20))
    labels = rng.integers(0, 10, (3, 20))
    decision = cached_guard.batch_infer_cached(distances, labels)
    confidences = np.stack([m.confidence(d) for m, d in zip(cached_guard.modules, distances)])
    np.testing.assert_allclose(decision.confidences, confidences, rtol=1e-12)
    np.testing.assert_array_equal(decision.chosen, confidences.argmax(axis=0))
    np.testing.assert_array_equal(decision.labels, labels[confidences.argmax(axis=0), np.arange(20)])
    np.testing.assert_array_equal(decision.version_labels, labels)
    assert decision.labels.shape == decision.chosen.shape == (20,)
    assert len(set(decision.chosen)) > 1  # the choice really depends on the input


@pytest.mark.parametrize("d_shape, l_shape", [((2, 5), (2, 5)), ((3, 5), (3, 4)), ((4, 5), (4, 5)), ((15,), (15,)),
                                              ((3, 5), (5, 3))])
def test_batch_infer_cached_shape_checks(cached_guard, d_shape, l_shape):
    with pytest.raises(UsageError, match=r"\(3, N\)"):
        cached_guard.batch_infer_cached(np.ones(d_shape), np.zeros(l_shape, dtype=int))


def test_batch_infer_cached_refuses_nan_distances(cached_guard):
    distances = np.full((3, 4), 0.3)
    distances[1, 2] = np.nan
    with pytest.raises(UsageError, match="v1"):
        cached_guard.batch_infer_cached(distances, np.zeros((3, 4), dtype=int))


# ---------------------------------------------------------------------------------------------
# DeepFailGuard with networks: infer, batch_infer
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def network_guard(tmp_path):
    """Two versions with small CNNs; the second one sees 16×16 inputs (resized from 8×8)."""
    rng = np.random.default_rng(4)
    first = DeepFailGuardModule(tiny_cnn(seed=10), *write_kdes(tmp_path, "a", rng.gamma(4, 0.05, 40),
                                                               rng.gamma(1.5, 0.02, 20)), val_acc=0.7, device="cpu")
    second = DeepFailGuardModule(tiny_cnn(seed=11, side=16), *write_kdes(tmp_path, "b", rng.gamma(4, 0.1, 40),
                                                                         rng.gamma(1.5, 0.05, 20)),
                                 val_acc=0.8, device="cpu", image_size=16)
    return DeepFailGuard([first, second])


def test_infer_one_image_matches_batch_infer_cached(network_guard):
    x = images(6, seed=5)
    results = [module.attack(x) for module in network_guard.modules]
    decision = network_guard.batch_infer_cached([r.distances for r in results], [r.labels for r in results])
    for i in range(len(x)):
        label = network_guard.infer(x[i])
        assert type(label) is int
        assert label == decision.labels[i]
        assert network_guard.infer(x[i:i + 1]) == label
    # the second version really sees 16×16 inputs
    assert network_guard.modules[1].attacker.image_size == 16


def test_batch_infer_runs_every_version_over_the_loader(network_guard):
    x = images(7, seed=6)
    # one DataLoader shared by both versions (a plain list would be read as one loader per version)
    shared = DataLoader(TensorDataset(x, torch.zeros(7)), batch_size=4)
    decision = network_guard.batch_infer(shared)
    results = [module.attack(x) for module in network_guard.modules]
    np.testing.assert_allclose(decision.distances, np.stack([r.distances for r in results]), rtol=1e-5)
    np.testing.assert_array_equal(decision.version_labels, np.stack([r.labels for r in results]))
    assert decision.extras["probabilities"].shape == (2, 7, 4)
    assert decision.labels.shape == (7,)
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(3))]
    per_version = network_guard.batch_infer([batches, batches])
    np.testing.assert_array_equal(per_version.labels, decision.labels)
    np.testing.assert_allclose(per_version.confidences, decision.confidences, rtol=1e-5)
    with pytest.raises(UsageError, match="2 versions but 3 loaders"):
        network_guard.batch_infer([batches] * 3)
