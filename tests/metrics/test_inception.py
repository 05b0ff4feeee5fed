"""The offline standard FID network: fid-helper's TorchScript converted into torch-fidelity's InceptionV3."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from nar.errors import ConfigError
from nar.metrics import ImageFidelity, InceptionV3Extractor, convert_fid_helper_inception
from nar.metrics.inception import fid_helper_torchscript

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    # verify=False: the end-to-end test below makes the same comparison (through the resize too)
    return convert_fid_helper_inception(dst=tmp_path_factory.mktemp("cache") / "inception.pth", verify=False)


def test_conversion_matches_the_torchscript_end_to_end(converted):
    """Same features as fid-helper's net fed the TF1-style 299-px resize torch-fidelity uses."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    assert json.loads(converted.with_suffix(".json").read_text())["has_logits"] is False
    extractor = InceptionV3Extractor(converted)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(fid_helper_torchscript()), map_location="cpu")
    resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        expected = scripted(resized / 128 - 1)
    out = extractor(images)
    assert set(out) == {"features"} and out["features"].shape == (2, 2048)
    torch.testing.assert_close(out["features"], expected, atol=1e-3, rtol=1e-4)


def test_inception_score_is_refused_without_logits(converted):
    with pytest.raises(ConfigError, match="logits"):
        ImageFidelity(metrics=("fid", "is"), extractor=InceptionV3Extractor(converted))


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        InceptionV3Extractor(tmp_path / "missing.pth")


@pytest.mark.slow
def test_real_inception_fid_on_shapes_equals_torchmetrics(converted):
    """FID with the real network: ≈ 0 against itself, and equal to torchmetrics' FID with the same weights."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from nar.shapes import render_scene, sample_scene

    rng = np.random.default_rng(0)

    def renders(n):
        return torch.from_numpy(np.stack([render_scene(sample_scene(rng), 64) for _ in range(n)])).permute(0, 3, 1, 2)

    a, b = renders(64), renders(64)
    ours = ImageFidelity(extractor=InceptionV3Extractor(converted))
    ours.update(a, real=True)
    ours.update(a, real=False)
    assert abs(ours.compute()["fid"].item()) < 1e-2
    ours.reset()
    ours.update(a, real=True)
    ours.update(b, real=False)
    ref = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(converted), antialias=False)
    ref.set_dtype(torch.float64)
    ref.update(a, real=True)
    ref.update(b, real=False)
    fid = ours.compute()["fid"].item()
    assert fid > 1.0
    assert fid == pytest.approx(ref.compute().item(), rel=1e-3)
