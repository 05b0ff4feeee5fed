"""Image–caption pairs from a folder of .txt captions or a JSONL / TSV manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from nar_data_testutil import run_data_cli, write_jpeg

from nar.data.pairs import held_out_count, read_manifest, write_pairs
from nar.data.shards import BadInputLog, iter_tar


def test_pairs_from_caption_folder(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "pairs"
    for i in range(5):
        write_jpeg(src / "sub" / f"img{i}.jpg", rng)
        if i != 4:
            (src / "sub" / f"img{i}.txt").write_text(f"a picture number {i}\n")
    meta = write_pairs(src, tmp_path / "out", val_fraction=0.25, seed=0)
    assert meta["kind"] == "pairs"
    assert meta["splits"]["train"]["samples"] == 3 and meta["splits"]["val"]["samples"] == 1
    assert meta["splits"]["train"]["skipped"]["files"][0][1].startswith("missing caption")
    captions = [s["txt"].decode() for s in iter_tar(tmp_path / "out" / "train" / "train-000000.tar")]
    assert all(c.startswith("a picture number") for c in captions)


def test_pairs_from_jsonl_and_tsv(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i in range(3):
        write_jpeg(tmp_path / "imgs" / f"{i}.png", rng)
    lines = [json.dumps({"image": f"imgs/{i}.png", "caption": f"caption {i}"}) for i in range(3)]
    lines += ['{"image": "imgs/missing.png", "caption": "gone"}', "not json"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    meta = write_pairs(tmp_path / "m.jsonl", tmp_path / "out1", val_fraction=0.0)
    assert meta["splits"]["train"]["samples"] == 3 and meta["splits"]["train"]["skipped"]["count"] == 2
    assert "val" not in meta["splits"]
    samples = list(iter_tar(tmp_path / "out1" / "train" / "train-000000.tar"))  # train: a seeded random order
    assert sorted(s["txt"] for s in samples) == [b"caption 0", b"caption 1", b"caption 2"]
    assert all("png" in s and json.loads(s["json"])["source"] == f"imgs/{s['txt'].decode()[-1]}.png" for s in samples)

    (tmp_path / "m.tsv").write_text("image\tcaption\n" + "".join(f"imgs/{i}.png\tcaption {i}\n" for i in range(3)))
    assert run_data_cli(["data", "pairs", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "out2")]) == 0
    # by default a small val split is held out (at least one pair of two or more), and the summary says so
    assert "val: 1 of 3 pairs held out (--val-fraction 0.05, --seed 0)" in capsys.readouterr().out
    assert run_data_cli(["data", "verify", str(tmp_path / "out2")]) == 0


def test_held_out_count():
    assert [held_out_count(n, 0.05) for n in (0, 1, 2, 19, 40, 1000)] == [0, 0, 1, 1, 2, 50]
    assert held_out_count(1000, 0.0) == 0 and held_out_count(3, 0.9) == 2  # never the whole dataset


def test_tsv_manifest_keeps_quotes(tmp_path):
    """TSV lines split on the first tab, no csv quoting: a leading or unclosed quote stays in the caption
    and never swallows the lines after it."""
    rng = np.random.default_rng(2)
    names = [f"{i}.png" for i in range(4)]
    for name in names:
        write_jpeg(tmp_path / name, rng)
    captions = ['"Hello," she said', '"an open quote', "a red square", "a blue square"]
    (tmp_path / "m.tsv").write_text("".join(f"{n}\t{c}\n" for n, c in zip(names, captions)) + "no tab here\n")
    bad = BadInputLog()
    items = read_manifest(tmp_path / "m.tsv", bad)
    assert [(Path(it[0]).name, it[2]) for it in items] == list(zip(names, captions))
    assert bad.files == [(f"{tmp_path / 'm.tsv'}:{len(names) + 1}", "bad manifest line: needs <path>\\t<caption>")]


def test_json_array_manifest(tmp_path):
    """A ``.json`` manifest that is one JSON array (one line or pretty-printed) is read as a list of
    objects, not line by line as JSONL; a bad entry is recorded by its index."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(3):
        write_jpeg(tmp_path / f"{i}.png", rng)
        rows.append({"image": f"{i}.png", "caption": f"caption {i}"})
    for indent in (None, 2):
        path = tmp_path / f"m{indent}.json"
        path.write_text(json.dumps([*rows, {"image": "0.png"}], indent=indent))
        bad = BadInputLog()
        items = read_manifest(path, bad)
        assert [it[2] for it in items] == [r["caption"] for r in rows]
        assert [f for f, _ in bad.files] == [f"{path}[{len(rows)}]"]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))  # JSONL named .json still reads
    assert len(read_manifest(tmp_path / "lines.json", BadInputLog())) == len(rows)


