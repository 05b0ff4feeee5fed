"""Sample sources: ADM-style ``.npz`` batches are read one sample at a time, with clear errors."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from metric_helpers import TinyExtractor

from nar.data.shards import ShardWriter, write_meta, write_split
from nar.errors import DataError
from nar.metrics.sources import iter_records, real_features, reference_stats


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


def _class_sorted(root, layout: str, classes: int, per_class: int):
    """Samples stored class by class, as our ImageNet (class folders) and UCF-101 (trainlist) writers store a
    split: sample ``i`` of class ``i // per_class`` is a 4x4 PNG with red = its class, green = ``i``.
    ``layout``: a dataset folder (meta.json), a bare folder of its shards, or a folder of image files."""
    def pixels(i: int) -> np.ndarray:
        px = np.zeros((4, 4, 3), np.uint8)
        px[..., 0], px[..., 1] = i // per_class, i
        return px

    n = classes * per_class
    if layout == "images":
        root.mkdir(parents=True)
        for i in range(n):
            (root / f"{i:03d}.png").write_bytes(_encoded(pixels(i), "PNG"))
        return root
    rec = write_split(root, "train", list(range(n)), shard_size=7,
                      make_sample=lambda i: {"png": _encoded(pixels(i), "PNG"), "cls": i // per_class})
    write_meta(root, "image", [rec], classes=[f"c{c}" for c in range(classes)])
    return root if layout == "dataset" else root / "train"  # the shards alone: no meta.json to count from


@pytest.mark.parametrize("layout", ["dataset", "shards", "images"])
def test_a_limited_read_is_a_seeded_random_subset_of_a_class_sorted_split(tmp_path, layout, caplog):
    """eval.num_real below the split's size: the real samples are a seeded uniform subset of all of them (as
    NAR-videos' random.Random(42).sample), read in storage order; not the first classes of a class-sorted split.
    A dataset folder's shard sizes come from its meta.json; bare shards are counted first."""
    caplog.set_level("INFO", logger="nar.metrics.sources")
    classes, per_class, limit = 10, 6, 20
    source = _class_sorted(tmp_path / "real", layout, classes, per_class)

    def chosen(seed: int, rank: int = 0, world: int = 1) -> list[int]:
        return [int(r.pixels[0, 0, 1]) for r in iter_records(source, "train", limit, seed=seed, rank=rank,
                                                              world_size=world)]

    picked = chosen(0)
    assert len(picked) == limit == len(set(picked)) and picked == sorted(picked)
    assert picked == chosen(0) and picked != chosen(1)
    seen = [i // per_class for i in picked]
    # the first `limit` samples hold classes 0..3 only (mean 1.4); a uniform subset's mean is ~4.5 +- 0.5
    assert min(seen) < classes // 3 and max(seen) >= classes - classes // 3, seen
    assert abs(np.mean(seen) - (classes - 1) / 2) < 2, seen
    shares = [chosen(0, k, 3) for k in range(3)]
    assert sorted(sum(shares, [])) == picked and [len(s) for s in shares] == [7, 7, 6]
    assert len(list(iter_records(source, "train", classes * per_class + 5, seed=3))) == classes * per_class
    assert ("counting the samples" in caplog.text) == (layout == "shards")


def test_real_features_are_cached_per_real_seed(tmp_path, tiny_extractor):
    """The real-feature cache knows which subset it holds: another seed is another set of real samples."""
    source = _class_sorted(tmp_path / "real", "dataset", 4, 4)
    cache = tmp_path / "cache"
    first = real_features(source, tiny_extractor, "train", 6, seed=0, cache=cache)
    other = real_features(source, tiny_extractor, "train", 6, seed=1, cache=cache)
    assert first.shape == other.shape == (6, tiny_extractor.num_features) and not torch.equal(first, other)
    assert len(list((cache / "features").glob("*.npy"))) == 2
    assert torch.equal(real_features(source, tiny_extractor, "train", 6, seed=0, cache=cache), first)


def test_npz_sample_count_reads_the_header_only(tmp_path):
    """How many images a reference batch's arr_0 holds, read from its .npy header (ADM's is 10k images of 256 px,
    2 GB): nothing of the array is loaded; no arr_0 is None."""
    from nar.metrics.sources import npz_sample_count

    arr = _images(300, size=32)  # 0.9 MB
    np.savez(tmp_path / "ref.npz", arr_0=arr, mu=np.zeros(4), sigma=np.eye(4))
    np.savez_compressed(tmp_path / "small.npz", arr_0=arr[:5])
    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    del arr
    tracemalloc.start()
    try:
        count = npz_sample_count(tmp_path / "ref.npz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 300 and peak < 100_000, peak
    assert npz_sample_count(tmp_path / "small.npz") == 5 and npz_sample_count(tmp_path / "stats.npz") is None


@pytest.mark.parametrize("layout", ["dataset", "no-labels", "shards"])
def test_real_class_ids_are_the_classes_of_the_records_read(tmp_path, layout, monkeypatch):
    """eval.labels=real: the class ids are those of the records iter_records yields for the same (source, split,
    limit, seed), in order (one draw for both). A dataset's labels.npy is read without opening a shard; without
    it (removed, or bare shards) the cls members are read and no pixel is decoded."""
    import nar.data.shards as shards
    import nar.metrics.sources as sources
    from nar.metrics.sources import real_class_ids

    classes, per_class = 6, 5
    source = _class_sorted(tmp_path / "real", "dataset" if layout != "shards" else "shards", classes, per_class)
    if layout == "no-labels":
        (source / "train" / "labels.npy").unlink()
    total = classes * per_class
    cases = [(12, 0), (12, 1), (None, 0), (total, 2), (total + 5, 3)]
    read = {case: [int(r.pixels[0, 0, 0]) for r in iter_records(source, "train", case[0], seed=case[1])]
            for case in cases}  # red = the sample's class

    def refuse(*args, **kwargs):
        raise AssertionError("read what it need not")

    monkeypatch.setattr(sources, "_decode_image", refuse)
    if layout == "dataset":
        monkeypatch.setattr(shards, "iter_tar", refuse)
    for (limit, seed), expected in read.items():
        ids = real_class_ids(source, "train", limit, seed=seed)
        assert ids is not None and ids.dtype == np.int64 and ids.tolist() == expected, (limit, seed)
    assert read[(12, 0)] != read[(12, 1)] and len(set(read[(12, 0)])) > 1  # a random draw, not the first classes


def test_real_class_ids_of_sources_without_classes_or_with_samples_the_reader_skips(tmp_path):
    """An image folder, an .npz without arr_1 or shards without cls hold no classes (None); an .npz's arr_1 gives
    its first `limit`; an indexed set that keeps a sample without an image (the readers skip it) is read from its
    members, so the classes stay those of the records."""
    from nar.data.index import index_shards
    from nar.metrics.sources import real_class_ids

    assert real_class_ids(_class_sorted(tmp_path / "imgs", "images", 2, 2), limit=3) is None
    np.savez(tmp_path / "plain.npz", arr_0=_images(4))
    np.savez(tmp_path / "labelled.npz", arr_0=_images(4), arr_1=np.array([3, 1, 2, 0]))
    assert real_class_ids(tmp_path / "plain.npz") is None
    assert real_class_ids(tmp_path / "labelled.npz", limit=3).tolist() == [3, 1, 2]
    with ShardWriter(tmp_path / "nocls" / "train-000000.tar") as w:
        for i, img in enumerate(_images(3)):
            w.write(f"{i:06d}", {"png": _encoded(img, "PNG")})
    assert real_class_ids(tmp_path / "nocls") is None

    shard = tmp_path / "wds" / "train-000000.tar"
    with ShardWriter(shard) as w:
        for i, img in enumerate(_images(4)):
            fields = {"cls": str(i).encode()}
            if i != 1:  # sample 1: a class, no image
                fields["png"] = _encoded(img, "PNG")
            w.write(f"{i:06d}", fields)
    index_shards(str(shard), tmp_path / "indexed", split="val")
    assert [len(list(iter_records(tmp_path / "indexed", "val")))] == [3]
    assert real_class_ids(tmp_path / "indexed", "val").tolist() == [0, 2, 3]


def test_a_read_takes_its_shards_counts_and_labels_from_one_split_index(tmp_path, monkeypatch):
    """real_class_ids and iter_records (limited or not) read a dataset's meta.json for one SplitIndex (shard list,
    counts, labels) and the split's name and kind: once, not once per question (the memo key, the shard list, the
    counts, the labels)."""
    import nar.data.shards as shards
    import nar.metrics.sources as sources

    source = _class_sorted(tmp_path / "real", "dataset", 4, 5)
    reads = []
    read_meta = shards.read_meta

    def counted(root):
        reads.append(root)
        return read_meta(root)

    monkeypatch.setattr(shards, "read_meta", counted)
    monkeypatch.setattr(sources, "_CLASS_CACHE", {})
    for limit in (None, 7):
        reads.clear()
        ids = sources.real_class_ids(source, "train", limit, seed=0)
        assert ids is not None and len(reads) == 1, (limit, len(reads))
        reads.clear()
        classes = [int(r.pixels[0, 0, 0]) for r in sources.iter_records(source, "train", limit, seed=0)]
        assert classes == ids.tolist() and len(reads) == 1, (limit, len(reads))
