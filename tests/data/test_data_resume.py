"""The training stream is a function of seed, rank, worker and epoch, and a saved position continues it exactly."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nar.data.encode import encode_png
from nar.data.readers import ImageSample, ResampledShardStream, StreamLoader, StreamPosition, _DrawNumbers
from nar.data.shards import SplitIndex, write_meta, write_split

NUM, BATCH, EPOCH = 23, 4, 24


def _image(i: int) -> dict:
    if i == 9:
        return {"png": b"not a png", "cls": 0}  # skipped by the reader: draws and batches no longer line up
    arr = np.random.default_rng(i).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    return {"png": encode_png(Image.fromarray(arr)), "cls": i % 3}


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> SplitIndex:
    root = tmp_path_factory.mktemp("images")
    write_meta(root, "image", [write_split(root, "train", list(range(NUM)), make_sample=_image, shard_size=5)],
               classes=["a", "b", "c"])
    return SplitIndex.load(root, "train")


def _loader(index: SplitIndex, workers: int, position: StreamPosition | None = None) -> StreamLoader:
    stream = ResampledShardStream(index, ImageSample(8, random_crop=True, min_crop_frac=0.8, hflip=True), shuffle_buffer=6, seed=3,
                                  samples_per_epoch=EPOCH, batch_size=BATCH)
    if position is not None:
        stream.position = position
    return StreamLoader(stream, batch_size=BATCH, num_workers=workers, drop_last=True)


def _position_after(batches: list[dict], workers: int) -> StreamPosition:
    """What DataPositionCallback records after ``batches``."""
    from nar.lightning.callbacks.data_position import DataPositionCallback

    tracker = DataPositionCallback()
    for i, batch in enumerate(batches):
        tracker.on_train_batch_start(None, None, batch, i)
    return StreamPosition(epoch=tracker.epoch, batches=tracker.batches, workers=max(1, workers), world_size=1,
                          draws=(tuple(tracker.draws),))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_saved_position_continues_with_the_same_batches(index, workers):
    loader = _loader(index, workers)
    uninterrupted = [b for _ in range(2) for b in loader]  # two epochs
    assert len(uninterrupted) == 2 * EPOCH // BATCH
    assert [b["__stream__"][0][0] for b in uninterrupted] == [0] * 6 + [1] * 6
    keys = [b["__key__"] for b in uninterrupted]
    assert keys[:6] != keys[6:]  # epochs differ
    for stop in (1, 3, 6, 7):
        resumed_loader = _loader(index, workers, _position_after(uninterrupted[:stop], workers))
        resumed = [b for _ in range(2) for b in resumed_loader][: len(uninterrupted) - stop]
        assert [b["__key__"] for b in resumed] == keys[stop:], f"stopped after {stop} batches"
        for a, b in zip(resumed, uninterrupted[stop:]):  # random crops and flips too
            assert torch.equal(a["image"], b["image"])


def test_another_worker_count_starts_the_next_epoch(index, caplog):
    batches = list(_loader(index, 2))[:3]
    resumed = _loader(index, 0, _position_after(batches, 2))
    first = next(iter(resumed))
    assert first["__stream__"][0][0] == 1 and "continuing with epoch 1" in caplog.text


def test_draw_numbers_skip_without_generating():
    ahead = _DrawNumbers([1, 2, 3, 4])
    rows = [ahead.row(d).copy() for d in range(3000)]
    for start in (0, 5, 1024, 2500):
        skipped = _DrawNumbers([1, 2, 3, 4])
        skipped.skip(start)
        assert np.array_equal(skipped.row(start), rows[start]) and np.array_equal(skipped.row(2999), rows[2999])


def test_a_shard_drawn_again_while_its_samples_are_buffered_resumes_exactly(tmp_path):
    """With a buffer about a shard's size, a shard is often drawn again while samples of its previous pass sit in
    the buffer at offsets past the new pass's: a resume re-reads those too (every stop point, several seeds)."""
    root = tmp_path / "keys"
    write_meta(root, "image", [write_split(root, "train", list(range(12)), shard_size=6,
                                           make_sample=lambda i: {"cls": i % 2, "txt": str(i)})], classes=["a", "b"])
    index = SplitIndex.load(root, "train")

    def keys(seed: int, draws: int | None = None) -> list[tuple[str, int]]:
        stream = ResampledShardStream(index, lambda raw, rng: {"key": raw["__key__"]}, shuffle_buffer=6, seed=seed,
                                      samples_per_epoch=30, batch_size=1)
        if draws is not None:
            stream.position = StreamPosition(epoch=0, batches=draws, workers=1, world_size=1, draws=((draws,),))
        return [(s["key"], s["__stream__"][3]) for s in stream]

    for seed in range(3):
        full = keys(seed)
        assert len(full) == 30
        for stop in range(1, len(full)):
            assert keys(seed, full[stop - 1][1] + 1) == full[stop:], f"seed {seed}, stopped after {stop} samples"


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan nobody reaps stays one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children_end_with_their_killed_parent(parent, children: list[int], expected: int | None = None) -> None:
    """SIGKILL ``parent`` (a Popen) and check that its ``children`` (pids; ``expected`` of them when given) end
    within 10 s; whatever happens, none is left running."""
    import signal
    import time

    try:
        assert children and expected in (None, len(children)) and all(_running(p) for p in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_running(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if _running(p)], "children outlived their killed parent"
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pool_workers_end_when_their_writer_is_killed(tmp_path):
    """A writer killed with SIGKILL (the OOM killer, `kill -9`, a cluster's hard stop) left its shard-writing
    workers waiting on their job pipe for ever; they now end within seconds."""
    import subprocess
    import sys

    script = ("import os, time\n"
              "from nar.data.shards import worker_pool\n"
              "pool = worker_pool(2)\n"
              "pids = {pool.submit(os.getpid).result() for _ in range(4)}\n"
              "print(' '.join(map(str, sorted(pids))), flush=True)\n"
              "time.sleep(120)\n")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in writer.stdout.readline().split()]
    _children_end_with_their_killed_parent(writer, workers)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_token_extraction_ranks_end_when_their_parent_is_killed(tmp_path):
    """The processes of `nar data tokens --gpus N` (nar.data.tokens.run_processes) end with a parent killed by
    SIGKILL, as the shard writers' pool workers do."""
    import subprocess
    import sys
    import time

    script = ("import os, sys, time\n"
              "from nar.data.tokens import run_processes\n"
              "def rank(r, world, folder):\n"
              "    open(os.path.join(folder, str(os.getpid())), 'w').close()\n"
              "    time.sleep(120)\n"
              f"run_processes(rank, 2, {str(tmp_path)!r})\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    _children_end_with_their_killed_parent(parent, [int(p.name) for p in tmp_path.iterdir()], 2)
