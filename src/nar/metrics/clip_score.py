"""Optional CLIP score from a local open-clip checkpoint (``open_clip_torch`` is not a dependency).

CLIP score = ``100 · max(cos(image, text), 0)`` averaged over samples (the torchmetrics convention);
states are a sum and a count, so DDP sync is exact. Nothing is downloaded: the checkpoint is a file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from nar.errors import ConfigError
from nar.metrics.fidelity import to_uint8


class OpenCLIPScore(Metric):
    """``update(images [B, 3, H, W] (uint8 or float in input_range), prompts: list[str])``; ``compute()`` →
    ``{"clip_score": …}``.

    Args:
        checkpoint: a local open-clip weights file (``open_clip.create_model_and_transforms(pretrained=path)``).
        model_name: its open-clip architecture, e.g. ``"ViT-B-32"``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, checkpoint: str | Path, model_name: str = "ViT-B-32",
                 input_range: tuple[float, float] = (-1.0, 1.0), **kwargs) -> None:
        super().__init__(**kwargs)
        try:
            import open_clip
        except ImportError as err:
            raise ConfigError("the CLIP score needs the optional package open_clip_torch (pip install "
                              "open_clip_torch) and a local checkpoint; GenEvalShapes needs neither") from err
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(f"open-clip checkpoint not found: {path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(path))
        model.eval().requires_grad_(False)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_tokenizer", open_clip.get_tokenizer(model_name))
        # The normalisation open-clip's own preprocessing applies, on tensors.
        norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
        self._mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(norm.std).view(1, 3, 1, 1)
        size = model.visual.image_size
        self._size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.input_range = input_range
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, images: torch.Tensor, prompts: Sequence[str]) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
            raise ConfigError(f"expected images [B, 3, H, W] with B = len(prompts) = {len(prompts)}, got {tuple(images.shape)}")
        model = self._model
        device = images.device
        if next(model.parameters()).device != device:
            model.to(device)
        x = to_uint8(images, self.input_range).float() / 255
        x = F.interpolate(x, size=self._size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self._mean.to(device)) / self._std.to(device)
        image_emb = F.normalize(model.encode_image(x).float(), dim=-1)
        text_emb = F.normalize(model.encode_text(self._tokenizer(list(prompts)).to(device)).float(), dim=-1)
        scores = 100 * (image_emb * text_emb).sum(-1).clamp_min(0)
        self.score_sum += scores.double().sum()
        self.count += scores.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.count) == 0:
            raise ConfigError("OpenCLIPScore.compute() before any update")
        return {"clip_score": (self.score_sum / self.count).float()}
