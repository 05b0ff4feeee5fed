"""Sampling: frontier decoding, the raster baseline, CFG and sampling knobs."""

from nar.sampling.generate import generate
from nar.sampling.logits import SamplingConfig, filter_logits, guide, sample_tokens

__all__ = ["SamplingConfig", "filter_logits", "generate", "guide", "sample_tokens"]
