"""Fixtures for the Lightning layer: tiny token shards written with nar.data, forced to CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning_helpers import write_token_shards


@pytest.fixture(scope="session")
def token_root(tmp_path_factory) -> Path:
    """8x8 token grids (the vq-tiny-emoji tokenizer's grid), 4 classes."""
    return write_token_shards(tmp_path_factory.mktemp("tokens"), grid=(8, 8))


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory) -> Path:
    """A saved (random-weight, seeded) vq-tiny-emoji tokenizer: every process decodes with the same weights."""
    import torch

    from nar.tokenizers import build_tokenizer, save_tokenizer

    torch.manual_seed(0)
    return save_tokenizer(build_tokenizer("vq-tiny-emoji"), tmp_path_factory.mktemp("tok") / "tokenizer.pt")
