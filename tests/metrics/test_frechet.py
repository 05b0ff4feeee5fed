"""Fréchet distance against SciPy's sqrtm reference; ADM .npz statistics round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from nar.errors import DataError
from nar.metrics import GaussianStats, frechet_distance, moments_from_sums


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The reference formula (pytorch-fid / ADM evaluator)."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim,n", [(8, 100), (32, 40), (64, 1000)])
def test_matches_scipy(dim, n):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(n, dim)) * 1.5 + 0.3
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)


def test_rank_deficient_covariance_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1  # n < d: singular covariances
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-5)


def test_one_rank_deficient_covariance_matches_scipy_either_way_round():
    """Few generated samples against a full-rank real set (the factor comes from the second covariance) and the other
    way round: the same distance as SciPy's."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(12, 48)) * 2, rng.normal(size=(500, 48)) + 0.5
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    for (mu1, s1), (mu2, s2) in (stats, stats[::-1]):
        ours = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
        assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_same_gaussian_is_zero():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(200, 16)))
    mu, sigma = moments_from_sums(x.sum(0), x.T @ x, x.shape[0])
    assert torch.allclose(mu, x.mean(0)) and torch.allclose(sigma, torch.cov(x.T))
    assert abs(frechet_distance(mu, sigma, mu, sigma).item()) < 1e-8


def test_npz_round_trip_and_adm_format(tmp_path):
    rng = np.random.default_rng(3)
    stats = GaussianStats(rng.normal(size=4), np.eye(4) * 2, count=7)
    loaded = GaussianStats.load_npz(stats.save_npz(tmp_path / "ref.npz"))
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma) and loaded.count == 7
    # An ADM-evaluator reference batch: arr_0 images plus mu/sigma (float32 there), no count.
    np.savez(tmp_path / "VIRTUAL_imagenet256.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8),
             mu=stats.mu.astype(np.float32), sigma=stats.sigma.astype(np.float32))
    adm = GaussianStats.load_npz(tmp_path / "VIRTUAL_imagenet256.npz")
    assert adm.count == 0 and adm.mu.dtype == np.float64 and np.allclose(adm.mu, stats.mu)
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros(3))
    with pytest.raises(DataError, match="mu"):
        GaussianStats.load_npz(tmp_path / "bad.npz")


@pytest.mark.parametrize("damage", ["not_npz", "truncated", "npy"])
def test_damaged_reference_files_name_the_path(tmp_path, damage):
    """A failed download (an HTML page), a cut-off archive or a bare .npy: DataError naming the file, from both
    the statistics reader and the registry's key listing."""
    from nar.metrics.registry import reference_keys

    path = tmp_path / "VIRTUAL_ref.npz"
    if damage == "not_npz":
        path.write_bytes(b"<html>this is not an npz file</html>")
    elif damage == "truncated":
        np.savez(path, mu=np.zeros(64), sigma=np.eye(64))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(4))
    for read in (GaussianStats.load_npz, reference_keys):
        with pytest.raises(DataError, match=r"VIRTUAL_ref\.npz"):
            read(str(path))


def test_the_callers_own_errors_pass_through_open_npz(tmp_path):
    """open_npz names the file for numpy's errors only: a ConfigError (a ValueError) raised by the caller inside the
    block is the caller's, not a 'damaged archive'."""
    from nar.errors import ConfigError
    from nar.metrics.frechet import open_npz

    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(4))
    with pytest.raises(ConfigError, match="the caller's"), open_npz(path):
        raise ConfigError("the caller's")


@pytest.mark.parametrize("n", [10, 100, 400])
def test_a_covariance_of_few_samples_takes_its_root_from_a_sketch_of_its_rank(n, monkeypatch):
    """Fewer samples than dimensions: the root comes from a seeded sketch of the covariance's range when its rank is
    small (10, 100 samples), else from the whole eigendecomposition (400 at D = 512): the same L Lᵀ and the same
    distance as SciPy's either way, and the whole eigendecomposition runs only when the sketch cannot hold the rank."""
    from nar.metrics import frechet as frechet_module

    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, 512)) @ rng.normal(size=(512, 512)) * 0.05, rng.normal(size=(n + 3, 512)) + 0.3
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    whole = []
    eigh = frechet_module._root_from_eigh
    monkeypatch.setattr(frechet_module, "_root_from_eigh",
                        lambda sigma, basis=None: whole.append(basis is None) or eigh(sigma, basis))
    root = frechet_module._low_rank_root(torch.from_numpy(s1))
    assert root.shape == (512, n - 1)  # the covariance's rank
    assert torch.allclose(root @ root.T, torch.from_numpy(s1), atol=1e-10 * np.abs(s1).max())
    assert any(whole) == (n - 1 > max(frechet_module._SKETCH_RANKS))
    ours = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)
