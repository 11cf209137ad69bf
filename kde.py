"""One-dimensional Gaussian kernel density estimates: fit, exact fast log-density, files.

The failure model of a version is two of these (distances of correctly and of wrongly classified
validation inputs). Fitting uses SciPy's ``gaussian_kde`` (Scott's rule), so the densities are the
paper's; evaluation is the same mixture of Gaussians computed as a chunked log-sum-exp in float64,
which is exact (no binning, no truncation) and never underflows to ``log 0`` where SciPy's ``pdf``
would.

Files: ours are ``.npz`` (points, weights, bandwidth); the paper's are pickles of
``scipy.stats.gaussian_kde``, read through a restricted unpickler that admits only that class and
NumPy arrays, so a hostile pickle is refused before any of its code can run.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from utils import UsageError, atomic_save_npz

#: elements of the (queries × points) matrix evaluated at once; bounds memory to ~64 MB
CHUNK_ELEMENTS = 1 << 23
FALLBACK_BANDWIDTH = 1e-3


class GaussianKDE:
    """A weighted mixture of equal-width Gaussians on the real line.

    ``points`` are the sample distances, ``weights`` sum to 1, ``bandwidth`` is the kernel's
    standard deviation (the square root of SciPy's ``covariance``). With no points the density is
    zero everywhere (``logpdf`` = -inf): the failure model then falls back to its prior.
    """

    def __init__(self, points, bandwidth: float, weights=None):
        self.points = np.asarray(points, dtype=np.float64).reshape(-1)
        self.weights = (np.full(len(self.points), 1.0 / max(len(self.points), 1)) if weights is None
                        else np.asarray(weights, dtype=np.float64).reshape(-1))
        self.bandwidth = float(bandwidth)
        if len(self.weights) != len(self.points):
            raise ValueError(f"{len(self.points)} points but {len(self.weights)} weights")
        if not (np.isfinite(self.points).all() and np.isfinite(self.weights).all()):
            raise ValueError("KDE points and weights must be finite")
        if len(self.points) and not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(f"KDE bandwidth must be a positive number, got {self.bandwidth}")
        if len(self.points) and (self.weights.min() < 0 or not np.isclose(self.weights.sum(), 1.0)):
            raise ValueError("KDE weights must be non-negative and sum to 1")

    @property
    def n(self) -> int:
        return len(self.points)

    # -----------------------------------------------------------------------------------------
    # fitting
    # -----------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, points, fallback_scale: float | None = None) -> "GaussianKDE":
        """SciPy's ``gaussian_kde(points)`` (Scott's rule), with the degenerate cases handled.

        Fewer than two distinct points have no spread to measure; their bandwidth is Scott's factor
        times ``fallback_scale`` (e.g. the spread of all validation distances), or 1e-3 without one.
        No points give the empty density.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1)
        if not np.isfinite(points).all():
            raise ValueError("cannot fit a KDE to NaN or infinite distances")
        if len(points) == 0:
            return cls(points, FALLBACK_BANDWIDTH)
        if len(np.unique(points)) < 2:
            scale = fallback_scale if fallback_scale and fallback_scale > 0 else None
            bandwidth = len(points) ** (-1 / 5) * scale if scale else FALLBACK_BANDWIDTH
            return cls(points, bandwidth)
        from scipy.stats import gaussian_kde

        reference = gaussian_kde(points)
        return cls(points, math.sqrt(float(reference.covariance[0, 0])))

    # -----------------------------------------------------------------------------------------
    # evaluation
    # -----------------------------------------------------------------------------------------

    def logpdf(self, x) -> np.ndarray:
        """log f(x), exact, vectorised; -inf only for the empty density."""
        x = np.asarray(x, dtype=np.float64)
        if self.n == 0:
            return np.full(x.shape, -np.inf)
        queries = torch.from_numpy(x.reshape(-1))
        points = torch.from_numpy(self.points)
        log_weights = torch.from_numpy(np.log(self.weights, where=self.weights > 0,
                                              out=np.full(self.n, -np.inf)))
        inv_bandwidth = 1.0 / self.bandwidth
        chunk = max(1, CHUNK_ELEMENTS // self.n)
        out = torch.empty(len(queries), dtype=torch.float64)
        for start in range(0, len(queries), chunk):
            z = (queries[start:start + chunk, None] - points[None, :]) * inv_bandwidth
            out[start:start + chunk] = torch.logsumexp(log_weights - 0.5 * z * z, dim=1)
        out -= math.log(self.bandwidth) + 0.5 * math.log(2 * math.pi)
        return out.numpy().reshape(x.shape)

    def pdf(self, x) -> np.ndarray:
        return np.exp(self.logpdf(x))

    # -----------------------------------------------------------------------------------------
    # files
    # -----------------------------------------------------------------------------------------

    def save(self, path) -> None:
        atomic_save_npz(path, points=self.points, weights=self.weights, bandwidth=np.float64(self.bandwidth))

    @classmethod
    def load(cls, path) -> "GaussianKDE":
        """Read our ``.npz`` or the paper's ``.pkl``; a missing, corrupt or hostile file is a UsageError."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"missing KDE file {path}: run main_train_DeepFailGuard.py first")
        if path.suffix == ".pkl":
            return cls._from_pickle(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                return cls(archive["points"], float(archive["bandwidth"]), archive["weights"])
        except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise UsageError(f"corrupt KDE file {path} ({exc}); delete it and rerun main_train_DeepFailGuard.py") from exc

    @classmethod
    def _from_pickle(cls, path: Path) -> "GaussianKDE":
        try:
            reference = RestrictedKDEUnpickler(io.BytesIO(path.read_bytes())).load()
        except pickle.UnpicklingError as exc:
            raise UsageError(f"refused {path}: {exc}") from exc
        except Exception as exc:  # truncated or garbled pickles raise many types
            raise UsageError(f"corrupt KDE pickle {path} ({type(exc).__name__}: {exc})") from exc
        try:
            return cls._from_scipy_state(vars(reference))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UsageError(f"{path} is not a usable one-dimensional gaussian_kde ({exc})") from exc

    @classmethod
    def _from_scipy_state(cls, state: dict) -> "GaussianKDE":
        """Rebuild from a ``gaussian_kde``'s attributes only (none of its methods is called)."""
        dataset = np.asarray(state["dataset"], dtype=np.float64)
        if dataset.ndim != 2 or dataset.shape[0] != 1:
            raise ValueError(f"expected a 1-D KDE, got data of shape {dataset.shape}")
        if "covariance" in state:
            variance = float(np.asarray(state["covariance"]).reshape(-1)[0])
        else:
            variance = float(np.asarray(state["_data_covariance"]).reshape(-1)[0]) * float(state["factor"]) ** 2
        weights = state.get("_weights")
        return cls(dataset[0], math.sqrt(variance), None if weights is None else weights)


class RestrictedKDEUnpickler(pickle.Unpickler):
    """Unpickles SciPy's ``gaussian_kde`` and NumPy arrays; any other global is refused unloaded."""

    ALLOWED = {
        ("scipy.stats._kde", "gaussian_kde"), ("scipy.stats.kde", "gaussian_kde"), ("scipy.stats", "gaussian_kde"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            if name == "gaussian_kde":
                from scipy.stats import gaussian_kde

                return gaussian_kde
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it references {module}.{name}, which could run code; only SciPy's gaussian_kde and NumPy arrays "
            "are accepted")
