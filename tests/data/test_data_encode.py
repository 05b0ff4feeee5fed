"""Source image files → shard sample fields (nar.data.encode): which files a folder yields, what bytes are stored
for each colour mode, and EXIF orientation (left as the pixels lie unless asked, and then counted)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from nar_data_testutil import WNIDS, run_data_cli, write_jpeg
from PIL import Image, ImageOps
from webdataset.autodecode import ImageHandler

from nar.data import encode
from nar.data import transforms as T
from nar.data.encode import EncodeImage, list_images
from nar.data.imagenet import write_imagenet
from nar.data.shards import iter_tar
from nar.errors import DataError


def _item(path: Path) -> tuple[str, int, None, None]:
    return (str(path), -1, None, None)


def _rgb_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------------------------------
# Which files a folder yields
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext,fmt,mode", [(".jfif", "JPEG", "RGB"), (".jpe", "JPEG", "RGB"), (".ppm", "PPM", "RGB"),
                                          (".pgm", "PPM", "L"), (".pbm", "PPM", "1"), (".PNM", "PPM", "RGB")])
def test_every_extension_pil_reads_is_listed_and_written(tmp_path, ext, fmt, mode):
    """A .jfif / .jpe / .ppm / .pgm / .pbm / .pnm file is an image nar writes, not a file dropped without a word."""
    path = tmp_path / f"a{ext}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert(mode).save(
        path, format=fmt)
    assert list_images(tmp_path) == [path]
    fields = EncodeImage()(_item(path))
    stored = fields.get("jpg", fields.get("png"))
    assert np.array_equal(T.decode_image(stored), T.decode_image(path.read_bytes()))


def test_files_of_other_extensions_are_counted_once_per_folder(tmp_path, caplog):
    """Files that are no image by extension (a phone's .heic, a stray .xyz) are named in one warning per folder, with
    their count; captions, label lists and manifests the writers read, and hidden files, are not."""
    rng = np.random.default_rng(0)
    write_jpeg(tmp_path / "b.jpg", rng, size=(4, 4))
    for name in ("b.txt", "meta.json", "labels.csv", "m.jsonl", "m.tsv", ".DS_Store", "IMG_1.HEIC", "IMG_2.heic",
                 "notes.xyz", "README"):
        (tmp_path / name).write_text("x")
    caplog.set_level(logging.INFO, logger="nar")
    assert list_images(tmp_path) == [tmp_path / "b.jpg"]
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1, said
    assert str(tmp_path) in said[0] and "4 files" in said[0] and "e.g. IMG_1.HEIC" in said[0]
    assert "2 .heic" in said[0] and "1 .xyz" in said[0] and "1 without extension" in said[0]

    caplog.clear()
    (tmp_path / "sub").mkdir()
    write_jpeg(tmp_path / "sub" / "c.png", rng, size=(4, 4))
    (tmp_path / "sub" / "c.txt").write_text("a caption")
    assert list_images(tmp_path / "sub") == [tmp_path / "sub" / "c.png"]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # nothing ignored, nothing said


def test_recursive_listing_leaves_hidden_folders_out(tmp_path, caplog):
    """Below a hidden folder (.ipynb_checkpoints, .thumbnails, .git) nothing is listed or counted as ignored."""
    rng = np.random.default_rng(0)
    write_jpeg(tmp_path / "cats" / "a.jpg", rng, size=(4, 4))
    write_jpeg(tmp_path / ".thumbnails" / "a.jpg", rng, size=(4, 4))
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "ab12").write_text("x")
    (tmp_path / "cats" / "odd.xyz").write_text("x")
    caplog.set_level(logging.INFO, logger="nar")
    assert list_images(tmp_path, recursive=True) == [tmp_path / "cats" / "a.jpg"]
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1 and "1 file " in said[0] and "e.g. cats/odd.xyz" in said[0], said


# --------------------------------------------------------------------------------------------------
# Stored bytes per colour mode
# --------------------------------------------------------------------------------------------------


def _odd_image(mode: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A 12×10 image of ``mode`` whose pixels a plain ``.convert("RGB")`` reads otherwise than nar's reader."""
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16)), "PNG"
    if mode == "P+transparency":
        img = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).quantize(16)
        img.info["transparency"] = 3
        return img, "PNG"
    if mode == "CMYK":
        return Image.fromarray(rng.integers(0, 256, (10, 12, 4), dtype=np.uint8), mode="CMYK"), "JPEG"
    return Image.fromarray(rng.integers(0, 256, (10, 12, len(mode)), dtype=np.uint8), mode=mode), "PNG"


