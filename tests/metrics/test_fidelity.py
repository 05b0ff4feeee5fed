"""ImageFidelity: FID equals torchmetrics on the same features, FID(set, set) ≈ 0, IS and PR equal torch-fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_helpers import TinyExtractor, random_images
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from nar.errors import ConfigError, DataError
from nar.metrics import GaussianStats, ImageFidelity
from nar.metrics.fidelity import canonical_order, kid


class _FeaturesOnly(nn.Module):
    """torchmetrics' custom-extractor interface: uint8 → [B, D]."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_features = inner.num_features

    def forward(self, x):
        return self.inner(x)["features"]


def test_fid_equals_torchmetrics(tiny_extractor):
    real, fake = random_images(64, seed=1), random_images(48, seed=2)
    ours = ImageFidelity(extractor=tiny_extractor)
    ref = FrechetInceptionDistance(feature=_FeaturesOnly(tiny_extractor))
    for chunk in real.split(20):
        ours.update(chunk, real=True)
        ref.update(chunk, real=True)
    for chunk in fake.split(20):
        ours.update(chunk, real=False)
        ref.update(chunk, real=False)
    assert ours.compute()["fid"].item() == pytest.approx(ref.compute().item(), rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero(tiny_extractor):
    images = random_images(64, seed=3)
    metric = ImageFidelity(extractor=tiny_extractor)
    metric.update(images, real=True)
    metric.update(images, real=False)
    assert abs(metric.compute()["fid"].item()) < 1e-6
    other = random_images(64, seed=4)
    metric.reset()
    metric.update(images, real=True)
    metric.update(other.flip(-1) // 2, real=False)
    assert metric.compute()["fid"].item() > 0.01


def test_float_inputs_match_uint8(tiny_extractor):
    images = random_images(32, seed=5)
    a, b = ImageFidelity(extractor=tiny_extractor), ImageFidelity(extractor=tiny_extractor, input_range=(0.0, 1.0))
    a.update(images, real=True)
    a.update(images.float() / 127.5 - 1, real=False)  # default input range [-1, 1]
    b.update(images, real=True)
    b.update(images.float() / 255, real=False)
    assert abs(a.compute()["fid"].item()) < 1e-6 and abs(b.compute()["fid"].item()) < 1e-6


def test_reference_statistics_equal_real_updates(tiny_extractor, tmp_path):
    real, fake = random_images(64, seed=6), random_images(40, seed=7)
    direct = ImageFidelity(extractor=tiny_extractor)
    direct.update(real, real=True)
    direct.update(fake, real=False)
    path = direct.real_stats().save_npz(tmp_path / "stats.npz")
    from_file = ImageFidelity(extractor=tiny_extractor)
    from_file.set_reference(path)
    from_file.update(fake, real=False)
    assert from_file.compute()["fid"].item() == pytest.approx(direct.compute()["fid"].item(), rel=1e-6)
    with pytest.raises(ConfigError, match="features"):
        from_file.set_reference(GaussianStats(np.zeros(3), np.eye(3)))


def test_keep_real_features_across_reset(tiny_extractor):
    real, fake = random_images(40, seed=8), random_images(40, seed=9)
    metric = ImageFidelity(extractor=tiny_extractor, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    first = metric.compute()["fid"].item()
    metric.reset()
    assert int(metric.real_count) == 40 and int(metric.fake_count) == 0
    metric.update(fake, real=False)
    assert metric.compute()["fid"].item() == pytest.approx(first, rel=1e-9)


def test_inception_score_and_precision_recall_equal_torch_fidelity(tiny_extractor):
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    real, fake = random_images(60, seed=10), random_images(50, seed=11)
    # 10 splits of 5 = torch-fidelity's 10 splits of N/10 (the ADM evaluator's 50k in splits of 5000 likewise)
    metric = ImageFidelity(metrics=("fid", "is", "pr"), extractor=tiny_extractor, is_split_size=5)
    metric.update(real, real=True)
    metric.update(fake[:25], real=False)
    metric.update(fake[25:], real=False)
    out = metric.compute()
    f_real, f_fake = tiny_extractor(real)["features"], tiny_extractor(fake)["features"]
    # IS scores the logits in canonical order (then torch-fidelity's seeded shuffle): same formula, same input
    isc = isc_features_to_metric(canonical_order(tiny_extractor(fake)["logits"]), splits=10)
    precision, recall = calculate_precision_recall_full(f_fake, f_real, neighborhood=3)
    assert out["is_mean"].item() == pytest.approx(isc["inception_score_mean"], rel=1e-5)
    assert out["is_std"].item() == pytest.approx(isc["inception_score_std"], rel=1e-4, abs=1e-6)
    assert out["precision"].item() == pytest.approx(precision) and out["recall"].item() == pytest.approx(recall)
    same = ImageFidelity(metrics=("pr",), extractor=tiny_extractor)
    same.update(real, real=True)
    same.update(real, real=False)
    assert same.compute()["precision"].item() == 1.0 and same.compute()["recall"].item() == 1.0


def _numpy_inception_score(logits: np.ndarray, split_size: int) -> tuple[float, float]:
    """The Inception Score by its formula, as the ADM evaluator scores it: per consecutive chunk of ``split_size``
    rows (the last one smaller), ``exp`` of the mean ``KL(p(y|x) ‖ p(y))`` with ``p(y)`` the chunk's mean; the mean
    (and std) over the chunks."""
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for start in range(0, len(p), split_size):
        part, log_part = p[start:start + split_size], log_p[start:start + split_size]
        scores.append(np.exp((part * (log_part - np.log(part.mean(0, keepdims=True)))).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_takes_chunks_of_split_size_as_the_adm_evaluator():
    """IS in chunks of ``is_split_size`` samples (the ADM evaluator's 5000), the last one smaller, not in 10 splits
    of N/10: at N below the split size it is the IS of all the samples (ADM's at 1k or 5k samples), and at N not a
    multiple of it the formula on consecutive chunks of the canonically ordered, seed-shuffled samples."""
    g = torch.Generator().manual_seed(2)
    n, size = 23, 5
    logits = 3 * torch.randn(n, 10, generator=g)
    feats = torch.randn(n, TinyExtractor.num_features, generator=g)
    whole = ImageFidelity(metrics=("is",), extractor=TinyExtractor())  # default 5000: one chunk of 23
    whole.update_features(feats, real=False, logits=logits)
    mean, std = _numpy_inception_score(logits.numpy(), n)
    assert whole.compute()["is_mean"].item() == pytest.approx(mean, rel=1e-6) and whole.compute()["is_std"] == 0
    chunked = ImageFidelity(metrics=("is",), extractor=TinyExtractor(), is_split_size=size)
    chunked.update_features(feats, real=False, logits=logits)
    order = torch.from_numpy(np.random.RandomState(2020).permutation(n))
    mean, std = _numpy_inception_score(canonical_order(logits)[order].numpy(), size)  # chunks 5, 5, 5, 5, 3
    assert chunked.compute()["is_mean"].item() == pytest.approx(mean, rel=1e-6)
    assert chunked.compute()["is_std"].item() == pytest.approx(std, rel=1e-6, abs=1e-6)
    with pytest.raises(ConfigError, match="is_split_size"):
        ImageFidelity(metrics=("is",), extractor=TinyExtractor(), is_split_size=0)


def test_validation():
    class NoLogits(TinyExtractor):
        has_logits = False

    with pytest.raises(ConfigError, match="logits"):
        ImageFidelity(metrics=("fid", "is"), extractor=NoLogits())
    with pytest.raises(ConfigError, match="subset of"):
        ImageFidelity(metrics=("fidd",), extractor=TinyExtractor())
    metric = ImageFidelity(extractor=TinyExtractor())
    with pytest.raises(ConfigError, match=r"\[B, 3, H, W\]"):
        metric.update(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), real=True)
    with pytest.raises(ConfigError, match="real"):
        metric.update(random_images(4, seed=0), real=False)
        metric.compute()


def test_canonical_order_depends_only_on_the_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    x[10] = x[3]  # a repeated row
    x[20, 0] = x[5, 0]  # a tie in the first column only
    a = canonical_order(x)
    assert torch.equal(a, canonical_order(x[torch.randperm(50, generator=g)]))
    assert sorted(map(tuple, a.tolist())) == [tuple(r) for r in a.tolist()]  # lexicographic
    assert torch.equal(canonical_order(x.double()), a.double())


def test_inception_score_and_kid_do_not_depend_on_the_sample_order():
    """The same samples fed in two orders (in order, and rank-major as a 2-rank DDP gather returns the decoding
    callback's chunks: 0, 2, 4, …, then 1, 3, 5, …) give identical IS and KID."""
    g = torch.Generator().manual_seed(1)
    n, chunk = 300, 30
    feats_fake, feats_real = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g) + 0.1
    logits = 3 * torch.randn(n, 10, generator=g)
    chunks = torch.arange(n).split(chunk)
    orders = (torch.arange(n), torch.cat(chunks[0::2] + chunks[1::2]))
    scores = []
    for order in orders:
        metric = ImageFidelity(metrics=("is",), extractor=TinyExtractor(), is_split_size=7)  # 42 chunks of 7, one of 6
        metric.update_features(feats_fake[order], real=False, logits=logits[order])
        scores.append(metric.compute())
    assert scores[0]["is_mean"].item() == scores[1]["is_mean"].item()
    assert scores[0]["is_std"].item() == scores[1]["is_std"].item()
    # KID's subsets (here 100 of 300 samples, as ImageFidelity's 1000 of more) select rows by index
    kids = [kid(feats_fake[order], feats_real[order], subsets=20, subset_size=100) for order in orders]
    assert kids[0]["kid_mean"].item() == kids[1]["kid_mean"].item()
    assert kids[0]["kid_std"].item() == kids[1]["kid_std"].item()


@pytest.mark.parametrize(("metrics", "missing"), [(("pr",), "generated features"), (("kid",), "generated features"),
                                                  (("is",), "logits")])
def test_no_generated_samples_is_a_clear_error(metrics, missing):
    metric = ImageFidelity(metrics=metrics, extractor=TinyExtractor())
    metric.update(random_images(12, seed=1), real=True)
    with pytest.raises(ConfigError, match=f"no generated samples.*{missing}"):
        metric.compute()


def test_update_features_goes_through_the_update_wrapper(tiny_extractor, recwarn):
    """``update_features`` (the decoding callback's cached real features) counts as an update: a later compute()
    sees the new features instead of the cached earlier result, and compute() does not warn of no update."""
    real, fake = random_images(24, seed=12), random_images(24, seed=13)
    metric = ImageFidelity(extractor=tiny_extractor)
    metric.update_features(tiny_extractor(real)["features"], real=True)
    metric.update_features(tiny_extractor(fake)["features"], real=False)
    assert metric.update_count == 2
    first = metric.compute()["fid"].item()
    assert not [w for w in recwarn if "compute" in str(w.message)]
    metric.update_features(tiny_extractor(fake)["features"] * 5 + 3, real=False)
    fresh = ImageFidelity(extractor=tiny_extractor)
    fresh.update(real, real=True)
    fresh.update(fake, real=False)
    fresh.update_features(tiny_extractor(fake)["features"] * 5 + 3, real=False)
    assert metric.compute()["fid"].item() != first
    assert metric.compute()["fid"].item() == pytest.approx(fresh.compute()["fid"].item(), rel=1e-9)


@pytest.mark.parametrize("reset_real_features", [True, False])
def test_forward_only_updates(tiny_extractor, reset_real_features):
    """``metric(images, real=...)`` adds the batch once and returns None (a per-batch FID means nothing); the kept
    real statistics are not counted twice, and a batch of one side only does not raise."""
    real, fake = random_images(20, seed=14), random_images(20, seed=15)
    called = ImageFidelity(metrics=("fid", "pr"), extractor=tiny_extractor, reset_real_features=reset_real_features)
    updated = ImageFidelity(metrics=("fid", "pr"), extractor=tiny_extractor, reset_real_features=reset_real_features)
    assert called(real, real=True) is None
    assert called(fake, real=False) is None
    updated.update(real, real=True)
    updated.update(fake, real=False)
    assert int(called.real_count) == int(updated.real_count) == real.shape[0]
    assert sum(t.shape[0] for t in called.real_features) == real.shape[0]
    assert int(called.fake_count) == fake.shape[0] and called.update_count == 2
    ours, reference = called.compute(), updated.compute()
    assert all(ours[k].item() == pytest.approx(reference[k].item(), rel=1e-9) for k in reference)


class _SpatialTiny(TinyExtractor):
    """TinyExtractor with sFID's spatial features (the first 8 feature columns, enough for the tests)."""

    spatial = True
    num_spatial = 8

    def forward(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images_uint8)
        return {**out, "spatial": out["features"][:, : self.num_spatial]}


def test_rejected_reference_leaves_the_metric_unchanged(tmp_path):
    """set_reference validates everything (FID and sFID sides) before applying any of it."""
    extractor = _SpatialTiny().eval()
    metric = ImageFidelity(metrics=("fid", "sfid"), extractor=extractor)
    real = random_images(24, seed=16)
    metric.update(real, real=True)
    before = metric.real_stats()
    stats = GaussianStats(np.zeros(extractor.num_features), np.eye(extractor.num_features))
    with pytest.raises(ConfigError, match="pass the reference batch .npz path"):
        metric.set_reference(stats)  # in memory: no mu_s/sigma_s
    np.savez(tmp_path / "fid_only.npz", mu=stats.mu, sigma=stats.sigma)
    with pytest.raises(DataError, match=r"fid_only\.npz.*mu_s"):
        metric.set_reference(tmp_path / "fid_only.npz")
    np.savez(tmp_path / "narrow_s.npz", mu=stats.mu, sigma=stats.sigma, mu_s=np.zeros(3), sigma_s=np.eye(3))
    with pytest.raises(ConfigError, match=r"narrow_s\.npz: mu_s has 3 features"):
        metric.set_reference(tmp_path / "narrow_s.npz")
    assert np.array_equal(metric.real_stats().mu, before.mu)
