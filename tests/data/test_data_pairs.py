"""Image–caption pairs from a folder of .txt captions or a JSONL / TSV manifest."""

from __future__ import annotations

import json

import numpy as np
from nar_data_testutil import run_data_cli, write_jpeg

from nar.data.pairs import held_out_count, write_pairs
from nar.data.shards import iter_tar


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
    first = next(iter_tar(tmp_path / "out1" / "train" / "train-000000.tar"))
    assert "png" in first and first["txt"] == b"caption 0"

    (tmp_path / "m.tsv").write_text("image\tcaption\n" + "".join(f"imgs/{i}.png\tcaption {i}\n" for i in range(3)))
    assert run_data_cli(["data", "pairs", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "out2")]) == 0
    # by default a small val split is held out (at least one pair of two or more), and the summary says so
    assert "val: 1 of 3 pairs held out (--val-fraction 0.05, --seed 0)" in capsys.readouterr().out
    assert run_data_cli(["data", "verify", str(tmp_path / "out2")]) == 0


def test_held_out_count():
    assert [held_out_count(n, 0.05) for n in (0, 1, 2, 19, 40, 1000)] == [0, 0, 1, 1, 2, 50]
    assert held_out_count(1000, 0.0) == 0 and held_out_count(3, 0.9) == 2  # never the whole dataset
