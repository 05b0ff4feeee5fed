"""`nar data index` into a folder that already holds an indexed split: meta.json's one class list describes both."""

from __future__ import annotations

import io
import re
import tarfile

import pytest
from PIL import Image

from nar.data.index import index_shards
from nar.data.shards import read_meta
from nar.errors import DataError


def _shard(path, labels) -> None:
    """A foreign webdataset shard: a 4×4 PNG and a class per sample."""
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with tarfile.open(path, "w") as tar:
        for i, cls in enumerate(labels):
            for suffix, data in (("png", png.getvalue()), ("cls", str(cls).encode())):
                info = tarfile.TarInfo(f"k{i}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_split_indexed_with_other_classes_is_refused(tmp_path):
    """`--split val --classes B` after train was indexed with `--classes A` rewrote meta.json's classes, which then
    named train's labels wrongly (or too few of them): refused before anything is written, naming both lists and
    the split indexed with the recorded ones; without --classes, or with the same ones, val joins the folder."""
    _shard(tmp_path / "train.tar", [0, 1, 2])
    _shard(tmp_path / "val.tar", [0, 1])
    out = tmp_path / "idx"
    index_shards(str(tmp_path / "train.tar"), out, classes=["cat", "dog", "eel"])
    before = (out / "meta.json").read_bytes()
    with pytest.raises(DataError, match=rf"{re.escape(str(out / 'meta.json'))} records .*classes: \['cat', 'dog', 'eel'\] "
                                        r"recorded, \['n0', 'n1'\] in this run \(--classes\).*written with them: train"
                                        r".*index every split again"):
        index_shards(str(tmp_path / "val.tar"), out, split="val", classes=["n0", "n1"])
    assert (out / "meta.json").read_bytes() == before and not (out / "val").exists()
    index_shards(str(tmp_path / "val.tar"), out, split="val")
    meta = index_shards(str(tmp_path / "val.tar"), out, split="val", classes=["cat", "dog", "eel"])
    assert sorted(meta["splits"]) == ["train", "val"] and read_meta(out)["classes"] == ["cat", "dog", "eel"]
