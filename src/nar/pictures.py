"""Pictures of samples: grids, frame strips, PNG and animated GIF files, GIFs in TensorBoard.

Pixels come in ``[-1, 1]`` from the tokenizers; :func:`to_unit` maps them to ``[0, 1]``. Images are
``[B, 3, H, W]``, videos ``[B, 3, T, H, W]``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from nar.atomic import write_with


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` → ``[0, 1]``, clamped (float32)."""
    return ((pixels.float() + 1) / 2).clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] → one ``[3, H', W']`` grid, ``nrow`` images a row (default: square)."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(images, nrow=nrow, padding=1, pad_value=1.0)


def frame_strips(videos: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` in [0, 1] → one grid with a row per video and a column per frame."""
    frames = rearrange(videos, "b c t h w -> (b t) c h w")
    return image_grid(frames, nrow=videos.shape[2])


def sample_grid(pixels: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """The picture of a batch of samples in [0, 1]: an image grid, or frame strips for videos."""
    return frame_strips(pixels) if pixels.dim() == 5 else image_grid(pixels, nrow)


def to_uint8_hwc(picture: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] → ``uint8 [H, W, 3]``."""
    return (picture.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def save_png(picture: torch.Tensor, path: str | Path) -> Path:
    """Write ``[3, H, W]`` in [0, 1] as a PNG (parent folders created), atomically (:mod:`nar.atomic`): a failed
    write leaves no truncated file and raises :class:`~nar.atomic.WriteError` naming ``path``."""
    from PIL import Image

    image = Image.fromarray(to_uint8_hwc(picture))
    return write_with(path, lambda tmp: image.save(tmp, format="PNG"))  # the temporary name has no .png


def gif_bytes(videos: torch.Tensor, fps: int = 4) -> tuple[bytes, int, int]:
    """Videos ``[B, 3, T, H, W]`` (or one ``[3, T, H, W]``) in [0, 1] → one animated GIF with the videos
    stacked vertically; returns ``(bytes, height, width)``."""
    from PIL import Image

    if videos.dim() == 4:
        videos = videos[None]
    frames = rearrange(videos, "b c t h w -> t (b h) w c")
    arrays = (frames.cpu() * 255).round().to(torch.uint8).numpy()
    images = [Image.fromarray(a) for a in arrays]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue(), arrays.shape[1], arrays.shape[2]


def save_gif(video: torch.Tensor, path: str | Path, fps: int = 4) -> Path:
    """Write one video ``[3, T, H, W]`` (or a stack ``[B, 3, T, H, W]``) in [0, 1] as an animated GIF, atomically
    as :func:`save_png`."""
    data = gif_bytes(video, fps)[0]
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def add_gif(writer: Any, tag: str, videos: torch.Tensor, step: int, fps: int = 4) -> None:
    """Write videos ``[B, 3, T, H, W]`` in [0, 1] to a TensorBoard ``SummaryWriter`` as one animated GIF.

    TensorBoard's ``add_video`` needs moviepy; its image plugin plays GIFs, so they are encoded with PIL.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    data, height, width = gif_bytes(videos, fps)
    summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=data))])
    writer._get_file_writer().add_summary(summary, step)
