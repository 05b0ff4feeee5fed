"""Shard writer (atomic, resumable, deterministic) and the tolerant tar reader."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from nar.data.shards import (
    BadInputLog,
    ShardWriter,
    SkipSample,
    SplitIndex,
    iter_tar,
    read_meta,
    write_meta,
    write_split,
)
from nar.errors import DataError


def make_sample(i: int) -> dict:
    if i == 3:
        raise SkipSample(f"item{i}", "cannot decode image: broken on purpose")
    if i == 5:
        raise ValueError("an unexpected bug in one sample")
    return {"cls": i % 2, "json": {"i": i}, "txt": f"sample {i}", "x.npy": np.full((2, 2), i, dtype=np.int32)}


def test_writer_renames_on_close_and_aborts_on_error(tmp_path):
    path = tmp_path / "s" / "train-000000.tar"
    with ShardWriter(path) as w:
        w.write("a", {"txt": "hello"})
        assert w.tmp_path.is_file() and w.tmp_path.parent == path.parent and not path.exists()
        assert str(os.getpid()) in w.tmp_path.name  # one temporary per writing process
    assert path.is_file() and not list((tmp_path / "s").glob(".*.tmp"))

    broken = tmp_path / "s" / "train-000001.tar"
    with pytest.raises(RuntimeError):
        with ShardWriter(broken) as w:
            w.write("a", {"txt": "hello"})
            raise RuntimeError("crash while writing")
    assert not broken.exists() and not list((tmp_path / "s").glob(".*.tmp"))
    aborted = ShardWriter(tmp_path / "s" / "train-000002.tar")
    aborted.write("a", {"txt": "x"})
    aborted.abort()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["train-000000.tar"]
    with pytest.raises(ValueError):
        ShardWriter(tmp_path / "x.tar").write("has.dot", {"txt": "x"})


def test_write_split_skips_bad_items_records_labels_and_is_deterministic(tmp_path):
    rec = write_split(tmp_path / "a", "train", list(range(10)), make_sample=make_sample, shard_size=4)
    assert rec.shard_samples == [3, 3, 2] and rec.samples == 8
    assert rec.labels.tolist() == [i % 2 for i in range(10) if i not in (3, 5)]
    assert rec.bad.total == 2 and {p for p, _ in rec.bad.files} == {"item3", "5"}
    write_meta(tmp_path / "a", "image", [rec], classes=["even", "odd"])
    meta = read_meta(tmp_path / "a")
    assert meta["splits"]["train"]["samples"] == 8 and meta["splits"]["train"]["skipped"]["count"] == 2

    samples = list(iter_tar(tmp_path / "a" / "train" / "train-000000.tar"))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    assert np.load(io.BytesIO(samples[2]["x.npy"])).tolist() == [[2, 2], [2, 2]]
    assert json.loads(samples[1]["json"]) == {"i": 1} and samples[1]["cls"] == b"1"

    rec2 = write_split(tmp_path / "b", "train", list(range(10)), make_sample=make_sample, shard_size=4)
    for s in rec2.shards:  # same items, same bytes: shards are reproducible
        assert (tmp_path / "a" / s).read_bytes() == (tmp_path / "b" / s).read_bytes()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Crash:
    """Fails hard (like a kill) at one item, counts calls."""

    def __init__(self, at: int | None) -> None:
        self.at, self.calls = at, 0

    def __call__(self, i: int) -> dict:
        self.calls += 1
        if i == self.at:
            raise KeyboardInterrupt
        return {"cls": 0, "txt": str(i)}


def test_write_split_resumes_after_a_crash_without_redoing_finished_shards(tmp_path):
    crash = Crash(at=6)
    with pytest.raises(KeyboardInterrupt):
        write_split(tmp_path, "train", list(range(10)), make_sample=crash, shard_size=4)
    done = sorted(p.name for p in (tmp_path / "train").glob("*.tar"))
    assert done == ["train-000000.tar"]  # shard 1 was half-written: never left as a .tar
    dead = _dead_pid()
    (tmp_path / "train" / f".train-000002.tar.{dead}.tmp").write_bytes(b"junk from a killed process")
    live = tmp_path / "train" / f".train-000002.tar.{os.getppid()}.tmp"  # a live process's: never touched
    live.write_bytes(b"someone else's")

    again = Crash(at=None)
    rec = write_split(tmp_path, "train", list(range(10)), make_sample=again, shard_size=4)
    assert again.calls == 6  # items 4…9 only
    assert rec.shard_samples == [4, 4, 2]
    assert [p.name for p in (tmp_path / "train").glob("*.tmp")] == [live.name]  # the dead writer's is gone

    with pytest.raises(DataError, match="different inputs"):
        write_split(tmp_path, "train", list(range(11)), make_sample=again, shard_size=4)


def test_write_split_says_a_callers_hint_when_a_folder_holds_other_inputs(tmp_path):
    """A caller that knows a likely cause of a mismatching folder has it said (``mismatch_hint``); the writer
    itself says only that inputs or settings differ, whatever the params hold."""
    items = list(range(6))
    write_split(tmp_path, "train", items, make_sample=make_sample, shard_size=4)
    with pytest.raises(DataError, match=r"different inputs or settings \(an older tool wrote it\); "):
        write_split(tmp_path, "train", items, make_sample=make_sample, shard_size=4, params={"v": 2},
                    mismatch_hint="an older tool wrote it")
    with pytest.raises(DataError, match=r"different inputs or settings; ") as err:
        write_split(tmp_path, "train", items, make_sample=make_sample, shard_size=4, params={"order": "shuffled"})
    assert "shuffled" not in str(err.value)  # the writer names no caller's settings


def test_write_split_in_parallel_processes_matches_in_process(tmp_path):
    a = write_split(tmp_path / "a", "train", list(range(12)), make_sample=make_sample, shard_size=3)
    b = write_split(tmp_path / "b", "train", list(range(12)), make_sample=make_sample, shard_size=3, workers=2)
    assert a.shard_samples == b.shard_samples and a.labels.tolist() == b.labels.tolist()
    for s in a.shards:
        assert (tmp_path / "a" / s).read_bytes() == (tmp_path / "b" / s).read_bytes()


def test_iter_tar_survives_truncated_and_missing_shards(tmp_path):
    rec = write_split(tmp_path, "train", list(range(3)), make_sample=lambda i: {"txt": "x" * 3000}, shard_size=3)
    path = tmp_path / rec.shards[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    bad = BadInputLog()
    got = list(iter_tar(path, bad))
    assert 0 < len(got) < 3 and bad.total == 1 and str(path) in bad.files[0][0]
    assert list(iter_tar(tmp_path / "nope.tar", bad)) == [] and bad.total == 2


def test_shards_are_readable_by_webdataset(tmp_path):
    import webdataset as wds

    rec = write_split(tmp_path, "train", list(range(7)), make_sample=make_sample, shard_size=4)
    urls = [str(tmp_path / s) for s in rec.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(7) if i not in (3, 5)]
    assert all(set(s) >= {"cls", "json", "txt", "x.npy"} for s in samples)


def test_split_index_locates_samples(tmp_path, caplog):
    rec = write_split(tmp_path, "train", list(range(10)), make_sample=make_sample, shard_size=4)
    write_meta(tmp_path, "image", [rec])
    index = SplitIndex.load(tmp_path, "train")
    assert index.total == 8 and index.starts.tolist() == [0, 3, 6, 8] and len(index.labels) == 8
    with pytest.raises(DataError, match="no split"):
        SplitIndex.load(tmp_path, "val")
    with pytest.raises(DataError, match="meta.json"):
        read_meta(tmp_path / "train")
    with tarfile.open(tmp_path / rec.shards[0]) as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())
    # a meta.json without shard sizes (an older or hand-written one): the labels cannot be placed, quietly
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["splits"]["train"]["shard_samples"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level("WARNING"):
        index = SplitIndex.load(tmp_path, "train")
    assert index.counts == (-1, -1, -1) and index.labels is None and not caplog.records


def test_skipped_inputs_past_the_listed_names_are_still_counted(tmp_path, monkeypatch):
    """meta.json lists the first MAX_LISTED_BAD skipped names but counts every one: a scan's rejects and an
    indexed shard's samples without an image alike."""
    from PIL import Image

    from nar.data import shards
    from nar.data.index import index_shards

    monkeypatch.setattr(shards, "MAX_LISTED_BAD", 3)
    scan = BadInputLog()
    for i in range(5):
        scan.record(f"scan{i}.png", "cannot decode image: broken", quiet=True)
    rec = write_split(tmp_path / "a", "train", list(range(10)), make_sample=make_sample, shard_size=4, scan_bad=scan)
    assert rec.bad.total == 5 + 2 and rec.bad.counts["cannot decode image"] == 5 + 1 and len(rec.bad.files) == 3

    shard = tmp_path / "foreign-0000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(5):  # a class, no image
            info = tarfile.TarInfo(f"k{i}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"0"))
        png = io.BytesIO()
        Image.new("RGB", (4, 4)).save(png, format="PNG")
        for suffix, data in (("png", png.getvalue()), ("cls", b"1")):
            info = tarfile.TarInfo(f"ok.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    skipped = index_shards(str(shard), tmp_path / "idx")["splits"]["train"]["skipped"]
    assert skipped["count"] == 5 and len(skipped["files"]) == 3


def _damage(path, how: str) -> None:
    """Spoil the header of the member in the middle of the plain tar ``path`` (``gzip``: then compress it)."""
    import gzip

    with tarfile.open(path) as tar:
        members = tar.getmembers()
    at = members[len(members) // 2].offset
    data = bytearray(path.read_bytes())
    if how == "zeroed":  # a block lost to zeros reads as the end-of-archive marker
        data[at : at + 512] = bytes(512)
    else:  # a flipped bit: the checksum no longer matches
        data[at + 10] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if how == "gzip" else bytes(data))


@pytest.mark.parametrize("how", ["flipped", "zeroed", "gzip"])
def test_iter_tar_reports_a_damaged_member_header(tmp_path, how):
    """tarfile's stream reader takes a bad header after the first member for the end of the archive: the shard
    must still be recorded as damaged (named), not read as a shorter one."""
    n = 6
    rec = write_split(tmp_path, "train", list(range(n)), make_sample=lambda i: {"txt": f"sample {i}", "cls": i % 2},
                      shard_size=n)
    path = tmp_path / rec.shards[0]
    _damage(path, how)
    bad = BadInputLog()
    got = list(iter_tar(path, bad))
    assert len(got) < n
    assert bad.total == 1 and bad.files[0][0] == str(path) and "damaged member header" in bad.files[0][1]


def test_iter_tar_accepts_complete_tars_however_they_are_padded(tmp_path):
    """The two zero blocks and any record padding after them (Python's tarfile: 10 KiB records; GNU tar -b 64:
    32 KiB) are the end of a tar, not damage; gzip-compressed tars too."""
    import gzip
    import shutil

    members = tmp_path / "m"
    members.mkdir()
    for i in range(3):
        (members / f"k{i}.txt").write_bytes(b"x" * (100 + 700 * i))
        (members / f"k{i}.cls").write_bytes(b"1")
    names = sorted(p.name for p in members.iterdir())
    tars = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        tars.append(tmp_path / f"py{fmt}.tar")
        with tarfile.open(tars[-1], "w", format=fmt) as tar:
            for name in names:
                tar.add(members / name, arcname=name)
    tars.append(tmp_path / "py.tar.gz")
    tars[-1].write_bytes(gzip.compress(tars[0].read_bytes()))
    if shutil.which("tar"):
        for block in ("20", "64"):
            tars.append(tmp_path / f"gnu{block}.tar")
            subprocess.run(["tar", "-b", block, "-cf", str(tars[-1]), "-C", str(members), *names], check=True)
    for path in tars:
        bad = BadInputLog()
        got = list(iter_tar(path, bad))
        assert (bad.total, [s["__key__"] for s in got]) == (0, ["k0", "k1", "k2"]), path.name


def test_iter_tar_lower_cases_member_extensions(tmp_path):
    """As webdataset does: an ImageNet ``x.JPEG`` member is the sample's ``jpeg`` field."""
    path = tmp_path / "upper.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("a.JPEG", b"jpeg bytes"), ("a.Cls", b"1"), ("b.seg.PNG", b"png bytes")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = list(iter_tar(path))
    assert [{k: v for k, v in s.items() if not k.startswith("__")} for s in got] == [
        {"jpeg": b"jpeg bytes", "cls": b"1"}, {"seg.png": b"png bytes"}]


def test_write_split_progress_is_log_lines_from_the_first_part_only(tmp_path, caplog, capfd):
    """In a log file (stderr not a terminal) a writer's progress is nar.progress's log lines, not a tqdm bar
    redrawn with carriage returns, and of a split written in parts (`nar data tokens --gpus N`) only the first
    part reports, with its own count."""
    import logging

    caplog.set_level(logging.INFO, logger="nar")
    items, shard_size, world = list(range(14)), 3, 2
    for rank in range(world):
        assert write_split(tmp_path, "train", items, make_sample=lambda i: {"cls": 0, "json": {"i": i}},
                           shard_size=shard_size, part=(rank, world)) is None
    assert "\r" not in capfd.readouterr().err
    first_part = sum(len(items[i:i + shard_size]) for i in range(0, len(items), shard_size * world))
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train")]
    assert len(done) == 1 and done[0].split(": ", 1)[1].startswith(f"{first_part} sample in "), done


def _meta_with_train(root, **settings) -> None:
    rec = write_split(root, "train", list(range(2)), make_sample=lambda i: {"cls": i}, shard_size=2)
    write_meta(root, "image", [rec], **settings)


def test_a_split_with_other_folder_wide_settings_is_refused_naming_each_field(tmp_path):
    """meta.json's settings describe every split: a run writing only other splits with other settings is refused,
    naming each differing field with both values (and its option), the splits written with the recorded ones and
    the remedies; long lists by their first difference; a field an older meta.json lacks compares as its default
    or, with none, is skipped; the splits being rewritten and a folder without meta.json are not checked here."""
    from nar.data.shards import refuse_other_folder_settings

    root = tmp_path / "ds"
    classes = [f"c{i}" for i in range(8)]
    _meta_with_train(root, resize=32, classes=classes, grid=[4, 4])
    before = (root / "meta.json").read_bytes()
    other = {"resize": None, "classes": [*classes[:5], "x", *classes[6:]], "grid": [2, 8]}
    with pytest.raises(DataError) as err:
        refuse_other_folder_settings(root, "image", ["val"], other, flags={"resize": "--resize"})
    message = str(err.value)
    assert message.startswith(f"{root / 'meta.json'} records one set of settings for every split")
    for part in ("resize: 32 recorded, None in this run (--resize)", "classes: item 5 'c5' recorded, 'x' in this run",
                 "grid: [4, 4] recorded, [2, 8] in this run", "the splits written with them: train",
                 "write val to another --out", "--overwrite"):
        assert part in message
    with pytest.raises(DataError, match=r"classes: 8 items recorded, 9 in this run\)"):
        refuse_other_folder_settings(root, "image", ["val"], {"classes": [*classes, "c8"]})
    with pytest.raises(DataError, match=r"delete it and index every split again$"):
        refuse_other_folder_settings(root, "image", ["val"], {"resize": 64}, again="delete it and index every split again")
    for same_split, settings in ((["train"], other), (["val", "train"], other), (["val"], {"resize": 32})):
        refuse_other_folder_settings(root, "image", same_split, settings)
    refuse_other_folder_settings(root, "image", ["val"], {"seed": 3})  # not recorded, no default: not compared
    with pytest.raises(DataError, match=r"seed: 0 recorded, 3 in this run"):
        refuse_other_folder_settings(root, "image", ["val"], {"seed": 3}, defaults={"seed": 0})
    with pytest.raises(DataError, match=r"describes a 'image' dataset, not 'video'"):
        refuse_other_folder_settings(root, "video", ["val"], {})
    refuse_other_folder_settings(tmp_path / "new", "image", ["val"], other)
    assert (root / "meta.json").read_bytes() == before
