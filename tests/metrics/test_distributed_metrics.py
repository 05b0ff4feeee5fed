"""Two CPU processes (gloo) give the same metric values as one process on the same samples."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from metric_helpers import TinyExtractor, random_images

from nar.metrics import FVDProxyInception, GenEvalShapes, ImageFidelity
from nar.shapes import render_scene, sample_scene

N_REAL, N_FAKE, N_SCENES, N_VIDEOS = 40, 30, 24, 12


def _data():
    real, fake = random_images(N_REAL, seed=21), random_images(N_FAKE, seed=22)
    rng = np.random.default_rng(23)
    scenes = [sample_scene(rng) for _ in range(N_SCENES)]
    shapes = torch.from_numpy(np.stack([render_scene(s, 32) for s in scenes])).permute(0, 3, 1, 2)
    shapes[::3] = 255 - shapes[::3]  # some failures, so the counts are not trivially full
    videos_real = random_images(N_VIDEOS * 3, seed=24).reshape(N_VIDEOS, 3, 3, 32, 32).transpose(1, 2)
    videos_fake = random_images(N_VIDEOS * 3, seed=25).reshape(N_VIDEOS, 3, 3, 32, 32).transpose(1, 2)
    return real, fake, shapes, [s.spec for s in scenes], videos_real, videos_fake


def _evaluate(rank: int, world: int) -> dict[str, float]:
    """Rank ``rank`` of ``world`` gets chunk ``c`` of every set when ``c % world == rank``, as the decoding callback
    shards its samples (uneven shares; ``cat`` gathers them rank-major, in another order than one process)."""
    real, fake, shapes, specs, v_real, v_fake = _data()
    extractor = TinyExtractor().eval()
    fidelity = ImageFidelity(metrics=("fid", "is", "pr", "kid"), extractor=extractor, is_split_size=7)
    # a single chunk goes to rank 0: rank 1 gets no generated samples at all (no_fake), no real ones (no_real)
    no_fake = ImageFidelity(metrics=("fid", "is", "pr", "kid"), extractor=extractor, is_split_size=5)
    no_real = ImageFidelity(metrics=("fid", "pr", "kid"), extractor=extractor)
    geneval = GenEvalShapes()
    proxy = FVDProxyInception(extractor=extractor)

    def mine(x, chunk):
        return [c for i, c in enumerate(x.split(chunk)) if i % world == rank]

    for c in mine(real, 7):
        fidelity.update(c, real=True)
        no_fake.update(c, real=True)
    for c in mine(fake, 7):
        fidelity.update(c, real=False)
    for c in mine(fake[:12], 12):
        no_fake.update(c, real=False)
        no_real.update(c, real=True)
    for c in mine(real, 6):
        no_real.update(c, real=False)
    idx = torch.cat(mine(torch.arange(N_SCENES), 5))
    geneval.update(shapes[idx], [specs[i] for i in idx])
    for c in mine(v_real, 5):
        proxy.update(c, real=True)
    for c in mine(v_fake, 5):
        proxy.update(c, real=False)
    out = {**fidelity.compute(), **geneval.compute(), **proxy.compute(),
           **{f"no_fake_{k}": v for k, v in no_fake.compute().items()},
           **{f"no_real_{k}": v for k, v in no_real.compute().items()}}
    return {k: float(v) for k, v in out.items()}


def _worker(rank: int, world: int, port: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = _evaluate(rank, world)
        torch.save(out, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_processes_equal_one(tmp_path):
    single = _evaluate(0, 1)
    path = str(tmp_path / "out")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    for rank in range(2):
        assert os.path.exists(f"{path}.{rank}")
        multi = torch.load(f"{path}.{rank}")
        assert multi.keys() == single.keys()
        for key, value in single.items():
            assert multi[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert 0 < single["geneval_overall"] < 1
    assert {"kid_mean", "is_mean", "no_fake_is_mean", "no_fake_precision", "no_real_kid_mean"} <= single.keys()
