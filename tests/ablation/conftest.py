"""Fixtures of the ablation tests: a tiny learnable token dataset written with nar.data, forced to CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from token_data import write_token_shards


@pytest.fixture(autouse=True)
def _cpu_one_thread(monkeypatch):
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPUs
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory) -> Path:
    """4x4 token grids, vocabulary 64, 4 classes; each class a noisy copy of its own template."""
    return write_token_shards(tmp_path_factory.mktemp("tokens"), grid=(4, 4), vocab=64, num_classes=4,
                              train=64, val=16)
