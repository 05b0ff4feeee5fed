"""Text encoders for text-to-image NAR: frozen, local-only, right-aligned caption features.

    enc = TextEncoder(TextEncoderConfig(kind="minilm", max_len=120))   # packaged all-MiniLM-L6-v2, 384-d
    feats, mask = enc.encode(["a photo of a red circle"])              # [1, 120, 384], bool [1, 120]
    enc = TextEncoder(TextEncoderConfig(kind="t5", path="/models/flan-t5-xl"))   # official features, 2048-d
"""

from nar.text.encoder import (
    KINDS,
    TextEncoder,
    TextEncoderConfig,
    build_text_encoder,
    default_minilm_path,
    load_text_encoder,
    right_align,
)

__all__ = ["KINDS", "TextEncoder", "TextEncoderConfig", "build_text_encoder", "default_minilm_path", "load_text_encoder", "right_align"]
