"""UCF-101 stored as whole videos (``nar data ucf101 --whole-videos``): training takes a fresh window of ``frames``
consecutive stored frames at every visit (the official NAR-videos / LARP loader), evaluation the centre one; the
draw is exact on resume; fixed-clip folders read as before; token extraction refuses such a folder."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
import torch
from nar_data_testutil import run_data_cli

from nar.data import transforms as T
from nar.data.checks import InvalidSample, SampleSpec
from nar.data.datamodules import VideoDataConfig, VideoShardDataModule
from nar.data.readers import DrawRandom, ShardStream, StreamPosition, VideoSample
from nar.data.shards import SplitIndex, iter_tar, read_meta, write_meta, write_split
from nar.data.ucf101 import clip_starts, write_ucf101
from nar.errors import ConfigError, DataError

WINDOW = 4


def _frames(raw: dict) -> np.ndarray:
    import io

    return np.load(io.BytesIO(raw["frames.npy"]), allow_pickle=False)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def test_whole_videos_store_every_frame_at_the_stride(mini_ucf101, tmp_path):
    """One sample per video holding all its frames at --stride, resized and cropped exactly as clips are; meta.json
    says windows=per_visit and records the window length as frames (no clips_per_video: it does not apply)."""
    out = tmp_path / "whole"
    meta = write_ucf101(mini_ucf101, out, frames=WINDOW, stride=2, size=16, whole_videos=True, shard_size=2)
    assert meta["windows"] == "per_visit" and meta["frames"] == WINDOW and meta["stride"] == 2
    assert "clips_per_video" not in meta
    assert meta["splits"]["train"]["samples"] == 4 and meta["splits"]["test"]["samples"] == 2  # one per video
    samples = [raw for shard in SplitIndex.load(out, "train").shards for raw in iter_tar(shard)]
    for raw in samples:
        info, frames = json.loads(raw["json"]), _frames(raw)
        assert frames.dtype == np.uint8 and frames.shape == (math.ceil(info["video_frames"] / 2), 16, 16, 3)
        assert info["start"] == 0 and info["stride"] == 2 and not info["padded"] and not info["damaged_tail"]
        # frame i of a test video is grey level shade + 8 i: every other frame kept, all of them
        assert np.allclose(np.diff(frames[:, 8, 8, 0].astype(float)), 16, atol=6)
    # the same pixels as the clip that starts at frame 0 (every non-overlapping window)
    clips = tmp_path / "clips"
    write_ucf101(mini_ucf101, clips, frames=WINDOW, stride=2, size=16, clips_per_video=0, shard_size=2)
    first_clip = {json.loads(raw["json"])["source"]: _frames(raw) for shard in SplitIndex.load(clips, "train").shards
                  for raw in iter_tar(shard) if json.loads(raw["json"])["start"] == 0}
    for raw in samples:
        assert np.array_equal(_frames(raw)[:WINDOW], first_clip[json.loads(raw["json"])["source"]])


def test_whole_videos_shorter_than_a_window_are_marked_padded(mini_ucf101, tmp_path):
    """A video of fewer stored frames than one window is stored as it is (the reader pads it) and says so."""
    meta = write_ucf101(mini_ucf101, tmp_path / "w", splits=("train",), frames=8, stride=2, size=8, whole_videos=True)
    assert meta["frames"] == 8
    stored = {json.loads(raw["json"])["video_frames"]: (json.loads(raw["json"])["padded"], len(_frames(raw)))
              for raw in iter_tar(SplitIndex.load(tmp_path / "w", "train").shards[0])}
    assert stored == {12: (True, 6), 16: (False, 8)}


def test_fixed_clips_and_whole_videos_do_not_mix_in_one_folder(mini_ucf101, tmp_path):
    """meta.json's windows describes every split: a split of whole videos written beside fixed clips (or the other
    way round, or beside clips of a folder written before the field, which are fixed) is refused, naming windows."""
    fixed, whole = tmp_path / "fixed", tmp_path / "whole"
    write_ucf101(mini_ucf101, fixed, splits=("train",), frames=WINDOW, size=8, limit=1)
    assert read_meta(fixed)["windows"] == "fixed"
    with pytest.raises(DataError, match=r"windows: 'fixed' recorded, 'per_visit' in this run \(--whole-videos\)"):
        write_ucf101(mini_ucf101, fixed, splits=("test",), frames=WINDOW, size=8, limit=1, whole_videos=True)
    old = read_meta(fixed)
    del old["windows"]  # a folder written before the field
    (fixed / "meta.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match=r"windows: 'fixed' recorded, 'per_visit' in this run"):
        write_ucf101(mini_ucf101, fixed, splits=("test",), frames=WINDOW, size=8, limit=1, whole_videos=True)
    assert not (fixed / "test").exists()
    write_ucf101(mini_ucf101, whole, splits=("train",), frames=WINDOW, size=8, limit=1, whole_videos=True)
    with pytest.raises(DataError, match=r"windows: 'per_visit' recorded, 'fixed' in this run \(--whole-videos\)"):
        write_ucf101(mini_ucf101, whole, splits=("test",), frames=WINDOW, size=8, limit=1)
    meta = write_ucf101(mini_ucf101, whole, splits=("test",), frames=WINDOW, size=8, limit=1, whole_videos=True)
    assert sorted(meta["splits"]) == ["test", "train"] and meta["windows"] == "per_visit"
    # the same splits again, as the other kind: named as such (it was refused as a shuffled-order mismatch)
    with pytest.raises(DataError, match=r"hold whole videos \(--whole-videos\) and this run writes fixed clips.*"
                                        r"--overwrite"):
        write_ucf101(mini_ucf101, whole, splits=("train", "test"), frames=WINDOW, size=8, limit=1)
    with pytest.raises(DataError, match=r"hold fixed clips and this run writes whole videos"):
        write_ucf101(mini_ucf101, fixed, splits=("train",), frames=WINDOW, size=8, limit=1, whole_videos=True)
    # a run killed before meta.json was written leaves shards only: their refusal names --whole-videos too
    (whole / "meta.json").unlink()
    with pytest.raises(DataError, match=r"may be whole videos \(written with --whole-videos\)"):
        write_ucf101(mini_ucf101, whole, splits=("train",), frames=WINDOW, size=8, limit=1)


def test_whole_videos_refuse_a_clip_count(mini_ucf101, tmp_path):
    """--clips-per-video means nothing for whole videos: any value but the default is refused before --out is made."""
    with pytest.raises(ConfigError, match=r"--whole-videos.*--clips-per-video 8"):
        write_ucf101(mini_ucf101, tmp_path / "w", whole_videos=True, clips_per_video=8)
    out = tmp_path / "cli"
    assert run_data_cli(["data", "ucf101", str(mini_ucf101), "--out", str(out), "--whole-videos",
                         "--clips-per-video", "8"]) == 2
    assert not out.exists()
    assert run_data_cli(["data", "ucf101", str(mini_ucf101), "--out", str(out), "--whole-videos", "--frames", "4",
                         "--size", "8", "--splits", "train", "--limit", "1"]) == 0
    assert read_meta(out)["windows"] == "per_visit"
    assert run_data_cli(["data", "verify", str(out)]) == 0  # any frame count is a valid whole video


# --------------------------------------------------------------------------------------------------
# the window
# --------------------------------------------------------------------------------------------------


def _numbered(num_frames: int, video: int = 0) -> np.ndarray:
    """uint8 [T, 2, 2, 3] whose frame j holds (video, j, 0): a window shows where it was cut."""
    frames = np.zeros((num_frames, 2, 2, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1] = video, np.arange(num_frames)[:, None, None]
    return frames


def test_training_windows_are_fresh_consecutive_frames_and_evaluation_takes_the_centre():
    frames = _numbered(11)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        window = T.video_window(frames, WINDOW, rng)
        start = int(window[0, 0, 0, 1])
        assert np.array_equal(window, frames[start : start + WINDOW])  # consecutive stored frames
        starts.add(start)
    assert starts == set(range(11 - WINDOW + 1))  # every start that fits, none that does not
    centre = T.video_window(frames, WINDOW, None)
    assert np.array_equal(centre, frames[3:7]) and clip_starts(11, WINDOW, 1) == [3]
    assert T.window_start(11, WINDOW, None) == 3
    # one scalar draw from the draw's fixed numbers: start = floor(u * (T - frames + 1))
    assert T.window_start(11, WINDOW, DrawRandom(np.array([0.5, 0.0, 0.0, 0.0]), [0])) == 4
    for rng in (None, np.random.default_rng(1)):  # shorter than a window: the last frame repeated
        assert np.array_equal(T.video_window(frames[:2], WINDOW, rng), frames[[0, 1, 1, 1]])
    assert np.array_equal(T.video_window(frames[:WINDOW], WINDOW, None), frames[:WINDOW])
    with pytest.raises(ValueError, match="at least one frame"):
        T.video_window(frames[:0], WINDOW, None)


def _raw(frames: np.ndarray, key: str = "v0", cls: int = 0) -> dict:
    import io

    buf = io.BytesIO()
    np.save(buf, frames)
    return {"frames.npy": buf.getvalue(), "cls": str(cls).encode(), "__key__": key, "__shard__": "s.tar"}


PER_VISIT = {"kind": "video", "classes": ["a", "b", "c"], "frames": WINDOW, "image_size": 2, "windows": "per_visit"}


def test_a_whole_video_sample_reads_as_one_window():
    spec = SampleSpec.from_meta(PER_VISIT)
    assert spec.window == WINDOW and spec.frames is None
    sample = VideoSample(spec=spec)
    frames = _numbered(10)
    train = sample(_raw(frames), DrawRandom(np.array([0.5, 0.9, 0.0, 0.0]), [0]))["video"]
    assert train.shape == (3, WINDOW, 2, 2)
    assert torch.equal(train, T.to_tensor_pm1(frames[3:7]))  # floor(0.5 * 7) = 3
    flipped = VideoSample(spec=spec, hflip=True)(_raw(frames), DrawRandom(np.array([0.5, 0.1, 0.0, 0.0]), [0]))
    assert torch.equal(flipped["video"], T.to_tensor_pm1(frames[3:7, :, ::-1]))  # the flip takes the next number
    assert torch.equal(sample(_raw(frames), None)["video"], T.to_tensor_pm1(frames[3:7]))  # centre
    assert torch.equal(sample(_raw(frames[:1]), None)["video"], T.to_tensor_pm1(frames[[0, 0, 0, 0]]))
    for bad, reason in ((frames[:0], "no frame"), (np.zeros((5, 3, 3, 3), np.uint8), "image_size is 2")):
        with pytest.raises(InvalidSample, match=reason):
            sample(_raw(bad), None)


def test_fixed_clip_folders_read_as_before():
    """No windows field (or windows=fixed): the clip must have exactly frames frames and is read whole, the flip
    taking the first number as it always did."""
    for meta in ({**PER_VISIT, "windows": "fixed"}, {k: v for k, v in PER_VISIT.items() if k != "windows"}):
        spec = SampleSpec.from_meta(meta)
        assert spec.window is None and spec.frames == WINDOW
        clip = _numbered(WINDOW)
        out = VideoSample(spec=spec, hflip=True)(_raw(clip), DrawRandom(np.array([0.1, 0.9, 0.0, 0.0]), [0]))
        assert torch.equal(out["video"], T.to_tensor_pm1(clip[:, :, ::-1]))
        with pytest.raises(InvalidSample, match=f"clip has 10 frames, meta.json says {WINDOW}"):
            VideoSample(spec=spec)(_raw(_numbered(10)), None)
    with pytest.raises(DataError, match="windows 'sometimes'.*'fixed'.*'per_visit'"):
        SampleSpec.from_meta({**PER_VISIT, "windows": "sometimes"})


# --------------------------------------------------------------------------------------------------
# the training stream: exact and resumable
# --------------------------------------------------------------------------------------------------

VIDEOS, BATCH, EPOCH = 20, 4, 24


def _video(i: int) -> dict:
    return {"frames.npy": _numbered(2 + i % 9, video=i), "cls": i % 3}  # 2–10 frames: some shorter than a window


@pytest.fixture(scope="module")
def per_visit_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    rec = write_split(root, "train", list(range(VIDEOS)), make_sample=_video, shard_size=5)
    write_meta(root, "video", [rec], classes=["a", "b", "c"], frames=WINDOW, stride=1, image_size=2,
               windows="per_visit")
    return root


def _datamodule(root, seed: int = 3) -> VideoShardDataModule:
    return VideoShardDataModule(VideoDataConfig(root=str(root), batch_size=BATCH, num_workers=0, shuffle_buffer=6,
                                                seed=seed, samples_per_epoch=EPOCH, pin_memory=False))


def _two_epochs(dm: VideoShardDataModule) -> list[dict]:
    loader = dm.train_dataloader()
    return [b for _ in range(2) for b in loader]


def _windows(batch: dict) -> list[tuple[int, tuple[int, ...]]]:
    """(video, stored frame of each window frame) per sample of a batch."""
    levels = ((batch["video"][:, :, :, 0, 0] + 1) * 127.5).round().long()  # [B, 3, T]
    return [(int(v[0, 0]), tuple(v[1].tolist())) for v in levels]


def test_training_draws_fresh_windows_the_same_for_the_same_seed(per_visit_root):
    batches = _two_epochs(_datamodule(per_visit_root))
    assert len(batches) == 2 * EPOCH // BATCH
    seen: dict[int, set[int]] = {}
    for batch in batches:
        for video, frames in _windows(batch):
            length = 2 + video % 9
            start = frames[0]
            assert frames == tuple(np.minimum(start + np.arange(WINDOW), length - 1))  # consecutive, padded
            seen.setdefault(video, set()).add(start)
    assert any(len(starts) > 1 for starts in seen.values())  # a video visited twice got another window
    again = _two_epochs(_datamodule(per_visit_root))
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(batches, again))
    other = _two_epochs(_datamodule(per_visit_root, seed=4))
    assert any(not torch.equal(a["video"], b["video"]) for a, b in zip(batches, other))


def _position_after(batches: list[dict]) -> StreamPosition:
    """What DataPositionCallback records after ``batches`` (as tests/data/test_data_resume.py)."""
    from nar.lightning.callbacks.data_position import DataPositionCallback

    tracker = DataPositionCallback()
    for i, batch in enumerate(batches):
        tracker.on_train_batch_start(None, None, batch, i)
    return StreamPosition(epoch=tracker.epoch, batches=tracker.batches, workers=1, world_size=1,
                          draws=(tuple(tracker.draws),))


def test_a_resumed_stream_draws_the_same_windows(per_visit_root):
    uninterrupted = _two_epochs(_datamodule(per_visit_root))
    assert any(frames[0] > 0 for batch in uninterrupted for _, frames in _windows(batch))  # windows, not clips
    for stop in (1, 4, 7):
        dm = _datamodule(per_visit_root)
        dm.resume_train_stream(_position_after(uninterrupted[:stop]))
        resumed = _two_epochs(dm)[: len(uninterrupted) - stop]
        assert [b["__key__"] for b in resumed] == [b["__key__"] for b in uninterrupted[stop:]]
        for a, b in zip(resumed, uninterrupted[stop:]):
            assert torch.equal(a["video"], b["video"]), f"stopped after {stop} batches"


def test_evaluation_reads_the_centre_window(per_visit_root):
    dm = _datamodule(per_visit_root)
    samples = list(ShardStream(dm.split_index("train"), dm.eval_transform()))  # as validation reads its split
    assert len(samples) == VIDEOS
    for sample in samples:
        video = int(round((sample["video"][0, 0, 0, 0].item() + 1) * 127.5))
        expected = T.video_window(_numbered(2 + video % 9, video), WINDOW, None)
        assert torch.equal(sample["video"], T.to_tensor_pm1(expected))


# --------------------------------------------------------------------------------------------------
# evaluation's real pool, token extraction, training on the pixels
# --------------------------------------------------------------------------------------------------


def test_the_real_pool_of_a_whole_video_folder_is_its_centre_windows(per_visit_root):
    from nar.metrics.sources import iter_records, real_class_ids

    records = list(iter_records(per_visit_root, "train"))
    assert len(records) == VIDEOS
    for i, record in enumerate(records):
        video = int(record.pixels[0, 0, 0, 0])
        assert np.array_equal(record.pixels, T.video_window(_numbered(2 + video % 9, video), WINDOW, None)), i
    subset = list(iter_records(per_visit_root, "train", 5, seed=1))
    classes = real_class_ids(per_visit_root, "train", 5, seed=1)
    assert [int(r.pixels[0, 0, 0, 0]) % 3 for r in subset] == classes.tolist()
    assert all(r.pixels.shape == (WINDOW, 2, 2, 3) for r in subset)


def _tokens_refusal(root) -> str:
    return (rf"{re.escape(str(root))} holds whole videos \(meta.json windows: per_visit\).*token shards need fixed "
            rf"clips.*--clips-per-video N.*data\.root={re.escape(str(root))} tokenizer\.path=<video VQ>")


def test_token_extraction_refuses_whole_videos(per_visit_root, tmp_path, monkeypatch):
    from nar.cli import data as data_cli
    from nar.data.tokens import extract_tokens

    with pytest.raises(DataError, match=_tokens_refusal(per_visit_root)):
        extract_tokens(per_visit_root, tmp_path / "tok", torch.nn.Identity())
    assert not (tmp_path / "tok").exists()

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded before the source was checked")

    monkeypatch.setattr(data_cli, "_tokenizer_on", no_tokenizer)
    parser = argparse.ArgumentParser(prog="nar")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "tokens", str(per_visit_root), "--tokenizer", "vq.pt", "--out",
                              str(tmp_path / "cli"), "--device", "cpu"])
    with pytest.raises(DataError, match=_tokens_refusal(per_visit_root)):
        args.func(args)
    assert not (tmp_path / "cli").exists()


def test_a_generator_trains_on_fresh_windows_tokenized_on_the_fly(mini_ucf101, tmp_path):
    """The official route end to end: whole videos, a video tokenizer, two training steps on CPU; the tokenizer sees
    clips of the window length."""
    from nar.config import load_config
    from nar.runs import TrainConfig
    from nar.tokenizers import VQConfig, build_tokenizer, save_tokenizer
    from nar.workflows.train import fit

    data = tmp_path / "whole"
    write_ucf101(mini_ucf101, data, frames=WINDOW, size=16, whole_videos=True)
    torch.manual_seed(0)
    tokenizer = build_tokenizer(VQConfig(kind="video", image_size=16, num_frames=WINDOW, base_channels=16,
                                         encoder_ch_mult=[1, 2, 2], decoder_ch_mult=[1, 2, 2], num_res_blocks=1,
                                         z_channels=8, codebook_size=32, codebook_embed_dim=4, norm_groups=8,
                                         temporal_downsample=[True, False]))
    path = save_tokenizer(tokenizer, tmp_path / "vq.pt")
    shapes = []
    encode = tokenizer.encode
    tokenizer.encode = lambda x: shapes.append(tuple(x.shape)) or encode(x)
    cfg = load_config(TrainConfig, [], [
        "name=w", f"runs_root={tmp_path / 'runs'}", f"data.root={data}", f"tokenizer.path={path}",
        "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4", "data.eval_batch_size=2",
        "model.dim=32", "model.n_layer=1", "model.n_head=2", "model.vocab_size=32", "model.grid=[2,4,4]",
        "model.num_classes=2", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_steps=2",
        "trainer.val_every=0", "trainer.ckpt_every=0", "trainer.log_every=1", "trainer.threads=1",
        "eval.metrics=[fvd]", "eval.num_samples=2", "eval.batch_size=2", "eval.grid_samples=2", "allow_degraded=true"])
    result = fit(cfg, tokenizer=tokenizer, enable_progress_bar=False)
    from nar.lightning.logs import read_scalars

    losses = read_scalars(result["run_dir"], "train/")["train/loss"]
    assert result["global_step"] == 2 and len(losses) == 2 and all(math.isfinite(v) for _, v in losses)
    assert shapes[:2] == [(2, 3, WINDOW, 16, 16)] * 2
    # the final decoding validation: without eval.real_root the real side is the validated clips themselves (it
    # failed with "no real feature statistics": only token batches were collected)
    scores = {k: v for k, v in result["metrics"].items() if k.startswith("val/fvd")}
    assert scores and all(math.isfinite(v) for v in scores.values()), result["metrics"]
    validated = result["metrics"]["val/samples"]
    from nar.lightning.callbacks import FrontierDecodingCallback

    (decoding,) = [c for c in result["trainer"].callbacks if isinstance(c, FrontierDecodingCallback)]
    assert validated > 0 and decoding.last_counts["real"] == validated
