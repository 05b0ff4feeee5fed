"""KID: the unbiased kernel distance the small-sample ablations report beside FID."""

from __future__ import annotations

import torch
from metric_helpers import TinyExtractor, random_images

from nar.metrics import ImageFidelity


def _kid(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    metric = ImageFidelity(metrics=("fid", "kid"), extractor=TinyExtractor())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return {k: float(v) for k, v in metric.compute().items()}


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    same = _kid(random_images(64, seed=1), random_images(64, seed=2))
    shifted = _kid(random_images(64, seed=1), (random_images(64, seed=2).int() // 2).to(torch.uint8))
    assert {"fid", "kid_mean", "kid_std"} <= set(same)
    assert abs(same["kid_mean"]) < 0.1 * shifted["kid_mean"] and shifted["kid_mean"] > 0
