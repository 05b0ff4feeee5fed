"""ImageNet layout → image shards, with corrupt, truncated, unlabelled files and an empty folder."""

from __future__ import annotations

import json

import pytest
from nar_data_testutil import WNIDS, run_data_cli, write_jpeg

from nar.data.imagenet import write_imagenet
from nar.data.shards import SplitIndex, iter_tar, read_meta
from nar.data.verify import verify
from nar.errors import DataError


def test_imagenet_shards_skip_bad_files_and_keep_class_names(mini_imagenet, tmp_path, caplog):
    out = tmp_path / "shards"
    meta = write_imagenet(mini_imagenet, out, shard_size=5)
    assert meta["kind"] == "image"
    assert meta["classes"] == [*WNIDS, "n09999999"]
    assert meta["class_names"][:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["samples"] == 12 and train["shard_samples"] == [4, 4, 4]
    reasons = {p.split("/")[-1]: r for p, r in train["skipped"]["files"]}
    assert set(reasons) == {"corrupt.JPEG", "truncated.JPEG", "n09999999"}
    assert reasons["n09999999"] == "empty class folder"
    assert val["samples"] == 6 and [p.split("/")[-1] for p, _ in val["skipped"]["files"]] == ["unlabelled.JPEG"]
    # each bad file was named in a warning as it was skipped
    assert any("corrupt.JPEG" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    index = SplitIndex.load(out, "val")
    assert index.labels.tolist() == [0, 1, 2, 0, 1, 2]
    first = next(iter_tar(index.shards[0]))
    info = json.loads(first["json"])
    assert info["label"] == WNIDS[0] and info["source"] == "val/ILSVRC2012_val_00000001.JPEG"
    assert first["jpg"][:2] == b"\xff\xd8"  # original JPEG bytes, not re-encoded
    assert verify(out).ok


def test_imagenet_val_as_class_folders_and_resize(tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    for w in WNIDS[:2]:
        write_jpeg(tmp_path / "src" / "train" / w / "a.JPEG", rng, size=(100, 80))
        write_jpeg(tmp_path / "src" / "val" / w / "b.JPEG", rng, size=(100, 80))
    meta = write_imagenet(tmp_path / "src", tmp_path / "out", resize=32)
    assert meta["splits"]["val"]["samples"] == 2
    sample = next(iter_tar(tmp_path / "out" / "val" / "val-000000.tar"))
    assert json.loads(sample["json"])["width"] == 32


def test_imagenet_flat_val_without_labels_is_a_clear_error(tmp_path):
    import numpy as np

    rng = np.random.default_rng(2)
    write_jpeg(tmp_path / "src" / "train" / WNIDS[0] / "a.JPEG", rng)
    write_jpeg(tmp_path / "src" / "val" / "x.JPEG", rng)
    with pytest.raises(DataError, match="val-labels"):
        write_imagenet(tmp_path / "src", tmp_path / "out")


def test_cli_imagenet_then_verify_reports_a_damaged_shard(mini_imagenet, tmp_path, capsys):
    out = tmp_path / "shards"
    assert run_data_cli(["data", "imagenet", str(mini_imagenet), "--out", str(out), "--shard-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "corrupt.JPEG" in printed and "train" in printed
    assert run_data_cli(["data", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out

    shard = out / read_meta(out)["splits"]["train"]["shards"][1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    (out / "val" / "val-000001.tar").unlink()
    assert run_data_cli(["data", "verify", str(out)]) == 1  # reported, not raised
    printed = capsys.readouterr().out
    assert "PROBLEMS FOUND" in printed and "val-000001.tar" in printed and "unreadable shard" in printed
    assert run_data_cli(["data", "verify", str(tmp_path / "nothing-here")]) == 1

    # a resumed run keeps finished shards; --overwrite starts again
    assert run_data_cli(["data", "imagenet", str(mini_imagenet), "--out", str(out), "--shard-size", "4", "--overwrite"]) == 0
    assert run_data_cli(["data", "verify", str(out)]) == 0


def test_data_subcommand_is_registered():
    from nar.cli.main import SUBCOMMANDS

    assert "nar.cli.data" in SUBCOMMANDS
