"""Text encoders for text-to-image NAR: frozen, local-only, right-aligned caption features.

    enc = TextEncoder(TextEncoderConfig(kind="minilm", max_len=120))   # packaged all-MiniLM-L6-v2, 384-d
    feats, mask = enc.encode(["a photo of a red circle"])              # [1, 120, 384], bool [1, 120]
    enc = TextEncoder(TextEncoderConfig(kind="t5", path="/models/flan-t5-xl"))   # official features, 2048-d
    TextEncoderConfig(kind="t5", path=..., clean_captions="official")   # captions cleaned as officially
"""

from nar.text.cleaning import CLEANINGS, clean_caption, clean_captions
from nar.text.encoder import (
    KINDS,
    TextEncoder,
    TextEncoderConfig,
    build_text_encoder,
    default_minilm_path,
    load_text_encoder,
    right_align,
)

__all__ = ["CLEANINGS", "KINDS", "TextEncoder", "TextEncoderConfig", "build_text_encoder", "clean_caption",
           "clean_captions", "default_minilm_path", "load_text_encoder", "right_align"]