@pytest.mark.parametrize("mode", ["I;16", "P+transparency", "LA", "RGBA", "CMYK"])
def test_other_modes_are_stored_as_the_rgb_png_nar_reads(tmp_path, mode):
    """16-bit grey, alpha and palette transparency, CMYK JPEGs: the shard holds an RGB PNG of the pixels nar's reader
    made of the file, so nar's reader, a plain PIL ``.convert("RGB")`` and webdataset's ``rgb8`` agree."""
    img, fmt = _odd_image(mode, np.random.default_rng(0))
    path = tmp_path / f"odd.{fmt.lower()}"
    img.save(path, format=fmt, **({"transparency": 3} if mode == "P+transparency" else {}))
    original = path.read_bytes()
    fields = EncodeImage()(_item(path))
    stored = fields.get("png", fields.get("jpg"))
    expected = np.asarray(T.decode_image(original))  # what nar's reader made of the file itself
    assert np.array_equal(_rgb_of(stored), expected)
    assert np.array_equal(ImageHandler("rgb8")("x.png", stored), expected)
    assert np.array_equal(np.asarray(T.decode_image(stored)), expected)
    assert Image.open(io.BytesIO(stored)).mode == "RGB" and set(fields) == {"png", "json"}
    assert (fields["json"]["width"], fields["json"]["height"]) == (12, 10)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("L", "PNG")])
def test_rgb_and_grey_jpeg_and_png_keep_their_bytes(tmp_path, mode, fmt):
    """RGB and 8-bit grey JPEG / PNG files (all of official ImageNet but its CMYK JPEGs) are stored byte for byte."""
    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert(mode).save(
        path, format=fmt)
    fields = EncodeImage()(_item(path))
    ext = "jpg" if fmt == "JPEG" else "png"
    assert fields[ext] == path.read_bytes()


def test_a_grey_image_out_of_any_8_bit_range_is_skipped_naming_it(tmp_path):
    """An ``I`` image whose values no rule maps to 8 bits is skipped at writing (counted, named), not stored for every
    reader to fail on or read differently."""
    from nar.data.shards import SkipSample

    path = tmp_path / "neg.tif"
    Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)).save(path)
    with pytest.raises(SkipSample, match="cannot convert to RGB") as err:
        EncodeImage()(_item(path))
    assert err.value.path == str(path)


# --------------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------------


def _rotated_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    """A 64×32 (w × h) JPEG, bright towards its right edge, with EXIF ``Orientation``; returns the pixels a viewer
    shows (``ImageOps.exif_transpose``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.repeat(np.linspace(0, 255, 64, dtype=np.float32)[None, :], 32, axis=0)
    img = Image.fromarray(np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 90)], -1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.float32)


def test_exif_transpose_stores_the_image_as_viewers_show_it(tmp_path):
    """With ``exif_transpose`` a 64×32 JPEG with Orientation 6 is stored upright, 32×64 (re-encoded); an upright one
    (Orientation 1) keeps its bytes; without it the rotated file's bytes are stored as they are."""
    shown = _rotated_jpeg(tmp_path / "r.jpg")
    with encode.track_unapplied_orientations():
        fields = EncodeImage(exif_transpose=True)(_item(tmp_path / "r.jpg"))
    stored = T.decode_image(fields["jpg"])
    assert stored.size == (32, 64) and (fields["json"]["width"], fields["json"]["height"]) == (32, 64)
    assert np.abs(np.asarray(stored, dtype=np.float32) - shown).mean() < 3
    assert Image.open(io.BytesIO(fields["jpg"])).getexif().get(0x0112, 1) == 1  # no second turn by a viewer

    _rotated_jpeg(tmp_path / "up.jpg", orientation=1)
    assert EncodeImage(exif_transpose=True)(_item(tmp_path / "up.jpg"))["jpg"] == (tmp_path / "up.jpg").read_bytes()

    with encode.track_unapplied_orientations() as tally:
        kept = EncodeImage()(_item(tmp_path / "r.jpg"))
    assert kept["jpg"] == (tmp_path / "r.jpg").read_bytes() and (kept["json"]["width"], kept["json"]["height"]) == (64, 32)
    assert (tally.count, tally.example, tally.orientation) == (1, str(tmp_path / "r.jpg"), 6)


def test_exif_transpose_with_resize_and_an_odd_mode(tmp_path):
    """Turned first, then resized; an RGBA PNG with Orientation 8 becomes an upright RGB PNG, composited as nar's
    reader composites it."""
    rgba = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 40, 4), dtype=np.uint8), mode="RGBA")
    exif = Image.Exif()
    exif[0x0112] = 8
    rgba.save(tmp_path / "a.png", exif=exif)
    fields = EncodeImage(exif_transpose=True)(_item(tmp_path / "a.png"))
    expected = T.to_rgb(ImageOps.exif_transpose(Image.open(tmp_path / "a.png")))
    assert np.array_equal(_rgb_of(fields["png"]), np.asarray(expected))
    small = EncodeImage(exif_transpose=True, resize=10)(_item(tmp_path / "a.png"))
    assert Image.open(io.BytesIO(small["png"])).size == (10, 20)


