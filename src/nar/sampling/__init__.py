"""Sampling: frontier decoding, the raster baseline, CFG and sampling knobs."""

from nar.sampling.api import make_sampler, parse_sampler, sample_stream
from nar.sampling.generate import generate
from nar.sampling.logits import (
    SamplingConfig,
    apply_guidance,
    filter_logits,
    guidance_on,
    guide,
    sample_tokens,
    with_null,
)

__all__ = ["SamplingConfig", "apply_guidance", "filter_logits", "generate", "guidance_on", "guide", "make_sampler",
           "parse_sampler", "sample_stream", "sample_tokens", "with_null"]
