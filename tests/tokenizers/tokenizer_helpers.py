"""Tiny tokenizer configs shared by the tokenizer tests (CPU, a few ms per forward)."""

from __future__ import annotations

from nar.tokenizers import VQConfig


def tiny_image(**overrides) -> VQConfig:
    fields = dict(image_size=16, base_channels=16, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2],
                  num_res_blocks=1, z_channels=8, codebook_size=32, codebook_embed_dim=4, norm_groups=8)
    fields.update(overrides)
    return VQConfig(**fields)


def tiny_video(**overrides) -> VQConfig:
    fields = dict(kind="video", image_size=16, num_frames=4, base_channels=16, encoder_ch_mult=[1, 2, 2],
                  decoder_ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=8, codebook_size=32,
                  codebook_embed_dim=4, norm_groups=8, temporal_downsample=[True, False])
    fields.update(overrides)
    return VQConfig(**fields)
