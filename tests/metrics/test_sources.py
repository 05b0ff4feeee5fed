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
