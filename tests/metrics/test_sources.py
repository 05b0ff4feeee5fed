"""Sample sources: ADM-style ``.npz`` batches are read one sample at a time, with clear errors."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from metric_helpers import TinyExtractor

from nar.data.shards import ShardWriter
from nar.errors import DataError
from nar.metrics.sources import iter_records, reference_stats


def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_samples_come_back_in_order_with_limit_and_ranks(tmp_path, save):
    arr = _images(7)
    path = tmp_path / "samples.npz"
    save(path, arr_0=arr, arr_1=np.arange(7))
    got = [r.pixels for r in iter_records(path)]
    assert len(got) == 7 and all(np.array_equal(g, a) for g, a in zip(got, arr))
    assert got[0].flags.writeable
    assert len(list(iter_records(path, limit=3))) == 3
    shares = [[r.pixels for r in iter_records(path, limit=5, rank=k, world_size=2)] for k in range(2)]
    assert [len(s) for s in shares] == [3, 2]
    assert np.array_equal(shares[1][0], arr[1]) and np.array_equal(shares[0][2], arr[4])


def test_npz_videos_and_prompts(tmp_path):
    videos = np.random.default_rng(1).integers(0, 256, (3, 2, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", arr_0=videos, prompts=np.array(["a photo of a red circle", "x", "y"]))
    records = list(iter_records(tmp_path / "v.npz"))
    assert [r.pixels.shape for r in records] == [(2, 4, 4, 3)] * 3
    assert np.array_equal(records[2].pixels, videos[2])
    assert records[0].spec["include"][0]["class"] == "circle" and records[1].spec is None


def test_an_npz_batch_is_never_loaded_whole(tmp_path):
    """Reading the first samples of a batch allocates about a sample, not the batch (50k images are 10 GB)."""
    arr = _images(400, size=32)  # 1.2 MB
    path = tmp_path / "big.npz"
    np.savez(path, arr_0=arr)
    del arr
    tracemalloc.start()
    try:
        records = iter_records(path)
        first = [next(records).pixels for _ in range(3)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(first) == 3
    assert peak < 300_000, peak


def test_bad_npz_batches_name_the_file(tmp_path):
    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(DataError, match=r"stats\.npz.*no 'arr_0'.*mu"):
        list(iter_records(tmp_path / "stats.npz"))
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"float\.npz.*uint8"):
        list(iter_records(tmp_path / "float.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz.*not a readable"):
        list(iter_records(tmp_path / "junk.npz"))
    np.savez(tmp_path / "prompts.npz", arr_0=_images(3), prompts=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"prompts\.npz.*2 captions for 3"):
        list(iter_records(tmp_path / "prompts.npz"))

    # A batch cut short (its header promises 10 samples, 4 are there): the error names the sample.
    raw = io.BytesIO()
    np.lib.format.write_array_header_1_0(raw, {"descr": "|u1", "fortran_order": False, "shape": (10, 4, 4, 3)})
    raw.write(_images(4, size=4).tobytes())
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as zf:
        zf.writestr("arr_0.npy", raw.getvalue())
    records = iter_records(tmp_path / "short.npz")
    assert len([next(records) for _ in range(4)]) == 4
    with pytest.raises(DataError, match=r"short\.npz.*sample 4 of 10.*truncated"):
        next(records)


def test_reference_stats_of_fewer_than_two_images_names_the_source(tmp_path):
    """Token shards carry no pixels (and a limit of 1 leaves one image): a DataError naming the source, not a
    covariance ValueError."""
    tokens = tmp_path / "tokens"
    with ShardWriter(tokens / "train-000000.tar") as w:
        for i in range(3):
            w.write(f"{i:06d}", {"tokens.npy": np.zeros((2, 2), np.int16)})
    with pytest.raises(DataError, match=r"tokens: 0 images/videos, .*token shards hold none"):
        reference_stats(tokens, TinyExtractor(), cache=tmp_path / "cache")
    np.savez(tmp_path / "real.npz", arr_0=_images(3, size=16))
    with pytest.raises(DataError, match=r"real\.npz: 1 images/videos within limit 1"):
        reference_stats(tmp_path / "real.npz", TinyExtractor(), limit=1, cache=tmp_path / "cache")
    assert not list(tmp_path.glob("cache/**/*.npz"))  # nothing cached


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("ext", "fmt"), [("jpg", "JPEG"), ("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_shards_of_every_image_field_are_read(tmp_path, ext, fmt):
    """Every image field the data readers accept (``nar.data.index.IMAGE_FIELDS``) is scored, none skipped."""
    images = _images(3)
    with ShardWriter(tmp_path / "train-000000.tar") as w:
        for i, img in enumerate(images):
            w.write(f"{i:06d}", {ext: _encoded(img, fmt), "cls": b"0"})
    records = list(iter_records(tmp_path))
    assert len(records) == len(images) and all(r.pixels.shape == images[0].shape for r in records)


def test_images_decode_as_in_training(tmp_path):
    """Folders and shards decode like the data pipeline (``decode_image``): alpha composited on white, 16-bit
    greyscale scaled to 8 bits (not clipped to white)."""
    from PIL import Image

    from nar.data.transforms import decode_image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :4] = (255, 0, 0, 255)  # opaque red corner, transparent elsewhere
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rgba, "RGBA").save(folder / "a_rgba.png")
    Image.fromarray(grey16).save(folder / "b_grey16.png")
    files = sorted(folder.iterdir())
    with ShardWriter(tmp_path / "shards" / "train-000000.tar") as w:
        for i, path in enumerate(files):
            w.write(f"{i:06d}", {"png": path.read_bytes()})
    expected = [np.asarray(decode_image(p.read_bytes())) for p in files]
    for source in (folder, tmp_path / "shards"):
        got = [r.pixels for r in iter_records(source)]
        assert len(got) == len(expected) and all(np.array_equal(g, e) for g, e in zip(got, expected)), source
    assert expected[0][7, 7].tolist() == [255, 255, 255] and expected[1].mean() < 200  # what the old decoding lost


def test_corrupt_images_name_their_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(_images(3)):
        (folder / f"{i}.png").write_bytes(_encoded(img, "PNG"))
    (folder / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"imgs/1\.png: cannot decode image"):
        list(iter_records(folder))
    with ShardWriter(tmp_path / "sh" / "train-000000.tar") as w:
        w.write("000000", {"png": _encoded(_images(1)[0], "PNG")})
        w.write("000001", {"png": b"garbage"})
    with pytest.raises(DataError, match=r"train-000000\.tar:000001\.png: cannot decode image"):
        list(iter_records(tmp_path / "sh"))
