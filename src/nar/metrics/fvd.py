"""FVD with a local I3D TorchScript, and a clearly separate Inception-based proxy when none is configured.

FVD follows the StyleGAN-V / LARP convention for ``i3d_torchscript.pt``: input ``float [B, 3, T, 224, 224]``
in ``[-1, 1]``, called with ``rescale=False, resize=False, return_features=True`` → ``[B, 400]``.
Without that file the suite reports ``fvd_proxy_inception`` (per-frame Inception pool features plus
their mean absolute temporal difference): useful for comparing our own runs, never comparable with
published FVD, and never reported under that name.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from nar.errors import ConfigError
from nar.metrics.fidelity import GaussianPairMetric, default_extractor, to_uint8

I3D_SIZE = 224
# The shortest clip the Kinetics-400 I3D (StyleGAN-V's i3d_torchscript.pt, built on kinetics_i3d_pytorch) takes:
# time passes Conv3d_1a (kernel 7, stride 2, padding 2+3: T -> floor(T/2)), MaxPool3d_4a (kernel 3, stride 2,
# padding 0+1, ceil mode: -> ceil(T/2)) and MaxPool3d_5a (kernel 2, stride 2, ceil mode: -> ceil(T/2)) before a
# 2-frame average pooling without padding, which needs 2 steps: 10 -> 5 -> 3 -> 2, while 9 -> 4 -> 2 -> 1.
I3D_MIN_FRAMES = 10


def _check_videos(videos: torch.Tensor) -> None:
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ConfigError(f"expected videos [B, 3, T, H, W], got shape {tuple(videos.shape)}")


class _SameClipLength(GaussianPairMetric):
    """Real and generated clips of one score have one length: features of 16-frame clips against 4-frame ones
    give a number that means nothing (real clips written with other ``--frames`` than the tokenizer's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clip_frames: dict[str, int] = {}  # frames per clip of each side seen so far

    def _check_length(self, frames: int, real: bool) -> None:
        lengths = self._clip_frames
        side, other = ("real", "generated") if real else ("generated", "real")
        for name in (side, other):
            if lengths.get(name, frames) != frames:
                raise ConfigError(f"{side} clips of {frames} frames against {name} clips of {lengths[name]} frames: "
                                  "a video distance compares clips of one length (write the real clips with the "
                                  "tokenizer's frame count)")
        lengths[side] = frames

    def reset(self) -> None:
        super().reset()
        self._clip_frames.pop("generated", None)
        if self.reset_real_features:
            self._clip_frames.pop("real", None)


class FrechetVideoDistance(_SameClipLength):
    """FVD. ``update(videos, real)`` with ``videos`` ``[B, 3, T, H, W]``, uint8 or float in ``input_range``;
    ``T >= I3D_MIN_FRAMES`` (10), the shortest clip the I3D takes.

    Args:
        i3d_path: the I3D TorchScript file (required; nothing is downloaded).
        num_features: I3D feature size (400 for the Kinetics-400 detector).
    """

    higher_is_better = False

    def __init__(self, i3d_path: str | Path, input_range: tuple[float, float] = (-1.0, 1.0),
                 num_features: int = 400, reset_real_features: bool = True, **kwargs) -> None:
        path = Path(i3d_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"I3D TorchScript not found: {path} (set eval.i3d_path; without it use "
                              "FVDProxyInception, reported as fvd_proxy_inception)")
        super().__init__(num_features, reset_real_features=reset_real_features, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector = torch.jit.load(str(path), map_location="cpu").eval()
        object.__setattr__(self, "_detector", detector)
        self.input_range = input_range

    @torch.no_grad()
    def update(self, videos: torch.Tensor, real: bool) -> None:
        _check_videos(videos)
        b, _, t, h, w = videos.shape
        if t < I3D_MIN_FRAMES:  # else a shape error deep inside the TorchScript
            raise ConfigError(f"FVD: clips of {t} frames; the I3D detector takes clips of at least {I3D_MIN_FRAMES} "
                              "frames (it halves time three times before a 2-frame pooling): score longer clips, or "
                              "leave eval.i3d_path unset for fvd_proxy_inception (2 frames or more)")
        self._check_length(t, real)
        x = to_uint8(videos, self.input_range).float() / 127.5 - 1  # the detector's [-1, 1]
        if (h, w) != (I3D_SIZE, I3D_SIZE):
            frames = rearrange(x, "b c t h w -> (b t) c h w")
            frames = F.interpolate(frames, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
            x = rearrange(frames, "(b t) c h w -> b c t h w", b=b)
        if next(iter(self._detector.parameters()), x).device != x.device:
            self._detector.to(x.device)
        features = self._detector(x.contiguous(), rescale=False, resize=False, return_features=True)
        self._accumulate(features.reshape(b, -1), real)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"fvd": self._frechet().float()}


class FVDProxyInception(_SameClipLength):
    """Proxy for FVD without I3D: per video ``[mean_t f_t, mean_t |f_{t+1} − f_t|]`` of Inception features.

    Reported as ``fvd_proxy_inception``. ``update(videos, real)`` as :class:`FrechetVideoDistance`;
    ``extractor`` as :class:`~nar.metrics.fidelity.ImageFidelity` (default: the FID InceptionV3).
    """

    higher_is_better = False

    def __init__(self, extractor: nn.Module | None = None, input_range: tuple[float, float] = (-1.0, 1.0),
                 reset_real_features: bool = True, frame_batch: int = 64, **kwargs) -> None:
        extractor = extractor if extractor is not None else default_extractor()
        super().__init__(2 * int(extractor.num_features), reset_real_features=reset_real_features, **kwargs)
        object.__setattr__(self, "_extractor", extractor)
        self.input_range = input_range
        self.frame_batch = frame_batch

    @torch.no_grad()
    def update(self, videos: torch.Tensor, real: bool) -> None:
        _check_videos(videos)
        b, _, t, h, w = videos.shape
        if t < 2:
            raise ConfigError(f"fvd_proxy_inception needs ≥ 2 frames, got {t}")
        self._check_length(t, real)
        frames = rearrange(to_uint8(videos, self.input_range), "b c t h w -> (b t) c h w")
        ext = self._extractor
        param = next(ext.parameters(), None)
        if param is not None and param.device != frames.device:
            ext.to(frames.device)
        ext.eval()
        feats = torch.cat([ext(chunk)["features"] for chunk in frames.split(self.frame_batch)])
        feats = feats.reshape(b, t, -1).double()  # [B, T, D]
        motion = (feats[:, 1:] - feats[:, :-1]).abs().mean(1)
        self._accumulate(torch.cat([feats.mean(1), motion], dim=1), real)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"fvd_proxy_inception": self._frechet().float()}