def test_without_a_tracker_each_process_warns_once(tmp_path, caplog, monkeypatch):
    """Where no one counts for a final report (a --workers process, a library caller), the first image with an
    unapplied orientation is named in a warning with the remedy, once per process."""
    monkeypatch.setattr(encode, "_tracker", None)
    monkeypatch.setattr(encode, "_warned_in", None)
    for name in ("a.jpg", "b.jpg"):
        _rotated_jpeg(tmp_path / name)
        EncodeImage()(_item(tmp_path / name))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "a.jpg" in said[0] and "Orientation 6" in said[0] and "--exif-transpose" in said[0]


def _rotated_imagenet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for w in WNIDS[:2]:
        write_jpeg(root / "train" / w / "a.JPEG", rng, size=(8, 8))
    _rotated_jpeg(root / "train" / WNIDS[0] / "phone.JPEG")
    return root


def test_nar_data_imagenet_warns_once_at_the_end_naming_count_file_and_flag(tmp_path, caplog):
    src = _rotated_imagenet(tmp_path / "src")
    _rotated_jpeg(src / "train" / WNIDS[1] / "phone2.JPEG", orientation=3)
    assert run_data_cli(["data", "imagenet", str(src), "--out", str(tmp_path / "out"), "--splits", "train",
                         "--shard-size", "2"]) == 0
    said = [r.getMessage() for r in caplog.records if "Orientation" in r.getMessage()]
    assert len(said) == 1, said
    assert "2 images" in said[0] and "phone" in said[0] and "--exif-transpose" in said[0]
    samples = [s for shard in sorted((tmp_path / "out" / "train").glob("*.tar")) for s in iter_tar(shard)]
    phone = next(s for s in samples if "phone.JPEG" in json.loads(s["json"])["source"])
    assert phone["jpg"] == (src / "train" / WNIDS[0] / "phone.JPEG").read_bytes()  # the default keeps the bytes

    caplog.clear()
    (src / "train" / WNIDS[0] / "phone.JPEG").unlink()
    (src / "train" / WNIDS[1] / "phone2.JPEG").unlink()
    assert run_data_cli(["data", "imagenet", str(src), "--out", str(tmp_path / "out2"), "--splits", "train"]) == 0
    assert not [r for r in caplog.records if "Orientation" in r.getMessage()]


@pytest.mark.parametrize("command", ["imagenet", "pairs"])
def test_exif_transpose_flag_reaches_the_writer(tmp_path, monkeypatch, command):
    """`--exif-transpose` of the folder writers is handed to the writer (which hands it to EncodeImage)."""
    import nar.data.imagenet
    import nar.data.pairs

    calls = []

    def fake(src, out, **kwargs):
        calls.append(kwargs)
        return {"kind": "image", "splits": {}}

    monkeypatch.setattr(nar.data.imagenet if command == "imagenet" else nar.data.pairs, f"write_{command}", fake)
    (tmp_path / "src").mkdir()
    assert run_data_cli(["data", command, str(tmp_path / "src"), "--out", str(tmp_path / "o1")]) == 0
    assert run_data_cli(["data", command, str(tmp_path / "src"), "--out", str(tmp_path / "o2"), "--exif-transpose"]) == 0
    assert calls[0]["exif_transpose"] is False and calls[1]["exif_transpose"] is True


def test_nar_data_imagenet_with_exif_transpose_stores_upright_and_keeps_the_setting_folder_wide(tmp_path, caplog):
    """`--exif-transpose` reaches the shards (the phone photo stored upright, no warning) and is a folder-wide
    setting: a split added without it is refused naming the flag."""
    src = _rotated_imagenet(tmp_path / "src")
    write_jpeg(src / "val" / WNIDS[0] / "v.JPEG", np.random.default_rng(1), size=(8, 8))
    out = tmp_path / "out"
    assert run_data_cli(["data", "imagenet", str(src), "--out", str(out), "--splits", "train",
                         "--exif-transpose"]) == 0
    assert not [r for r in caplog.records if "Orientation" in r.getMessage()]
    samples = [s for shard in sorted((out / "train").glob("*.tar")) for s in iter_tar(shard)]
    phone = next(s for s in samples if "phone.JPEG" in json.loads(s["json"])["source"])
    assert Image.open(io.BytesIO(phone["jpg"])).size == (32, 64)
    with pytest.raises(DataError, match=r"exif_transpose: .*\(--exif-transpose\)"):
        write_imagenet(src, out, splits=("val",))
    assert not (out / "val").exists()


def test_nar_data_pairs_with_exif_transpose_stores_upright(tmp_path):
    src = tmp_path / "pairs"
    src.mkdir()
    for name in ("a", "b"):
        _rotated_jpeg(src / f"{name}.jpg")
        (src / f"{name}.txt").write_text(f"photo {name}")
    assert run_data_cli(["data", "pairs", str(src), "--out", str(tmp_path / "out"), "--exif-transpose"]) == 0
    samples = [s for split in ("train", "val") for shard in sorted((tmp_path / "out" / split).glob("*.tar"))
               for s in iter_tar(shard)]
    assert len(samples) == 2 and all(Image.open(io.BytesIO(s["jpg"])).size == (32, 64) for s in samples)
