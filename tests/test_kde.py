"""GaussianKDE (failure_model/kde.py): SciPy's densities, degenerate fits, .npz files, the paper's pickles."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import gaussian_kde

from DeepFailGuard import DeepFailGuardModule
from failure_model.kde import FALLBACK_BANDWIDTH, GaussianKDE, RestrictedKDEUnpickler
from utils import UsageError


def sample(n: int = 300, seed: int = 0) -> np.ndarray:
    """Skewed positive values, like DeepFool distances."""
    return np.random.default_rng(seed).gamma(2.0, 0.5, n)


def reference_logpdf(points, bandwidth, queries, weights=None) -> np.ndarray:
    """log Σ w_i N(q; p_i, h²), term by term in float64 (no underflow)."""
    points = np.asarray(points, dtype=np.float64)
    weights = np.full(len(points), 1 / len(points)) if weights is None else np.asarray(weights)
    z = (np.asarray(queries, dtype=np.float64)[:, None] - points[None, :]) / bandwidth
    return logsumexp(np.log(weights) - 0.5 * z * z, axis=1) - np.log(bandwidth) - 0.5 * np.log(2 * np.pi)


# ---------------------------------------------------------------------------------------------
# fitting and evaluation
# ---------------------------------------------------------------------------------------------

def test_fit_and_logpdf_equal_scipy():
    points = sample()
    ours, scipys = GaussianKDE.fit(points), gaussian_kde(points)
    queries = np.linspace(-1.0, 6.0, 301)
    np.testing.assert_allclose(ours.logpdf(queries), scipys.logpdf(queries), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.pdf(queries), scipys.pdf(queries), rtol=1e-10, atol=0)
    assert ours.bandwidth == pytest.approx(np.sqrt(scipys.covariance[0, 0]), rel=1e-14)
    assert ours.n == len(points)
    np.testing.assert_array_equal(ours.points, points)


def test_logpdf_at_the_sample_points_and_shape_is_kept():
    points = sample(50, seed=3)
    ours, scipys = GaussianKDE.fit(points), gaussian_kde(points)
    np.testing.assert_allclose(ours.logpdf(points), scipys.logpdf(points), atol=1e-10)
    grid = np.linspace(0.0, 3.0, 12).reshape(3, 4)
    values = ours.logpdf(grid)
    assert values.shape == (3, 4)
    np.testing.assert_allclose(values.ravel(), scipys.logpdf(grid.ravel()), atol=1e-10)
    assert np.ndim(ours.logpdf(1.0)) == 0
    assert ours.logpdf(np.zeros(0)).shape == (0,)


def test_many_points_and_queries_equal_the_direct_sum():
    """Large inputs (where a faster evaluation scheme may take over) still give the exact mixture."""
    points = sample(4000, seed=1)
    kde = GaussianKDE.fit(points)
    queries = np.concatenate([np.random.default_rng(2).uniform(-0.5, 7.0, 12000), [-20.0, 30.0, 100.0]])
    values = kde.logpdf(queries)
    assert np.isfinite(values).all()
    chunks = [reference_logpdf(points, kde.bandwidth, q) for q in np.array_split(queries, 12)]
    np.testing.assert_allclose(values, np.concatenate(chunks), rtol=0, atol=1e-10)
    np.testing.assert_allclose(values[:500], gaussian_kde(points).logpdf(queries[:500]), atol=1e-10)


def test_weighted_kde_equals_scipy_weighted():
    points = sample(120, seed=4)
    weights = np.random.default_rng(5).random(120)
    weights /= weights.sum()
    scipys = gaussian_kde(points, weights=weights)
    ours = GaussianKDE(points, np.sqrt(scipys.covariance[0, 0]), weights=weights)
    queries = np.linspace(-0.5, 5.0, 200)
    np.testing.assert_allclose(ours.logpdf(queries), scipys.logpdf(queries), atol=1e-10)
    # the weights matter: dropping them changes the density
    unweighted = GaussianKDE(points, ours.bandwidth)
    assert np.abs(unweighted.logpdf(queries) - ours.logpdf(queries)).max() > 1e-3


def test_weights_with_zeros_ignore_those_points():
    points = np.array([0.0, 1.0, 50.0])
    kde = GaussianKDE(points, 0.5, weights=[0.5, 0.5, 0.0])
    two = GaussianKDE(points[:2], 0.5)
    queries = np.linspace(-1, 60, 40)
    np.testing.assert_allclose(kde.logpdf(queries), two.logpdf(queries), atol=1e-10)


@pytest.mark.parametrize("bad", [dict(weights=[0.5, 0.6]), dict(weights=[1.5, -0.5]), dict(weights=[1.0]),
                                 dict(bandwidth=0.0), dict(bandwidth=float("nan")), dict(points=[0.0, np.inf])])
def test_invalid_kde_parameters_are_refused(bad):
    arguments = dict(points=[0.0, 1.0], bandwidth=0.3) | bad
    with pytest.raises(ValueError):
        GaussianKDE(**arguments)


def test_fit_refuses_non_finite_distances():
    with pytest.raises(ValueError):
        GaussianKDE.fit([0.1, np.nan, 0.3])


def test_far_tail_is_finite_where_scipy_pdf_underflows():
    points = sample(200, seed=6)
    ours, scipys = GaussianKDE.fit(points), gaussian_kde(points)
    far = np.array([-30.0, 40.0, 100.0, 1e3, 1e5])
    assert (scipys.pdf(far) == 0).all()
    values = ours.logpdf(far)
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, reference_logpdf(points, ours.bandwidth, far), rtol=1e-12)
    assert (np.diff(values[1:]) < 0).all()  # further out, less likely
    # the nearest point dominates there: log f ≈ log(1/n) - (x - p_max)² / 2h² - log(h√2π)
    nearest = np.log(1 / len(points)) - 0.5 * ((1e3 - points.max()) / ours.bandwidth) ** 2 \
        - np.log(ours.bandwidth * np.sqrt(2 * np.pi))
    assert values[3] == pytest.approx(nearest, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# degenerate fits
# ---------------------------------------------------------------------------------------------

def test_single_point_uses_the_fallback_bandwidth():
    kde = GaussianKDE.fit([2.5])
    assert kde.n == 1 and kde.bandwidth == FALLBACK_BANDWIDTH
    peak = -np.log(FALLBACK_BANDWIDTH) - 0.5 * np.log(2 * np.pi)
    assert kde.logpdf(2.5) == pytest.approx(peak, rel=1e-12)
    assert np.isfinite(kde.logpdf([0.0, 2.6, 100.0])).all()


def test_identical_points_use_the_fallback_scale():
    kde = GaussianKDE.fit([0.7] * 4, fallback_scale=0.5)
    assert kde.bandwidth == pytest.approx(4 ** (-1 / 5) * 0.5, rel=1e-12)
    np.testing.assert_allclose(kde.logpdf([0.7, 1.2]), reference_logpdf([0.7], kde.bandwidth, [0.7, 1.2]),
                               rtol=1e-12)
    for scale in (None, 0.0, -1.0):  # no usable scale: the fixed fallback
        assert GaussianKDE.fit([0.7] * 4, fallback_scale=scale).bandwidth == FALLBACK_BANDWIDTH


def test_no_points_give_the_empty_density():
    kde = GaussianKDE.fit([])
    assert kde.n == 0
    values = kde.logpdf(np.array([[0.0, 1.0, 1e6]]))
    assert values.shape == (1, 3) and np.isneginf(values).all()
    np.testing.assert_array_equal(kde.pdf([0.0, 5.0]), 0.0)


# ---------------------------------------------------------------------------------------------
# .npz files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kde", [GaussianKDE.fit(sample(40)), GaussianKDE([0.1, 0.4, 2.0], 0.25, [0.2, 0.3, 0.5]),
                                 GaussianKDE.fit([]), GaussianKDE.fit([1.0])], ids=["fit", "weighted", "empty", "one"])
def test_npz_round_trip_is_exact(tmp_path, kde):
    path = tmp_path / "kde_results" / "resnet_DIGITS_correct.npz"
    kde.save(path)
    loaded = GaussianKDE.load(path)
    np.testing.assert_array_equal(loaded.points, kde.points)
    np.testing.assert_array_equal(loaded.weights, kde.weights)
    assert loaded.bandwidth == kde.bandwidth
    queries = np.linspace(-1, 5, 25)
    np.testing.assert_array_equal(loaded.logpdf(queries), kde.logpdf(queries))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert DeepFailGuardModule.load_kde(path).bandwidth == kde.bandwidth


def corrupt_files(tmp_path):
    good = tmp_path / "good.npz"
    GaussianKDE.fit(sample(40)).save(good)
    data = good.read_bytes()
    files = {
        "garbage": os.urandom(300),
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"points,bandwidth\n1,2\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.npz"
        paths[name].write_bytes(content)
    np.savez(tmp_path / "missing_key.npz", points=np.arange(3.0))
    paths["missing_key"] = tmp_path / "missing_key.npz"
    np.savez(tmp_path / "nan.npz", points=np.array([np.nan, 1.0]), weights=np.array([0.5, 0.5]),
             bandwidth=np.float64(0.2))
    paths["nan"] = tmp_path / "nan.npz"
    np.savez(tmp_path / "objects.npz", points=np.array([{"a": 1}], dtype=object), weights=np.ones(1),
             bandwidth=np.float64(1.0))
    paths["objects"] = tmp_path / "objects.npz"
    np.save(tmp_path / "single.npy", np.arange(3.0))  # a .npy array under a .npz name
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    paths["single_npy"] = tmp_path / "single.npz"
    return paths


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "text", "missing_key", "nan", "objects",
                                  "single_npy"])
def test_corrupt_npz_is_a_usage_error(tmp_path, kind):
    path = corrupt_files(tmp_path)[kind]
    with pytest.raises(UsageError, match="corrupt KDE file") as info:
        GaussianKDE.load(path)
    assert str(path) in str(info.value)


def test_missing_kde_file_is_a_usage_error(tmp_path):
    for path in (tmp_path / "nowhere_correct.npz", tmp_path / "nowhere_correct.pkl", tmp_path):
        with pytest.raises(UsageError, match="missing KDE file"):
            DeepFailGuardModule.load_kde(path)


# ---------------------------------------------------------------------------------------------
# the paper's pickles
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("weighted", [False, True])
def test_pickled_scipy_kde_loads_and_matches(tmp_path, protocol, weighted):
    points = sample(150, seed=7)
    weights = np.random.default_rng(8).random(150) if weighted else None
    scipys = gaussian_kde(points, weights=None if weights is None else weights / weights.sum())
    path = tmp_path / "resnet_CIFAR10_correct.pkl"
    path.write_bytes(pickle.dumps(scipys, protocol=protocol))
    queries = np.linspace(-0.5, 5.0, 120)
    for loaded in (GaussianKDE.load(path), DeepFailGuardModule.load_kde(path)):
        assert isinstance(loaded, GaussianKDE)
        np.testing.assert_allclose(loaded.logpdf(queries), scipys.logpdf(queries), atol=1e-10)


def test_pickle_from_older_scipy_and_numpy_module_names(tmp_path):
    """The paper's pickles name ``scipy.stats.kde`` and ``numpy.core.multiarray`` (older releases) and
    have no weights; they load all the same."""
    points = sample(60, seed=9)
    scipys = gaussian_kde(points)
    old = gaussian_kde.__new__(gaussian_kde)
    old.__dict__.update(dataset=scipys.dataset, d=1, n=len(points), factor=scipys.factor,
                        covariance=scipys.covariance, inv_cov=scipys.inv_cov)
    text = pickle.dumps(old, protocol=0)
    text = text.replace(b"scipy.stats._kde", b"scipy.stats.kde").replace(b"numpy._core.multiarray",
                                                                           b"numpy.core.multiarray")
    assert b"scipy.stats.kde\n" in text and b"numpy.core.multiarray" in text
    path = tmp_path / "old.pkl"
    path.write_bytes(text)
    loaded = GaussianKDE.load(path)
    np.testing.assert_allclose(loaded.logpdf(points), scipys.logpdf(points), atol=1e-10)
    np.testing.assert_allclose(loaded.weights, 1 / len(points))


def test_pickle_with_only_the_data_covariance_and_factor(tmp_path):
    points = sample(60, seed=10)
    scipys = gaussian_kde(points)
    state = gaussian_kde.__new__(gaussian_kde)
    state.__dict__.update(dataset=scipys.dataset, factor=scipys.factor, _data_covariance=scipys._data_covariance)
    path = tmp_path / "factor.pkl"
    path.write_bytes(pickle.dumps(state))
    np.testing.assert_allclose(GaussianKDE.load(path).logpdf(points), scipys.logpdf(points), atol=1e-10)


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class StartsProcess:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


def kde_carrying(marker):
    """A real gaussian_kde whose state carries a payload: refused although the outer class is allowed."""
    kde = gaussian_kde(sample(20))
    kde.payload = RunsShell(marker)
    return kde


@pytest.mark.parametrize("payload, refused", [(RunsShell, "system"), (RunsExec, "builtins.exec"),
                                              (StartsProcess, "subprocess.Popen"), (kde_carrying, "system")])
def test_hostile_pickle_is_refused_before_running(tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "resnet_CIFAR10_correct.pkl"
    path.write_bytes(pickle.dumps(payload(marker)))
    assert not marker.exists()
    for load in (GaussianKDE.load, DeepFailGuardModule.load_kde):
        with pytest.raises(UsageError, match="refused") as info:
            load(path)
        assert refused in str(info.value)
        assert str(path) in str(info.value)
    assert not marker.exists()
    # the payload is real: an ordinary unpickler would have run it
    if payload is RunsShell:
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_restricted_unpickler_refuses_globals_by_name(tmp_path):
    """A GLOBAL opcode naming something outside the allow-list fails on lookup, whatever follows."""
    import io

    for module, name in (("os", "system"), ("posix", "system"), ("builtins", "eval"), ("numpy", "load"),
                         ("scipy.stats", "norm"), ("numpy.dtypes", "evil")):
        data = f"c{module}\n{name}\n.".encode()
        with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
            RestrictedKDEUnpickler(io.BytesIO(data)).load()


@pytest.mark.parametrize("cut", [1, 10, 0.5, -1])
def test_truncated_pickle_is_a_usage_error(tmp_path, cut):
    data = pickle.dumps(gaussian_kde(sample(50)))
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(UsageError, match=str(path)):
        GaussianKDE.load(path)


@pytest.mark.parametrize("obj", [np.arange(5.0), gaussian_kde(np.random.default_rng(0).normal(size=(2, 30)))],
                         ids=["array", "two_dimensional_kde"])
def test_pickle_of_something_else_is_a_usage_error(tmp_path, obj):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(UsageError, match="not a usable one-dimensional gaussian_kde"):
        GaussianKDE.load(path)
