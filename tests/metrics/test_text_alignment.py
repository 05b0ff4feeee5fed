"""GenEvalShapes: rendered ground truth scores 1.0 in every family; noise scores ~0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nar.errors import ConfigError
from nar.metrics import GenEvalShapes
from nar.shapes import FAMILIES, render_scene, sample_scene


def _batch(family=None, n=30, seed=0):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, family) for _ in range(n)]
    images = torch.from_numpy(np.stack([render_scene(s, 64) for s in scenes])).permute(0, 3, 1, 2)
    return images, scenes


def test_ground_truth_scores_one_per_family():
    metric = GenEvalShapes()
    for i, family in enumerate(FAMILIES):
        images, scenes = _batch(family, n=12, seed=i)
        metric.update(images, [s.spec for s in scenes])
    out = metric.compute()
    assert set(out) == {"geneval_overall"} | {f"geneval_{f}" for f in FAMILIES}
    assert all(v.item() == 1.0 for v in out.values())


def test_accepts_float_images_scenes_and_json():
    images, scenes = _batch(n=12, seed=7)
    metric = GenEvalShapes()
    metric.update(images.float() / 127.5 - 1, scenes[:6] + [s.to_json() for s in scenes[6:]])
    assert metric.compute()["geneval_overall"].item() == 1.0


def test_noise_scores_near_zero():
    images, scenes = _batch(n=60, seed=8)
    noise = torch.randint(0, 256, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    metric = GenEvalShapes()
    metric.update(noise, [s.spec for s in scenes])
    assert metric.compute()["geneval_overall"].item() < 0.05


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_overall_is_the_mean_of_families():
    metric = GenEvalShapes()
    a, sa = _batch("colors", n=4, seed=1)
    b, sb = _batch("counting", n=2, seed=2)
    metric.update(torch.cat([a, 255 - b]), [s.spec for s in sa + sb])  # colors 1.0, counting 0.0
    out = metric.compute()
    assert out["geneval_colors"].item() == 1.0 and out["geneval_counting"].item() == 0.0
    assert out["geneval_overall"].item() == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        GenEvalShapes().compute()


def test_clip_score_needs_a_local_checkpoint(tmp_path):
    from nar.metrics import OpenCLIPScore

    with pytest.raises(ConfigError, match="open_clip_torch|not found"):
        OpenCLIPScore(tmp_path / "missing.bin")
