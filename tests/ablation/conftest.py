"""Fixtures of the ablation tests: a tiny learnable token dataset written with nar.data, forced to CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


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
    from nar.data.shards import write_meta, write_split

    root = tmp_path_factory.mktemp("tokens")
    grid, vocab, num_classes = (4, 4), 64, 4
    templates = np.random.default_rng(0).integers(0, vocab, size=(num_classes, *grid))

    def make(item: tuple[int, int]) -> dict:
        idx, cls = item
        r = np.random.default_rng(idx)
        codes = templates[cls].copy()
        noise = r.random(grid) < 0.1
        codes[noise] = r.integers(0, vocab, size=int(noise.sum()))
        return {"tokens.npy": codes[None].astype(np.int32), "cls": cls, "json": {"label": f"c{cls}"}}

    recs = [write_split(root, split, [(offset + i, i % num_classes) for i in range(n)], make_sample=make,
                        shard_size=64) for split, n, offset in (("train", 64, 0), ("val", 16, 10**6))]
    write_meta(root, "tokens", recs, classes=[f"c{i}" for i in range(num_classes)], grid=list(grid),
               codebook_size=vocab, tokenizer="vq-tiny-emoji")
    return root
