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
    """Rank ``rank`` of ``world`` sees every ``world``-th contiguous block (uneven sizes on purpose)."""
    real, fake, shapes, specs, v_real, v_fake = _data()
    extractor = TinyExtractor().eval()
    fidelity = ImageFidelity(metrics=("fid", "is", "pr"), extractor=extractor, is_splits=5)
    geneval = GenEvalShapes()
    proxy = FVDProxyInception(extractor=extractor)

    def part(x, n):
        bounds = [0, n * 3 // 5, n] if world == 2 else [0, n]
        return x[bounds[rank]:bounds[rank + 1]]

    for chunk in part(real, N_REAL).split(7):
        fidelity.update(chunk, real=True)
    for chunk in part(fake, N_FAKE).split(7):
        fidelity.update(chunk, real=False)
    idx = part(torch.arange(N_SCENES), N_SCENES)
    geneval.update(shapes[idx], [specs[i] for i in idx])
    proxy.update(part(v_real, N_VIDEOS), real=True)
    proxy.update(part(v_fake, N_VIDEOS), real=False)
    out = {**fidelity.compute(), **geneval.compute(), **proxy.compute()}
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
