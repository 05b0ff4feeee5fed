"""GenEval-style text alignment on the embedded ``shapes`` domain, as a torchmetrics ``Metric``.

Each generated image is scored by the analytic detector (:func:`nar.shapes.score`) against the
GenEval spec of its prompt. States are per-family correct/total counts summed across processes;
``geneval_overall`` is the mean of the family scores over families that were seen (GenEval's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from nar.errors import ConfigError
from nar.metrics.fidelity import to_uint8
from nar.shapes import FAMILIES, Scene, score


class GenEvalShapes(Metric):
    """``update(images, specs)``: ``images`` ``[B, 3, H, W]`` (uint8 or float in ``input_range``),
    ``specs`` = B GenEval specs (``Scene.spec`` dicts, :class:`~nar.shapes.Scene` objects or their JSON).

    ``compute()`` → ``{"geneval_overall": …, "geneval_<family>": …}`` for each family seen.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, input_range: tuple[float, float] = (-1.0, 1.0), **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_range = input_range
        self.add_state("correct", torch.zeros(len(FAMILIES), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(FAMILIES), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, specs: Sequence[dict[str, Any] | Scene | str]) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(specs):
            raise ConfigError(f"expected images [B, 3, H, W] with B = len(specs) = {len(specs)}, got {tuple(images.shape)}")
        pixels = to_uint8(images, self.input_range).permute(0, 2, 3, 1).cpu().numpy()
        correct = np.zeros(len(FAMILIES), dtype=np.int64)
        total = np.zeros(len(FAMILIES), dtype=np.int64)
        for image, spec in zip(pixels, specs):
            if isinstance(spec, str):
                spec = Scene.from_json(spec)
            if isinstance(spec, Scene):
                spec = spec.spec
            family = FAMILIES.index(spec["tag"])
            total[family] += 1
            correct[family] += bool(score(spec, image))
        self.correct += torch.as_tensor(correct, device=self.correct.device)
        self.total += torch.as_tensor(total, device=self.total.device)

    def compute(self) -> dict[str, torch.Tensor]:
        seen = self.total > 0
        if not bool(seen.any()):
            raise ConfigError("GenEvalShapes.compute() before any update")
        rates = self.correct.double() / self.total.clamp_min(1).double()
        result = {f"geneval_{f}": rates[i].float() for i, f in enumerate(FAMILIES) if bool(seen[i])}
        result["geneval_overall"] = rates[seen].mean().float()
        return result
