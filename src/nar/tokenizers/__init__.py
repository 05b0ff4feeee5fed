"""Discrete tokenizers: the LlamaGen VQ architecture for images and its causal 3-D version for videos.

Every tokenizer has ``codebook_size``, ``grid_shape(input_shape)``, ``encode(x) -> LongTensor[B, *grid]``
and ``decode(codes) -> x`` (images ``[B, 3, H, W]``, videos ``[B, 3, T, H, W]``, pixels in ``[-1, 1]``).
"""

from nar.tokenizers.config import (
    PRESETS,
    TokenizerLossConfig,
    TokenizerOptimConfig,
    TokenizerValConfig,
    VQConfig,
)
from nar.tokenizers.io import (
    export_official_vq,
    infer_official_config,
    load_official_vq,
    load_tokenizer,
    save_tokenizer,
)
from nar.tokenizers.vq import VQForward, VQTokenizer, build_tokenizer

__all__ = [
    "PRESETS",
    "TokenizerLossConfig",
    "TokenizerOptimConfig",
    "TokenizerValConfig",
    "VQConfig",
    "VQForward",
    "VQTokenizer",
    "build_tokenizer",
    "export_official_vq",
    "infer_official_config",
    "load_official_vq",
    "load_tokenizer",
    "save_tokenizer",
]
