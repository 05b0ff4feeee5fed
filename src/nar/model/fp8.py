"""Opt-in FP8 weights for sampling on Hopper GPUs (H100/H200): the transformer blocks' linear layers
stored as ``float8_e4m3fn`` and multiplied by ``torch._scaled_mm``.

Nothing here is on by default: a caller converts a bf16/fp16 model with :func:`quantize_fp8` and should
measure what that did to the tokens (:func:`nar.sampling.precision.precision_report`).

Rounding is :mod:`nar.model.float8`'s (e4m3 rows, a scale each). Weights are quantized once, activations at
every call, each row with its own scale; ``_scaled_mm`` accumulates in float32.

Speed: the activations are quantized at every call, an extra pass over them that only
``torch.compile`` fuses into its neighbours, so fp8 pays only where the matrix products are large enough
for the halved operand bytes and the faster fp8 tensor cores to cover it. Measure before relying on it:
``nar bench --variants fp8+wavefront+compile wavefront+compile``. What it surely halves is the blocks'
weight memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nar.model.float8 import FP8, quantize_rows
from nar.model.nar import NARModel

# torch._scaled_mm on the GPU needs both the inner (K) and the output (N) size to be multiples of 16.
FP8_ALIGN = 16


class FP8Linear(nn.Module):
    """A bias-free linear layer with an e4m3 weight and one float32 scale per output row, for inference.

    The weight and its scales are buffers, not parameters: nothing trains them. ``forward`` quantizes the
    activations per row at every call (dynamic scaling) and returns the input's dtype.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        if weight.dtype != FP8 or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D {FP8} tensor, got {weight.dtype} of shape {tuple(weight.shape)}")
        if scale.dtype != torch.float32 or scale.shape != (weight.shape[0],):
            raise ValueError(f"scale must be float32 of shape ({weight.shape[0]},), got {scale.dtype} "
                             f"of shape {tuple(scale.shape)}")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)  # [N, K] e4m3
        self.register_buffer("weight_scale", scale)  # [N] float32

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        """Quantize ``linear``'s weight ``[N, K]`` row by row, on the device it is on."""
        if linear.bias is not None:
            raise ValueError(f"FP8Linear supports bias-free layers only; got a bias of shape {tuple(linear.bias.shape)} "
                             f"on nn.Linear({linear.in_features}, {linear.out_features})")
        weight, scale = quantize_rows(linear.weight)
        return cls(weight, scale.squeeze(1))

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` casts every floating buffer, and e4m3 counts as floating: the weight
        # would come back bf16 and the scales rounded to bf16. Take only the device from `fn`.
        for name in ("weight", "weight_scale"):
            buf = self._buffers[name]
            moved = fn(buf)
            self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(device=moved.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., K]`` → ``[..., N]`` in ``x``'s dtype."""
        lead = x.shape[:-1]
        x_fp8, x_scale = quantize_rows(x.reshape(-1, self.in_features))  # [M, K], [M, 1]
        out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale[None],
                               out_dtype=x.dtype)  # [M, N]
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={FP8}, rowwise scales"


def fp8_unsupported(linear: nn.Linear) -> str | None:
    """Why ``linear`` cannot become an :class:`FP8Linear`, or None when it can."""
    if linear.bias is not None:
        return "has a bias"
    if linear.in_features % FP8_ALIGN or linear.out_features % FP8_ALIGN:
        return (f"shape {linear.in_features}->{linear.out_features} is not a multiple of {FP8_ALIGN} "
                f"(torch._scaled_mm on the GPU)")
    return None


@dataclass
class FP8Summary:
    """What :func:`quantize_fp8` did: the layers it converted and those it left in their precision."""

    converted: list[str] = field(default_factory=list)  # module names, e.g. 'layers.0.attention.wqkv'
    skipped: dict[str, str] = field(default_factory=dict)  # module name → why it kept its precision
    bytes_before: int = 0  # weight bytes of the converted layers before
    bytes_after: int = 0  # their e4m3 weights plus float32 scales

    @property
    def layers(self) -> int:
        return len(self.converted)

    def as_dict(self) -> dict:
        """Plain values for logging."""
        return {"layers": self.layers, "skipped": dict(self.skipped), "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after}

    def __str__(self) -> str:
        mib = 2.0 ** 20
        text = (f"fp8: {self.layers} block linear layers converted "
                f"({self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB)")
        if self.skipped:
            text += f"; {len(self.skipped)} kept in their precision: " + ", ".join(
                f"{name} ({why})" for name, why in self.skipped.items())
        return text


@torch.no_grad()
def quantize_fp8(model: NARModel) -> FP8Summary:
    """Replace, in place, every ``nn.Linear`` inside ``model.blocks()`` (``attention.wqkv``, ``attention.wo``,
    ``feed_forward.w1/w2/w3``) by an :class:`FP8Linear` on the device it is on.

    The token, transition and class embeddings and the output heads keep their precision, so the logits
    are computed from full-precision projections. A layer whose sizes ``_scaled_mm`` cannot take (see
    :func:`fp8_unsupported`) is left as it is and listed in the summary. The model must be bf16 or fp16:
    fp8 is a faster stand-in for half-precision matmuls; a float32 model is one that asked for accuracy
    over speed, and its float32 activations would be rounded to 3 mantissa bits all the same. Layers
    already converted are left alone.

    Raises:
        ValueError: a block linear layer is not bf16/fp16 (checked before anything is converted).
    """
    names = {module: name for name, module in model.named_modules()}
    targets = []  # (parent module, attribute, full name, layer)
    for block in model.blocks():
        for sub, layer in block.named_modules():
            if isinstance(layer, nn.Linear):
                parent, _, attr = sub.rpartition(".")
                targets.append((block.get_submodule(parent), attr, f"{names[block]}.{sub}", layer))
    for _, _, name, layer in targets:
        if layer.weight.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"quantize_fp8 needs a bf16 or fp16 model, but {name}.weight is {layer.weight.dtype}; "
                             f"call model.to(torch.bfloat16) first")
    summary = FP8Summary()
    for parent, attr, name, layer in targets:
        why = fp8_unsupported(layer)
        if why is not None:
            summary.skipped[name] = why
            continue
        fp8 = FP8Linear.from_linear(layer)
        setattr(parent, attr, fp8)
        summary.converted.append(name)
        summary.bytes_before += layer.weight.numel() * layer.weight.element_size()
        summary.bytes_after += sum(b.numel() * b.element_size() for b in (fp8.weight, fp8.weight_scale))
    return summary
