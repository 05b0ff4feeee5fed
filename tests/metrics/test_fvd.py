"""FVD with a local I3D TorchScript (StyleGAN-V calling convention), and the separately named proxy."""

from __future__ import annotations

import pytest
import torch
from metric_helpers import TinyExtractor, random_images
from torch import nn

from nar.errors import ConfigError
from nar.metrics import FrechetVideoDistance, FVDProxyInception
from nar.metrics.fvd import I3D_MIN_FRAMES

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


class TinyI3D(nn.Module):
    """Same signature as StyleGAN-V's i3d_torchscript.pt; asserts the input convention."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 12, kernel_size=(2, 16, 16), stride=(1, 16, 16))

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        assert x.shape[-1] == 224 and x.shape[-2] == 224
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        return torch.tanh(self.conv(x)).mean(dim=(2, 3, 4))


def _videos(n: int, seed: int, t: int = 4) -> torch.Tensor:
    """uint8 [n, 3, t, 32, 32]."""
    return random_images(n * t, seed=seed).reshape(n, t, 3, 32, 32).transpose(1, 2)


@pytest.fixture
def i3d_path(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def test_fvd_with_torchscript_detector(i3d_path):
    real, fake = _videos(20, seed=1, t=I3D_MIN_FRAMES), _videos(20, seed=2, t=I3D_MIN_FRAMES)
    metric = FrechetVideoDistance(i3d_path, num_features=12)
    metric.update(real, real=True)
    metric.update(real.float() / 127.5 - 1, real=False)  # float in [-1, 1] == the same uint8 videos
    assert abs(metric.compute()["fvd"].item()) < 1e-5
    metric.reset()
    metric.update(real, real=True)
    metric.update(fake.flip(-1), real=False)
    assert metric.compute()["fvd"].item() > 0


def test_clips_too_short_for_the_i3d_are_refused_before_it_runs(i3d_path):
    """The Kinetics I3D halves time three times before a 2-frame pooling: a shorter clip ended in a shape error
    inside the TorchScript; now a ConfigError naming the clip's frames and the minimum, nothing counted."""
    metric = FrechetVideoDistance(i3d_path, num_features=12)
    short = I3D_MIN_FRAMES - 1
    with pytest.raises(ConfigError, match=rf"clips of {short} frames.*at least {I3D_MIN_FRAMES} frames"):
        metric.update(_videos(2, seed=1, t=short), real=True)
    assert int(metric.real_count) == 0
    metric.update(_videos(2, seed=1, t=I3D_MIN_FRAMES), real=True)
    assert int(metric.real_count) == 2


def test_missing_detector_points_to_the_proxy(tmp_path):
    with pytest.raises(ConfigError, match="fvd_proxy_inception"):
        FrechetVideoDistance(tmp_path / "nope.pt")


def test_proxy_is_named_apart_and_sees_motion():
    extractor = TinyExtractor().eval()
    still = random_images(16, seed=3)[:, :, None].expand(-1, -1, 4, -1, -1)  # [16, 3, 4, 32, 32] static
    moving = _videos(16, seed=3)
    metric = FVDProxyInception(extractor=extractor)
    metric.update(still, real=True)
    metric.update(still, real=False)
    out = metric.compute()
    assert set(out) == {"fvd_proxy_inception"} and abs(out["fvd_proxy_inception"].item()) < 1e-6
    metric.reset()
    metric.update(still, real=True)
    metric.update(moving, real=False)
    assert metric.compute()["fvd_proxy_inception"].item() > 0.01


@pytest.mark.parametrize("reset_real_features", [True, False])
def test_forward_only_updates(reset_real_features):
    """``metric(videos, real=...)`` adds the batch once and returns None: no per-batch FVD, no double count."""
    real, fake = _videos(6, seed=4), _videos(6, seed=5)
    called = FVDProxyInception(extractor=TinyExtractor().eval(), reset_real_features=reset_real_features)
    updated = FVDProxyInception(extractor=TinyExtractor().eval(), reset_real_features=reset_real_features)
    assert called(real, real=True) is None and called(fake, real=False) is None
    updated.update(real, real=True)
    updated.update(fake, real=False)
    assert int(called.real_count) == int(called.fake_count) == real.shape[0]
    assert called.compute()["fvd_proxy_inception"].item() == pytest.approx(
        updated.compute()["fvd_proxy_inception"].item(), rel=1e-9)


@pytest.mark.parametrize("reset_real_features", [True, False])
def test_clips_of_another_length_are_refused(reset_real_features):
    """Real 8-frame clips against generated 4-frame ones scored a number; now refused, naming both lengths. A
    reset forgets the generated side's length (and the real side's when it resets the real features)."""
    metric = FVDProxyInception(extractor=TinyExtractor(), reset_real_features=reset_real_features)
    clips = torch.rand(2, 3, 8, 16, 16)
    metric.update(clips, real=True)
    with pytest.raises(ConfigError, match="generated clips of 4 frames against real clips of 8 frames"):
        metric.update(clips[:, :, :4], real=False)
    metric.update(clips, real=False)
    metric.reset()
    if reset_real_features:
        metric.update(clips[:, :, :4], real=False)  # nothing kept: any length starts again
    else:
        with pytest.raises(ConfigError, match="against real clips of 8 frames"):
            metric.update(clips[:, :, :4], real=False)
