"""Shard sets nar did not write, wherever they are: timm's imagenet-1k-wds layout written with
webdataset.ShardWriter, indexed by `nar data index` (local brace patterns, `pipe:cat …`, http:// from a server on
127.0.0.1) and read by our readers through webdataset's gopen: exact-once evaluation over ranks × workers, the
training stream, and a missing remote shard named."""

from __future__ import annotations

import functools
import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from nar.data.datamodules import ImageDataConfig, ImageShardDataModule
from nar.data.index import index_shards
from nar.data.readers import MissingSamples, ResampledShardStream, ShardStream
from nar.data.shards import SplitIndex, read_meta

WNIDS = ("n01440764", "n01443537", "n01484850")
TRAIN, VAL, PER_SHARD = 13, 6, 5


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def timm_set(tmp_path_factory) -> Path:
    """``imagenet1k-{train,validation}-%04d.tar`` as timm writes them: jpg, cls, json (filename, label, class_name)."""
    import webdataset as wds

    src = tmp_path_factory.mktemp("timm")
    for split, n, offset in (("train", TRAIN, 0), ("validation", VAL, 1000)):
        with wds.ShardWriter(str(src / f"imagenet1k-{split}-%04d.tar"), maxcount=PER_SHARD, verbose=0) as sink:
            for i in range(offset, offset + n):
                cls = i % 3
                sink.write({"__key__": f"{WNIDS[cls]}_{i}", "jpg": _jpeg(i), "cls": cls,
                            "json": {"filename": f"{WNIDS[cls]}_{i}.JPEG", "label": cls, "class_name": WNIDS[cls]}})
    return src


