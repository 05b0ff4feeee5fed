"""Image–caption pairs from a folder of .txt captions or a JSONL / TSV manifest."""

from __future__ import annotations

import json
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
