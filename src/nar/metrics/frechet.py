"""Fréchet distance between Gaussians, and reference statistics in the ADM-evaluator ``.npz`` format."""

from __future__ import annotations

import contextlib
import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from nar.errors import DataError, NarError

# Ranks a covariance of few samples is tried at before a full eigendecomposition: the tiny validations of a CPU
# run and of the tests (FVD's Inception proxy is 4096-dimensional: its eigendecomposition takes ~12 s on 2 cores)
_SKETCH_RANKS = (64, 256)


def _root_from_eigh(sigma: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """``V Λ^½`` over the eigenvalues of ``Σ`` (of ``Qᵀ Σ Q`` mapped back through ``Q`` = ``basis``) above round-off."""
    small = sigma if basis is None else basis.T @ sigma @ basis
    eigvals, eigvecs = torch.linalg.eigh((small + small.T) / 2)
    keep = eigvals > eigvals[-1].clamp_min(0) * sigma.shape[0] * torch.finfo(sigma.dtype).eps
    root = eigvecs[:, keep] * eigvals[keep].sqrt()
    return root if basis is None else basis @ root


def _low_rank_root(sigma: torch.Tensor) -> torch.Tensor:
    """``L`` ``[D, r]`` with ``Σ = L Lᵀ`` for a symmetric PSD ``Σ``: ``V Λ^½`` over its ``r`` eigenvalues above
    round-off (the others are zero up to it: fewer samples than dimensions give a covariance of rank below D).

    A covariance of few samples has a small rank: its range is first sought in ``Σ Ω`` for a seeded Gaussian
    ``Ω`` of ``k`` columns (:data:`_SKETCH_RANKS`), and the result taken only when ``Σ − L Lᵀ`` is round-off;
    otherwise (a rank above ``k``) the full eigendecomposition of ``Σ``."""
    d = sigma.shape[0]
    eps = torch.finfo(sigma.dtype).eps
    generator = torch.Generator(device=sigma.device).manual_seed(0)
    for k in _SKETCH_RANKS:
        if 2 * k > d:  # no cheaper than the whole
            break
        probe = torch.randn(d, k, generator=generator, dtype=sigma.dtype, device=sigma.device)
        basis, _ = torch.linalg.qr(sigma @ probe)
        root = _root_from_eigh(sigma, basis)
        top = sigma.diagonal().max().clamp_min(0)  # ≥ |Σ_ij| for a PSD Σ
        if torch.linalg.matrix_norm(sigma - root @ root.T) <= 10 * d * eps * top * d ** 0.5:
            return root
    return _root_from_eigh(sigma)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)`` in float64; ``mu*`` ``[D]``, ``sigma*`` ``[D, D]``.

    ``tr((Σ1 Σ2)^½)`` is the sum of the square roots of the eigenvalues of ``Σ1 Σ2`` (or ``Σ2 Σ1``: the same),
    which are those of the symmetric ``Lᵀ Σ2 L`` for any ``Σ1 = L Lᵀ``: the Cholesky factor of whichever
    covariance is positive definite (more samples than dimensions; 3-4x faster than an eigendecomposition at
    D = 2048), else :func:`_low_rank_root`, which keeps only the covariance's rank so that ``Lᵀ Σ2 L`` is small.
    Equals SciPy's ``sqrtm`` reference (tested).
    """
    mu1, mu2 = mu1.double(), mu2.double()
    sigma1, sigma2 = sigma1.double(), sigma2.double()
    for first, second in ((sigma1, sigma2), (sigma2, sigma1)):
        root, info = torch.linalg.cholesky_ex(first)
        if int(info) == 0:
            other = second
            break
    else:
        root, other = _low_rank_root(sigma1), sigma2
    middle = root.T @ other @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt


def moments_from_sums(total: torch.Tensor, outer: torch.Tensor, count: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` from ``Σx``, ``Σxxᵀ`` and ``n`` (float64)."""
    n = float(count)
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {int(n)}")
    mu = total.double() / n
    sigma = (outer.double() - n * torch.outer(mu, mu)) / (n - 1)
    return mu, sigma


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


@contextlib.contextmanager
def open_npz(path: str | Path) -> Iterator[np.lib.npyio.NpzFile]:
    """``np.load`` of an ``.npz`` archive; a damaged or non-npz file (a failed download's HTML page, a cut-off
    archive, a bare ``.npy``), whether found on opening or on reading an array, is a :class:`DataError` naming
    ``path`` instead of numpy's unnamed errors."""
    try:
        data = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise DataError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    with data:
        try:
            yield data
        except NarError:  # the caller's own errors (a ConfigError is a ValueError too) pass as they are
            raise
        except _NPZ_ERRORS as err:
            raise DataError(f"{path}: damaged .npz archive ({type(err).__name__}: {err})") from err


@dataclasses.dataclass
class GaussianStats:
    """Feature mean ``[D]`` and covariance ``[D, D]`` (float64 numpy), and the sample count when known."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int = 0

    def save_npz(self, path: str | Path, spatial: GaussianStats | None = None) -> Path:
        """Write the ADM-evaluator format (``mu``, ``sigma``), plus ``count``; ``spatial``: also the sFID statistics
        as ``mu_s``/``sigma_s`` (a reference batch's keys, read back by :meth:`load_npz` with ``suffix="_s"``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {"mu": self.mu.astype(np.float64), "sigma": self.sigma.astype(np.float64), "count": np.int64(self.count)}
        if spatial is not None:
            arrays.update(mu_s=spatial.mu.astype(np.float64), sigma_s=spatial.sigma.astype(np.float64))
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load_npz(cls, path: str | Path, suffix: str = "") -> GaussianStats:
        """Read ``mu`` and ``sigma`` from an ADM-evaluator reference batch or a file written by :meth:`save_npz`;
        ``suffix="_s"`` reads the reference batch's spatial statistics ``mu_s``/``sigma_s`` (sFID)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"statistics file not found: {path}")
        mu_key, sigma_key = f"mu{suffix}", f"sigma{suffix}"
        with open_npz(path) as data:
            if mu_key not in data or sigma_key not in data:
                raise DataError(f"{path} has no '{mu_key}'/'{sigma_key}' arrays (keys: {sorted(data.keys())}); "
                                "expected an ADM-evaluator reference batch or `nar eval-samples --save-ref` output")
            mu, sigma = data[mu_key].astype(np.float64), data[sigma_key].astype(np.float64)
            count = int(data["count"]) if "count" in data else 0
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
        return cls(mu, sigma, count)