@pytest.fixture(scope="module")
def server(timm_set):
    """An HTTP server on 127.0.0.1 serving the shard folder."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(timm_set)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _keys(dataset, workers: int) -> list[str]:
    return [s["__key__"] for s in DataLoader(dataset, batch_size=None, num_workers=workers)]


def _exactly_once(root: Path, split: str, expected: int) -> None:
    index = SplitIndex.load(root, split)
    parts = [_keys(ShardStream(index, rank=r, world_size=2), workers=2) for r in (0, 1)]
    assert len(parts[0]) + len(parts[1]) == expected and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(s["__key__"] for s in ShardStream(index))


def test_index_a_timm_set_by_brace_pattern(timm_set, tmp_path):
    out = tmp_path / "idx"
    meta = index_shards(str(timm_set / "imagenet1k-train-{0000..0002}.tar"), out)
    index_shards(str(timm_set / "imagenet1k-validation-{0000..0001}.tar"), out, split="val")
    meta = read_meta(out)
    assert meta["kind"] == "image" and meta["classes"] == list(WNIDS) and meta["indexed"]
    assert meta["splits"]["train"]["shard_samples"] == [5, 5, 3] and meta["splits"]["val"]["samples"] == VAL
    assert all(Path(s).is_absolute() for s in meta["splits"]["train"]["shards"])  # not copied, not rewritten
    assert SplitIndex.load(out, "train").labels.tolist() == [i % 3 for i in range(TRAIN)]
    dm = ImageShardDataModule(ImageDataConfig(root=str(out), image_size=16, batch_size=4, num_workers=0,
                                              samples_per_epoch=8))
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == VAL
    assert [len(b["label"]) for b in dm.train_dataloader()] == [4, 4]
    _exactly_once(out, "train", TRAIN)


def test_read_through_pipe_commands(timm_set, tmp_path):
    out = tmp_path / "pipe"
    index_shards(f"pipe:cat {timm_set}/imagenet1k-train-{{0000..0002}}.tar", out)
    shards = read_meta(out)["splits"]["train"]["shards"]
    assert shards[0] == f"pipe:cat {timm_set}/imagenet1k-train-0000.tar" and len(shards) == 3
    _exactly_once(out, "train", TRAIN)
    stream = ResampledShardStream(SplitIndex.load(out, "train"), shuffle_buffer=4, samples_per_epoch=20)
    assert len(list(stream)) == 20 and not stream.bad.total


def test_read_over_http_and_name_a_missing_shard(timm_set, server, tmp_path):
    from nar_data_testutil import run_data_cli

    out = tmp_path / "http"
    assert run_data_cli(["data", "index", f"{server}/imagenet1k-validation-{{0000..0001}}.tar", "--out", str(out),
                         "--split", "val", "--workers", "2"]) == 0
    assert read_meta(out)["splits"]["val"]["shards"][1] == f"{server}/imagenet1k-validation-0001.tar"
    _exactly_once(out, "val", VAL)
    (timm_set / "imagenet1k-validation-0001.tar").rename(timm_set / "gone.tar")  # the server now answers 404
    try:
        with pytest.raises(MissingSamples, match=r"5 of 6 selected samples read; .*validation-0001.tar ended after 0"):
            list(ShardStream(SplitIndex.load(out, "val")))
    finally:
        (timm_set / "gone.tar").rename(timm_set / "imagenet1k-validation-0001.tar")


def test_samples_without_an_image_are_counted_and_named(tmp_path):
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "set-%02d.tar"), maxcount=10, verbose=0) as sink:
        for i in range(4):
            sink.write({"__key__": f"s{i}", **({"jpg": _jpeg(i)} if i != 2 else {"txt": "no image"}), "cls": i % 2})
    meta = index_shards(str(tmp_path / "set-00.tar"), tmp_path / "idx")
    skipped = meta["splits"]["train"]["skipped"]
    assert meta["splits"]["train"]["shard_samples"] == [4] and skipped["count"] == 1
    assert skipped["files"][0][0].endswith("set-00.tar:s2") and meta["classes"] == ["0", "1"] and meta["has_captions"]


def test_verify_reads_a_set_indexed_by_url(timm_set, server, tmp_path):
    from nar.data.verify import verify

    index_shards(f"{server}/imagenet1k-train-{{0000..0002}}.tar", tmp_path / "v")
    report = verify(tmp_path / "v")
    assert report.ok and report.samples == TRAIN, report.problems


def test_shard_specs_become_locations(tmp_path, monkeypatch):
    from nar.data.shards import expand_specs, shard_location

    assert shard_location(tmp_path, "train/a.tar") == tmp_path / "train" / "a.tar"
    assert shard_location(tmp_path, "/abs/a.tar") == Path("/abs/a.tar")
    assert shard_location(tmp_path, "file:///abs/a.tar") == Path("/abs/a.tar")
    assert shard_location(tmp_path, "s3://bucket/set/a.tar") == "pipe:aws s3 cp s3://bucket/set/a.tar -"
    monkeypatch.setenv("NAR_S3_PIPE", "s5cmd cat {url}")
    assert shard_location(tmp_path, "s3://b/a.tar") == "pipe:s5cmd cat s3://b/a.tar"
    assert shard_location(tmp_path, "https://host/a.tar") == "https://host/a.tar"
    assert expand_specs("x-{00..02}.tar::y.tar") == ["x-00.tar", "x-01.tar", "x-02.tar", "y.tar"]
    assert expand_specs(["pipe:cat a-{0..1}.tar", "b.tar"]) == ["pipe:cat a-0.tar", "pipe:cat a-1.tar", "b.tar"]


def test_a_workflows_first_shard_probe_reads_pipe_and_brace_specs(tmp_path):
    """The probes that read a dataset's first shard (the tokenizer's stored image size, the caption feature shape)
    open shards as the readers do: a meta.json listing pipe: commands or a brace pattern works too."""
    import json

    from PIL import Image

    from nar.data.encode import encode_png
    from nar.data.shards import first_shard, write_meta, write_split
    from nar.workflows.tokenizer import stored_image_size

    root = tmp_path / "ds"
    rec = write_split(root, "train", list(range(4)), shard_size=2, make_sample=lambda i: {
        "png": encode_png(Image.new("RGB", (30, 40))), "cls": i % 2})
    write_meta(root, "image", [rec], classes=["a", "b"])
    meta = json.loads((root / "meta.json").read_text())
    for shards in ([f"pipe:cat {root / s}" for s in meta["splits"]["train"]["shards"]],
                   [str(root / "train" / "train-{000000..000001}.tar")]):
        meta["splits"]["train"]["shards"] = shards
        assert stored_image_size(root, meta) == 30
        assert first_shard(root, meta["splits"]["train"]) is not None
    assert first_shard(root, {"shards": []}) is None
