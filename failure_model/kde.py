"""One-dimensional Gaussian kernel density estimates: fit, exact fast log-density, files.

The failure model of a version is two of these (distances of correctly and of wrongly classified
validation inputs). Fitting uses SciPy's ``gaussian_kde`` (Scott's rule), so the densities are the
paper's; evaluation is the same mixture of Gaussians computed as a chunked log-sum-exp in float64,
which is exact (no binning, no truncation) and never underflows to ``log 0`` where SciPy's ``pdf``
would.

It is kept for speed at the evaluation's size. Measured against the obvious replacement, one
vectorised ``gaussian_kde(points, bw_method=...).logpdf(queries)`` call with the same bandwidth
(benchmarks/bench_evaluation.py, 2026-11-26, shared 2-core CPU, medians of 3): 10,000 points ×
10,000 queries take 0.55 s here against SciPy's 3.05 s (5.5x faster); the gain shrinks with fewer
points (1.4x at 2,000 × 10,000, a wrong-answer KDE's size) and at 1,000 × 1,000 SciPy is as fast or
faster (0.07 s against 0.10 s). The two log densities agree to 1.3e-13.

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
from scipy.stats import gaussian_kde

from storage.files import atomic_save_npz, is_numpy_array_global
from utils import UsageError

#: elements of the (queries × points) matrix evaluated at once; bounds memory to ~64 MB
CHUNK_ELEMENTS = 1 << 23
FALLBACK_BANDWIDTH = 1e-3
#: terms of the series in the block expansion (its remainder is below 1e-19 of the sum)
SERIES_TERMS = 14
PICKLE_REMEDY = "replace it with the paper's original file, or delete the pair and run main_train_DeepFailGuard.py"


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
        reference = gaussian_kde(points)
        return cls(points, math.sqrt(float(reference.covariance[0, 0])))

    # -----------------------------------------------------------------------------------------
    # evaluation
    # -----------------------------------------------------------------------------------------

    def logpdf(self, x) -> np.ndarray:
        """log f(x), vectorised, exact to float64 rounding; -inf only for the empty density."""
        x = np.asarray(x, dtype=np.float64)
        if self.n == 0:
            return np.full(x.shape, -np.inf)
        queries = torch.from_numpy(np.ascontiguousarray(x.reshape(-1))) / self.bandwidth
        points = torch.from_numpy(self.points) / self.bandwidth
        log_weights = torch.from_numpy(np.log(self.weights, where=self.weights > 0, out=np.full(self.n, -np.inf)))
        query_blocks, point_blocks = torch.floor(queries).unique(), torch.floor(points).unique()
        expansion_cost = SERIES_TERMS * (len(query_blocks) * self.n + len(queries) * len(point_blocks))
        if len(queries) and expansion_cost < len(queries) * self.n:  # measured break-even: both about equal
            log_sums = _block_expansion_logsumexp(queries, points, log_weights, query_blocks, point_blocks)
        else:
            log_sums = _direct_logsumexp(queries, points, log_weights)
        log_sums -= math.log(self.bandwidth) + 0.5 * math.log(2 * math.pi)
        return log_sums.numpy().reshape(x.shape)

    def pdf(self, x) -> np.ndarray:
        return np.exp(self.logpdf(x))

    __call__ = pdf  # as SciPy's gaussian_kde, which the paper's code calls as kde(x)

    # -----------------------------------------------------------------------------------------
    # files
    # -----------------------------------------------------------------------------------------

    #: the distance mode whose distances the KDE was fitted on (``settings.DistanceSettings.mode``), as its file
    #: records it; None for a file that does not say (the paper's pickles and older files: DeepFool's)
    distance: str | None = None

    def save(self, path, distance: str | None = None) -> None:
        """Write the KDE, recording the distance mode its points were measured with where given."""
        extra = {} if distance is None else {"distance": np.array(distance)}
        atomic_save_npz(path, points=self.points, weights=self.weights, bandwidth=np.float64(self.bandwidth), **extra)

    @classmethod
    def load(cls, path) -> "GaussianKDE":
        """Read our ``.npz`` or the paper's ``.pkl``; a missing, corrupt or hostile file is a UsageError."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"missing KDE file {path}: run main_train_DeepFailGuard.py first")
        if path.suffix == ".pkl" and not zipfile.is_zipfile(path):  # ours, saved under a paper-style name
            return cls._from_pickle(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                kde = cls(archive["points"], float(archive["bandwidth"]), archive["weights"])
                if "distance" in archive.files:
                    kde.distance = str(archive["distance"])
                return kde
        # TypeError: the file holds a single .npy array, which is no context manager
        except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            raise UsageError(f"corrupt KDE file {path} ({exc}); "
                             "delete it and rerun main_train_DeepFailGuard.py") from exc

    @classmethod
    def _from_pickle(cls, path: Path) -> "GaussianKDE":
        try:
            reference = RestrictedKDEUnpickler(io.BytesIO(path.read_bytes())).load()
        except RefusedGlobal as exc:
            raise UsageError(f"refused {path}: {exc}") from exc
        except Exception as exc:  # truncated or garbled pickles raise many types
            raise UsageError(f"corrupt KDE pickle {path} ({type(exc).__name__}: {exc}); {PICKLE_REMEDY}") from exc
        try:
            return cls._from_scipy_state(vars(reference))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UsageError(f"{path} is not a usable one-dimensional gaussian_kde ({exc}); {PICKLE_REMEDY}") from exc

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
        kde = cls(dataset[0], math.sqrt(variance), None if weights is None else weights)
        if "cho_cov" in state:  # SciPy's kernel width as it evaluates it (the paper's arithmetic, paper.py)
            kde.scipy_cho_cov = float(np.asarray(state["cho_cov"], dtype=np.float64).reshape(-1)[0])
            if not math.isclose(kde.scipy_cho_cov, kde.bandwidth, rel_tol=1e-9):
                raise ValueError(f"cho_cov {kde.scipy_cho_cov} disagrees with sqrt(covariance) {kde.bandwidth}")
        return kde


def _direct_logsumexp(queries: torch.Tensor, points: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """log Σ_i w_i exp(-(q - p_i)² / 2) for every query (bandwidth 1), term by term in chunks."""
    out = torch.empty(len(queries), dtype=torch.float64)
    chunk = max(1, CHUNK_ELEMENTS // len(points))
    for start in range(0, len(queries), chunk):
        z = queries[start:start + chunk, None] - points[None, :]
        out[start:start + chunk] = torch.logsumexp(log_weights - 0.5 * z * z, dim=1)
    return out


def _block_expansion_logsumexp(queries: torch.Tensor, points: torch.Tensor, log_weights: torch.Tensor,
                               query_blocks: torch.Tensor, point_blocks: torch.Tensor) -> torch.Tensor:
    """The same sums as :func:`_direct_logsumexp`, through a separable expansion over unit blocks.

    Queries and points are grouped in unit-width blocks (one bandwidth) with centres d and c. For a
    query x = d + u and a point p = c + v (|u|, |v| <= 1/2, Δ = d − c):

        exp(-(x − p)²/2) = exp(-(x − c)²/2) · exp(Δ·v − v²/2) · Σ_k (u·v)^k / k!

    so every (query block, point block) pair needs only the moments Σ_p w_p exp(Δ·v − v²/2) v^k.
    With |u·v| <= 1/4 and SERIES_TERMS = 14 terms the series' remainder is below 1e-19 of the
    sum, and every term is positive up to that remainder, so the result equals the direct sum up
    to float64 rounding, at a fraction of its cost when there are many points per block (5.5x faster
    than SciPy's ``logpdf`` at 10,000 × 10,000, see the module's docstring). Logs carry the scale
    throughout.
    """
    point_index = torch.bucketize(torch.floor(points), point_blocks)
    query_index = torch.bucketize(torch.floor(queries), query_blocks)
    point_centres, query_centres = point_blocks + 0.5, query_blocks + 0.5
    v = points - point_centres[point_index]
    u = queries - query_centres[query_index]
    n_qb, n_pb = len(query_blocks), len(point_blocks)
    # exponent of every (query block, point) term, and its maximum per (query block, point block)
    delta = query_centres[:, None] - point_centres[None, :]  # (query blocks, point blocks)
    exponent = delta[:, point_index] * v - 0.5 * v * v + log_weights  # (query blocks, points)
    scale = torch.full((n_qb, n_pb), -math.inf, dtype=torch.float64)
    scale.scatter_reduce_(1, point_index.expand(n_qb, -1), exponent, reduce="amax")
    weights = torch.exp(exponent - scale[:, point_index])  # (query blocks, points)
    moments = torch.zeros((SERIES_TERMS, n_qb, n_pb), dtype=torch.float64)
    for k in range(SERIES_TERMS):  # moments[k] = Σ_p weight · v^k per point block
        moments[k].index_add_(1, point_index, weights)
        weights = weights * v
    factorials = torch.exp(torch.lgamma(torch.arange(1, SERIES_TERMS + 1, dtype=torch.float64)))
    u_series = u[:, None] ** torch.arange(SERIES_TERMS, dtype=torch.float64) / factorials  # (queries, k)
    moments = moments.permute(1, 0, 2).contiguous()  # (query blocks, k, point blocks)
    sums = torch.empty((len(queries), n_pb), dtype=torch.float64)
    chunk = max(1, CHUNK_ELEMENTS // (SERIES_TERMS * n_pb))
    for start in range(0, len(queries), chunk):  # each query's series against its block's moments
        rows = slice(start, start + chunk)
        sums[rows] = torch.bmm(u_series[rows, None, :], moments[query_index[rows]]).squeeze(1)
    log_terms = sums.clamp_min(torch.finfo(torch.float64).tiny).log() + scale[query_index] \
        - 0.5 * (queries[:, None] - point_centres[None, :]) ** 2
    return torch.logsumexp(log_terms, dim=1)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names something outside the allow-list (it could run code): refused, never loaded."""


class RestrictedKDEUnpickler(pickle.Unpickler):
    """Unpickles SciPy's ``gaussian_kde`` and NumPy arrays; any other global is refused unloaded."""

    #: besides NumPy's array globals (one allow-list, in storage.py): SciPy's KDE class and the plain
    #: object machinery; protocols 0-2 write the Python 2 names and pickle bytes as _codecs.encode(text, "latin1")
    ALLOWED = {
        ("scipy.stats._kde", "gaussian_kde"), ("scipy.stats.kde", "gaussian_kde"), ("scipy.stats", "gaussian_kde"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
        ("copy_reg", "_reconstructor"), ("__builtin__", "object"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if name == "gaussian_kde" and (module, name) in self.ALLOWED:
            return gaussian_kde
        if (module, name) in self.ALLOWED or is_numpy_array_global(module, name):
            return super().find_class(module, name)
        raise RefusedGlobal(
            f"it references {module}.{name}, which could run code; only SciPy's gaussian_kde and NumPy arrays "
            "are accepted")
