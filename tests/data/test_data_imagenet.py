"""ImageNet layout → image shards, with corrupt, truncated, unlabelled files, nested and empty class folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
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
    assert meta["classes"] == list(WNIDS)  # the synset map's extra wnid is no class
    assert meta["class_names"][:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    # 14 inputs in 3 shards of 5, 5, 4; where the two bad ones fall depends on the shuffled order
    assert train["samples"] == 12 and len(train["shard_samples"]) == 3 and sum(train["shard_samples"]) == 12
    reasons = {p.split("/")[-1]: r for p, r in train["skipped"]["files"]}
    assert set(reasons) == {"corrupt.JPEG", "truncated.JPEG"}
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


def _same_class_neighbours(labels) -> float:
    """Fraction of neighbouring samples of one class: ≈ 1 for a class-sorted split, ≈ 1/classes shuffled."""
    labels = np.asarray(labels)
    return float(np.mean(labels[1:] == labels[:-1]))


def _sorted_source(root, classes: int = 6, per_class: int = 5):
    """``train/<wnid>/`` × ``classes`` × ``per_class`` tiny JPEGs and ``val/<wnid>/`` × 2: a class-sorted source."""
    rng = np.random.default_rng(3)
    wnids = [f"n{c:08d}" for c in range(classes)]
    for w in wnids:
        for i in range(per_class):
            write_jpeg(root / "train" / w / f"{w}_{i}.JPEG", rng, size=(8, 8))
        for i in range(2):
            write_jpeg(root / "val" / w / f"{w}_v{i}.JPEG", rng, size=(8, 8))
    return wnids


def _samples(out, split):
    return [json.loads(raw["json"]) | {"cls": int(raw["cls"])}
            for shard in SplitIndex.load(out, split).shards for raw in iter_tar(shard)]


def test_train_split_is_written_shuffled_reproducibly_and_val_keeps_its_order(tmp_path):
    """Training reads whole shards into a buffer, so a train split stored class by class gave batches of a few
    classes: it is written in a seeded random order (each image with its own class), the same for the same seed;
    val keeps the folder order."""
    wnids = _sorted_source(tmp_path / "src")
    meta = write_imagenet(tmp_path / "src", tmp_path / "a", shard_size=7)
    train = _samples(tmp_path / "a", "train")
    labels = [s["cls"] for s in train]
    assert sorted(labels) == [c for c in range(len(wnids)) for _ in range(5)]
    assert all(s["source"].split("/")[1] == wnids[s["cls"]] for s in train)  # each image keeps its class
    assert _same_class_neighbours(labels) < _same_class_neighbours(sorted(labels)) / 2
    assert SplitIndex.load(tmp_path / "a", "train").labels.tolist() == labels
    assert [s["cls"] for s in _samples(tmp_path / "a", "val")] == [c for c in range(len(wnids)) for _ in range(2)]

    again = write_imagenet(tmp_path / "src", tmp_path / "b", shard_size=7)
    assert again["splits"] == meta["splits"]
    assert [(tmp_path / "a" / s).read_bytes() for s in meta["splits"]["train"]["shards"]] == \
        [(tmp_path / "b" / s).read_bytes() for s in again["splits"]["train"]["shards"]]
    other = write_imagenet(tmp_path / "src", tmp_path / "c", shard_size=7, order_seed=1)
    assert [s["source"] for s in _samples(tmp_path / "c", "train")] != [s["source"] for s in train]
    assert sorted(other["splits"]["train"]["shard_samples"]) == sorted(meta["splits"]["train"]["shard_samples"])


def test_resuming_a_train_split_written_in_class_order_is_refused(tmp_path):
    """A half-written train split of an earlier version (class order) is refused, naming its folder, rather than
    finished in the other order (two orders mixed, some images twice and others never)."""
    from nar.data.encode import EncodeImage
    from nar.data.shards import write_split

    wnids = _sorted_source(tmp_path / "src")
    out = tmp_path / "out"
    items = [(str(f), c, None, None) for c, w in enumerate(wnids)
             for f in sorted((tmp_path / "src" / "train" / w).iterdir())]
    encoder = EncodeImage(classes=tuple(wnids), resize=None, source_root=str(tmp_path / "src"))
    write_split(out, "train", items, make_sample=encoder, shard_size=7, params={"resize": None, "classes": wnids})
    (out / "train" / "train-000004.tar").unlink()  # killed before its last shard
    with pytest.raises(DataError, match=re.escape(str(out / "train")) + ".*shuffled order.*earlier version"):
        write_imagenet(tmp_path / "src", out, shard_size=7)


def _folder_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_split_written_with_another_resize_or_other_classes_is_refused(tmp_path):
    """meta.json records one resize and one class list for every split: `--splits val` after `--splits train` with
    another --resize (or a source whose classes differ) is refused before anything is written, naming the field,
    both values and the split written with the recorded ones; with the same settings val joins the folder."""
    wnids = _sorted_source(tmp_path / "src", classes=2, per_class=1)
    out = tmp_path / "out"
    write_imagenet(tmp_path / "src", out, splits=["train"], resize=6)
    before = _folder_bytes(out)
    with pytest.raises(DataError, match=rf"{re.escape(str(out / 'meta.json'))}.*resize: 6 recorded, None in this run "
                                        r"\(--resize\).*written with them: train.*--overwrite"):
        write_imagenet(tmp_path / "src", out, splits=["val"])
    assert _folder_bytes(out) == before and not (out / "val").exists()
    write_jpeg(tmp_path / "src" / "train" / "n00000009" / "x.JPEG", np.random.default_rng(0), size=(8, 8))
    with pytest.raises(DataError, match=rf"classes: \[{', '.join(map(repr, wnids))}\] recorded, "
                                        rf"\[{', '.join(map(repr, wnids))}, 'n00000009'\] in this run"):
        write_imagenet(tmp_path / "src", out, splits=["val"], resize=6)
    assert _folder_bytes(out) == before
    (tmp_path / "src" / "train" / "n00000009" / "x.JPEG").unlink()
    (tmp_path / "src" / "train" / "n00000009").rmdir()
    meta = write_imagenet(tmp_path / "src", out, splits=["val"], resize=6)
    assert sorted(meta["splits"]) == ["train", "val"] and meta["resize"] == 6


def test_images_in_subfolders_of_a_class_folder_belong_to_that_class(tmp_path):
    """As torchvision's ImageFolder reads it: a class's images are found anywhere below its folder (nested folders
    are not classes of their own), in sorted path order, hidden files and folders left out."""
    rng = np.random.default_rng(4)
    train = tmp_path / "src" / "train"
    for rel in ("animals/cat/a.png", "animals/cat/b.png", "animals/dog/deep/c.png", "animals/d.png", "plants/e.png"):
        write_jpeg(train / rel, rng, size=(8, 8))
    write_jpeg(train / "animals" / ".cache" / "hidden.png", rng, size=(8, 8))
    write_jpeg(train / "plants" / ".hidden.png", rng, size=(8, 8))
    write_jpeg(train / ".ipynb_checkpoints" / "f.png", rng, size=(8, 8))  # a hidden folder is no class either
    write_jpeg(tmp_path / "src" / "val" / "animals" / "cat" / "v.png", rng, size=(8, 8))
    (tmp_path / "src" / "val" / "plants").mkdir()  # no val images of a class: reported, the class stays
    out = tmp_path / "out"
    meta = write_imagenet(tmp_path / "src", out)
    assert meta["classes"] == ["animals", "plants"]
    assert [(s["source"], s["cls"]) for s in _samples(out, "val")] == [("val/animals/cat/v.png", 0)]
    assert meta["splits"]["val"]["skipped"]["files"] == [
        [str(tmp_path / "src" / "val" / "plants"), "class folder with no image in it or its sub-folders"]]
    assert meta["splits"]["train"]["samples"] == 5 and not meta["splits"]["train"]["skipped"]["files"]
    written = {s["source"]: (s["cls"], s["label"]) for s in _samples(out, "train")}
    assert written == {"train/animals/cat/a.png": (0, "animals"), "train/animals/cat/b.png": (0, "animals"),
                       "train/animals/dog/deep/c.png": (0, "animals"), "train/animals/d.png": (0, "animals"),
                       "train/plants/e.png": (1, "plants")}
    again = write_imagenet(tmp_path / "src", tmp_path / "again", splits=["train"])
    assert [s["source"] for s in _samples(tmp_path / "again", "train")] == [s["source"] for s in _samples(out, "train")]
    assert again["splits"]["train"]["shard_samples"] == meta["splits"]["train"]["shard_samples"]


def test_a_class_folder_without_images_is_refused_naming_it_before_anything_is_written(tmp_path):
    """Each class folder becomes a class in meta.json (balanced evaluation samples every class): one with no image
    anywhere below it (empty, a .txt only, hidden files only) is refused, naming each such folder."""
    rng = np.random.default_rng(5)
    train = tmp_path / "src" / "train"
    write_jpeg(train / "cat" / "a.png", rng, size=(8, 8))
    (train / "empty").mkdir()
    (train / "notes" / "sub").mkdir(parents=True)
    (train / "notes" / "sub" / "readme.txt").write_text("not an image")
    write_jpeg(train / "hidden" / ".a.png", rng, size=(8, 8))
    with pytest.raises(DataError, match=r"3 class folders hold no image") as err:
        write_imagenet(tmp_path / "src", tmp_path / "out")
    message = str(err.value)
    for name in ("empty", "notes", "hidden"):
        assert str(train / name) in message
    assert str(train / "cat") not in message and "remove them or add images" in message
    assert not (tmp_path / "out").exists()


def test_a_flat_class_layout_keeps_its_inputs_so_a_half_written_folder_resumes(tmp_path):
    """Class folders holding their images directly (ImageNet's train/<wnid>/*.JPEG) are listed as before: a split
    half-written from the per-folder listing of earlier versions resumes instead of being refused as other inputs."""
    from nar.data.encode import EncodeImage, list_images
    from nar.data.order import write_order
    from nar.data.shards import write_split

    wnids = _sorted_source(tmp_path / "src")
    write_jpeg(tmp_path / "src" / "train" / wnids[0] / "Z_upper.JPEG", np.random.default_rng(6), size=(8, 8))
    out = tmp_path / "out"
    items = [(str(f), c, None, None) for c, w in enumerate(wnids) for f in list_images(tmp_path / "src" / "train" / w)]
    items, order = write_order("train", items)
    encoder = EncodeImage(classes=tuple(wnids), resize=None, source_root=str(tmp_path / "src"))
    write_split(out, "train", items, make_sample=encoder, shard_size=7,
                params={"resize": None, "classes": wnids, **order})
    (out / "train" / "train-000003.tar").unlink()  # killed before its last shards
    meta = write_imagenet(tmp_path / "src", out, shard_size=7)
    assert meta["splits"]["train"]["samples"] == len(items)
    written = [s["source"] for s in _samples(out, "train")]
    assert written == [str(Path(path).relative_to(tmp_path / "src")) for path, *_ in items]


def test_files_of_other_extensions_in_class_folders_are_counted_once_per_split(tmp_path, caplog):
    """A phone's .heic or a stray .xyz beside a class's JPEGs is no image nar writes: the class-folder walk names
    them as list_images does, in one warning per split (ImageNet has 1000 class folders), with their count and an
    example; captions and label lists (.txt, .json) and hidden files are not counted."""
    import logging

    rng = np.random.default_rng(6)
    train = tmp_path / "src" / "train"
    for w in ("n0", "n1"):
        for i in range(2):
            write_jpeg(train / w / f"{w}_{i}.JPEG", rng, size=(8, 8))
    for rel in ("n0/IMG_1.heic", "n0/notes.xyz", "n1/deep/IMG_2.HEIC", "n0/n0_boxes.txt", "n1/info.json",
                "n0/.DS_Store"):
        (train / rel).parent.mkdir(parents=True, exist_ok=True)
        (train / rel).write_text("x")
    val = tmp_path / "src" / "val"
    write_jpeg(val / "n1" / "n1_v.JPEG", rng, size=(8, 8))
    (val / "n1" / "n1_v.heic").write_text("x")
    caplog.set_level(logging.INFO, logger="nar")
    meta = write_imagenet(tmp_path / "src", tmp_path / "out")
    assert meta["splits"]["train"]["samples"] == 4 and meta["splits"]["val"]["samples"] == 1
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith(f"{train}: 3 files ignored, not images by extension (2 .heic, 1 .xyz)"), said
    assert "e.g. n0/IMG_1.heic" in said[0]
    assert said[1] == f"{val}: 1 file ignored, not images by extension (1 .heic), e.g. n1/n1_v.heic"