def test_val_fraction_out_of_range_is_a_config_error_naming_it(tmp_path):
    """A usage error (one line, exit 2), not a traceback; no dataset is written."""
    from nar.errors import ConfigError

    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"--val-fraction.*\[0, 1\)"):
            held_out_count(10, bad)
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_jpeg(src / f"{i}.jpg", rng)
        (src / f"{i}.txt").write_text(f"caption {i}")
    assert run_data_cli(["data", "pairs", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "1.5"]) == 2
    assert not (tmp_path / "out" / "meta.json").exists()


def _two_groups(src: Path, per_group: int = 8) -> None:
    """``cats/`` then ``dogs/``: a caption folder listed group by group."""
    rng = np.random.default_rng(4)
    for group in ("cats", "dogs"):
        for i in range(per_group):
            write_jpeg(src / group / f"{i}.jpg", rng, size=(8, 8))
            (src / group / f"{i}.txt").write_text(f"a {group[:-1]} number {i}")


def _captions(out: Path, split: str) -> list[list[str]]:
    """The captions of each shard of ``split``, in order."""
    meta = json.loads((out / "meta.json").read_text())
    return [[s["txt"].decode() for s in iter_tar(out / shard)] for shard in meta["splits"][split]["shards"]]


def _shard_bytes(out: Path, split: str = "train") -> list[bytes]:
    meta = json.loads((out / "meta.json").read_text())
    return [(out / shard).read_bytes() for shard in meta["splits"][split]["shards"]]


def test_train_pairs_are_written_shuffled_reproducibly_and_val_keeps_its_order(tmp_path):
    """Training reads whole shards into a small buffer, so a train split stored folder by folder (cats, then dogs)
    gave batches of one group: it is written in a random order drawn from --seed, the same for the same seed, each
    image with its own caption; val keeps the listing order."""
    _two_groups(tmp_path / "src")
    meta = write_pairs(tmp_path / "src", tmp_path / "a", val_fraction=0.25, seed=0, shard_size=4)
    train, val = _captions(tmp_path / "a", "train"), _captions(tmp_path / "a", "val")
    assert meta["splits"]["train"]["samples"] == 12 and meta["splits"]["val"]["samples"] == 4
    assert {c.split()[1] for c in train[0]} == {"cat", "dog"}  # the first shard mixes both groups
    listed = [f"a {group} number {i}" for group in ("cat", "dog") for i in range(8)]
    assert [c for s in train for c in s] != [c for c in listed if c not in val[0]]  # not the listing order
    assert val[0] == [c for c in listed if c in val[0]]  # val: the listing order
    for shard in (tmp_path / "a" / s for s in meta["splits"]["train"]["shards"]):
        for raw in iter_tar(shard):  # each image beside its own caption
            group, number = raw["txt"].decode().split()[1], raw["txt"].decode().split()[-1]
            assert json.loads(raw["json"])["source"] == f"{group}s/{number}.jpg"

    write_pairs(tmp_path / "src", tmp_path / "b", val_fraction=0.25, seed=0, shard_size=4)
    assert _shard_bytes(tmp_path / "b") == _shard_bytes(tmp_path / "a")
    write_pairs(tmp_path / "src", tmp_path / "c", val_fraction=0.0, seed=1, shard_size=4)
    assert [c for s in _captions(tmp_path / "c", "train") for c in s] != [c for s in train for c in s]


def test_a_half_written_train_split_of_pairs_resumes_to_the_same_shards(tmp_path):
    """Resuming a half-written train split gives the shards an uninterrupted run gives; one an earlier version
    began in listing order is refused, naming its folder, rather than finished in the other order."""
    from nar.data.encode import EncodeImage
    from nar.data.pairs import scan_caption_folder
    from nar.data.shards import write_split
    from nar.errors import DataError

    _two_groups(tmp_path / "src")
    whole = write_pairs(tmp_path / "src", tmp_path / "whole", val_fraction=0.25, seed=0, shard_size=4)
    out = tmp_path / "out"
    write_pairs(tmp_path / "src", out, val_fraction=0.25, seed=0, shard_size=4)
    (out / "train" / "train-000002.tar").unlink()  # stopped before its last shard
    (out / "meta.json").unlink()
    resumed = write_pairs(tmp_path / "src", out, val_fraction=0.25, seed=0, shard_size=4)
    assert resumed["splits"] == whole["splits"]
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")
    assert _shard_bytes(out, "val") == _shard_bytes(tmp_path / "whole", "val")

    old = tmp_path / "old"
    items = scan_caption_folder(tmp_path / "src", BadInputLog())
    write_split(old, "train", items, make_sample=EncodeImage(resize=None, source_root=str(tmp_path / "src")),
                shard_size=4, params={"resize": None})  # listing order, as before
    (old / "train" / "train-000003.tar").unlink()
    with pytest.raises(DataError, match=re.escape(str(old / "train")) + ".*shuffled order"):
        write_pairs(tmp_path / "src", old, val_fraction=0.0, seed=0, shard_size=4)
