"""`nar eval-samples` when samples and real images differ in size (tiny extractor injected): real images are read
at the samples' size (the ADM centre crop, as `nar evaluate` reads them), a reference batch of another size is
refused, a statistics-only reference is said to be unchecked, and the JSON records what was compared."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from metric_helpers import TinyExtractor, random_images
from PIL import Image

import nar.metrics
from nar.cli.main import main
from nar.data.shards import ShardWriter
from nar.data.transforms import center_crop_arr


@pytest.fixture(autouse=True)
def _tiny(monkeypatch, tmp_path):
    monkeypatch.setattr(nar.metrics, "default_extractor", lambda *a, **k: TinyExtractor().eval())
    monkeypatch.setenv("NAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _big_and_small(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [n, 64, 64, 3]`` real images and their ADM centre crops to 32 px (what a 32-px generator is scored
    against)."""
    big = random_images(n, seed=seed, size=64).permute(0, 2, 3, 1).numpy().astype(np.int16)
    # a one-pixel checkerboard: the detail a 64-px image has and its 32-px crop averages away, so the sizes score apart
    checker = (np.indices((64, 64)).sum(0) % 2 * 2 - 1)[None, :, :, None] * 60
    big = np.clip(big + checker, 0, 255).astype(np.uint8)
    small = np.stack([center_crop_arr(Image.fromarray(img), 32) for img in big])
    return big, small


def _write_reals(kind: str, images: np.ndarray) -> str:
    """``images`` as a folder of PNGs (``kind="images"``) or one PNG shard; returns the folder."""
    folder = Path("real" if kind == "images" else "shards")
    folder.mkdir()
    if kind == "images":
        for i, img in enumerate(images):
            Image.fromarray(img).save(folder / f"{i:03d}.png")
        return str(folder)
    with ShardWriter(folder / "train-000000.tar") as w:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            w.write(f"{i:06d}", {"png": buf.getvalue()})
    return str(folder)


@pytest.mark.parametrize("kind", ["images", "shards"])
@pytest.mark.parametrize("metrics", ["fid", "fid,pr"])
def test_reals_are_read_at_the_samples_size(kind, metrics):
    """32-px samples that are the centre crops of 64-px real images score FID 0 and precision 1 against them: the
    reals are cropped to the samples' size (through the cached statistics, fid alone, and through the real
    features, with pr); 64-px samples against the same folder are not given the 32-px statistics from the cache."""
    big, small = _big_and_small(24, seed=1)
    ref = _write_reals(kind, big)
    np.savez("small.npz", arr_0=small)
    np.savez("big.npz", arr_0=big)
    for samples in ("small.npz", "big.npz"):
        out = f"{samples}.json"
        assert main(["eval-samples", samples, "--ref", ref, "--metrics", metrics, "--out", out]) == 0
        report = json.loads(open(out).read())
        assert abs(report["metrics"]["fid"]) < 1e-6, (samples, report)
        if "pr" in metrics:
            assert report["metrics"]["precision"] == 1.0
        size = 32 if samples == "small.npz" else 64
        assert report["sample_size"] == [size, size] and report["num_real"] == 24, report


def test_a_reference_batch_of_another_size_is_refused(monkeypatch, caplog):
    """A reference .npz whose arr_0 holds images of another size than the samples is refused before any extractor
    is built, naming both sizes (ADM's evaluator compares same-size batches), with or without mu/sigma."""
    big, small = _big_and_small(8, seed=2)
    dim = TinyExtractor.num_features
    np.savez("s.npz", arr_0=small)
    np.savez("ref_images.npz", arr_0=big)
    np.savez("ref_batch.npz", arr_0=big, mu=np.zeros(dim), sigma=np.eye(dim))

    def no_extractor(*args, **kwargs):
        raise AssertionError("extractor built before the sizes were checked")

    monkeypatch.setattr(nar.metrics, "default_extractor", no_extractor)
    for ref, metrics in (("ref_images.npz", "fid"), ("ref_batch.npz", "fid"), ("ref_batch.npz", "pr")):
        caplog.clear()
        assert main(["eval-samples", "s.npz", "--ref", ref, "--metrics", metrics]) == 2, (ref, metrics)
        assert ref in caplog.text and "32x32" in caplog.text and "64x64" in caplog.text, caplog.text
        assert "resize" in caplog.text
        assert "Traceback" not in caplog.text


def test_a_statistics_only_reference_is_said_to_be_unchecked(caplog):
    """mu/sigma without arr_0 carry no image size: the score is given, with one warning that the size could not be
    checked against the samples'."""
    _, small = _big_and_small(8, seed=3)
    dim = TinyExtractor.num_features
    np.savez("s.npz", arr_0=small)
    np.savez("stats.npz", mu=np.zeros(dim), sigma=np.eye(dim), count=np.int64(500))
    with caplog.at_level(logging.WARNING):
        assert main(["eval-samples", "s.npz", "--ref", "stats.npz", "--metrics", "fid"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "stats.npz" in r.getMessage()]
    assert len(warned) == 1 and "32x32" in warned[0] and "cannot be checked" in warned[0], warned
    report = json.loads(open("s.eval.json").read())
    assert report["num_real"] == 500 and report["sample_size"] == [32, 32]


def test_the_report_records_what_was_compared():
    """The JSON says the command, the samples' size, how many real images and which (split, limits) were read, and
    the Inception weights (the option as given and the extractor's name, which carries the weights' hash)."""
    big, small = _big_and_small(30, seed=4)
    ref = _write_reals("images", big)
    np.savez("s.npz", arr_0=small)
    argv = ["eval-samples", "s.npz", "--ref", ref, "--metrics", "fid", "--limit", "20", "--ref-limit", "12",
            "--ref-split", "val", "--out", "r.json"]
    assert main(argv) == 0
    report = json.loads(open("r.json").read())
    assert report["command"] == "nar " + " ".join(argv)
    assert report["num_samples"] == 20 and report["limit"] == 20
    assert report["num_real"] == 12 and report["ref_limit"] == 12 and report["ref_split"] == "val"
    assert report["sample_size"] == [32, 32] and report["real_size"] == 32
    assert report["inception_weights"] is None and report["extractor"] == TinyExtractor.name


def test_non_square_samples_crop_the_reals_to_their_short_side(caplog):
    """Samples that are not square: the reals get the ADM centre crop to the samples' short side (the crop is
    square; as nar evaluate crops them), said in one warning naming both sides."""
    big, _ = _big_and_small(8, seed=5)
    ref = _write_reals("images", big)
    wide = np.ascontiguousarray(big[:, 16:48, :48])
    np.savez("wide.npz", arr_0=wide)  # [8, 32, 48, 3]
    with caplog.at_level(logging.WARNING):
        assert main(["eval-samples", "wide.npz", "--ref", ref, "--metrics", "fid", "--out", "w.json"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "32x48" in r.getMessage()]
    assert len(warned) == 1 and "32-px" in warned[0], caplog.text
    report = json.loads(open("w.json").read())
    assert report["sample_size"] == [32, 48] and report["real_size"] == 32
