"""Tiny learnable token datasets for tests, written with nar.data (shared by several test folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_token_shards(root: Path, grid=(4, 4), vocab: int = 512, num_classes: int = 4, train: int = 256,
                       val: int = 32, seed: int = 0) -> Path:
    """A learnable token dataset: each class is a noisy copy of its own template grid."""
    from nar.data.shards import write_meta, write_split

    rng = np.random.default_rng(seed)
    templates = rng.integers(0, vocab, size=(num_classes, *grid))

    def items(n: int, offset: int) -> list[tuple[int, int]]:
        return [(offset + i, i % num_classes) for i in range(n)]

    def make(item: tuple[int, int]) -> dict:
        idx, cls = item
        r = np.random.default_rng(idx)
        codes = templates[cls].copy()
        noise = r.random(grid) < 0.1
        codes[noise] = r.integers(0, vocab, size=int(noise.sum()))
        return {"tokens.npy": codes[None].astype(np.int32), "cls": cls,
                "json": {"label": f"c{cls}"}}

    recs = [write_split(root, "train", items(train, 0), make_sample=make, shard_size=64),
            write_split(root, "val", items(val, 10**6), make_sample=make, shard_size=64)]
    write_meta(root, "tokens", recs, classes=[f"c{i}" for i in range(num_classes)], grid=list(grid),
               codebook_size=vocab, tokenizer="vq-tiny-emoji")
    return root
