"""`nar eval-samples` on .npz, image folders and stats files (tiny extractor injected)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_helpers import TinyExtractor, TinySpatialExtractor, random_images
from PIL import Image

import nar.metrics
from nar.cli.main import main
from nar.data.shards import ShardWriter
from nar.metrics.frechet import frechet_distance
from nar.shapes import render_scene, sample_scene


@pytest.fixture(autouse=True)
def _tiny(monkeypatch, tmp_path):
    monkeypatch.setattr(nar.metrics, "default_extractor", lambda *a, **k: TinyExtractor().eval())
    monkeypatch.setenv("NAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def _nhwc(n, seed):
    return random_images(n, seed=seed).permute(0, 2, 3, 1).numpy()


def test_fid_npz_against_png_folder_then_stats_file(tmp_path):
    real = _nhwc(40, seed=1)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, img in enumerate(real):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "samples.npz", arr_0=real)
    assert main(["eval-samples", "samples.npz", "--ref", str(folder), "--metrics", "fid,pr",
                 "--batch-size", "16", "--save-ref", "ref.npz"]) == 0
    report = json.loads((tmp_path / "samples.eval.json").read_text())
    assert report["num_samples"] == 40 and abs(report["metrics"]["fid"]) < 1e-6
    assert report["metrics"]["precision"] == 1.0 and "image" in report["seconds_per_1k_samples"]
    # against the written ADM-style statistics, and against the folder (statistics cached on first use)
    np.savez(tmp_path / "other.npz", arr_0=_nhwc(30, seed=2))
    for ref in ("ref.npz", str(folder), str(folder)):
        assert main(["eval-samples", "other.npz", "--ref", ref, "--out", "o.json"]) == 0
        fids = json.loads((tmp_path / "o.json").read_text())["metrics"]["fid"]
        assert fids > 0
    assert len(list((tmp_path / "cache" / "stats").glob("*.npz"))) == 1


def test_text_alignment_from_prompts(caplog):
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(24)]
    np.savez("shapes.npz", arr_0=np.stack([render_scene(s) for s in scenes]), prompts=np.array([s.prompt for s in scenes]))
    assert main(["eval-samples", "shapes.npz", "--metrics", "text"]) == 0
    assert json.loads(open("shapes.eval.json").read())["metrics"]["geneval_overall"] == 1.0
    # prompts outside the shapes grammar: nothing to score, said with what a scorable prompt reads like
    np.savez("free.npz", arr_0=np.stack([render_scene(s) for s in scenes[:2]]), prompts=np.array(["a red circle"] * 2))
    caplog.clear()
    assert main(["eval-samples", "free.npz", "--metrics", "text"]) == 2
    assert "'a photo of a red circle'" in caplog.text and "before any update" not in caplog.text


def test_fvd_proxy_on_video_npz():
    videos = random_images(48, seed=3).reshape(12, 4, 3, 32, 32).permute(0, 1, 3, 4, 2).numpy()  # [N, T, H, W, 3]
    np.savez("videos.npz", arr_0=videos)
    np.savez("real_videos.npz", arr_0=videos[::-1].copy())
    assert main(["eval-samples", "videos.npz", "--ref", "real_videos.npz", "--metrics", "fvd"]) == 0
    metrics = json.loads(open("videos.eval.json").read())["metrics"]
    assert set(metrics) == {"fvd_proxy_inception"} and abs(metrics["fvd_proxy_inception"]) < 1e-6


def test_bad_arguments_exit_2():
    np.savez("s.npz", arr_0=_nhwc(4, seed=4))
    assert main(["eval-samples", "s.npz", "--metrics", "kid"]) == 2
    assert main(["eval-samples", "s.npz", "--metrics", "fid"]) == 2  # no --ref
    # --save-ref with nothing to save (no --ref, or no image statistics asked for) is refused, not silently skipped
    assert main(["eval-samples", "s.npz", "--metrics", "is", "--save-ref", "r.npz"]) == 2
    assert main(["eval-samples", "s.npz", "--ref", "s.npz", "--metrics", "is", "--save-ref", "r.npz"]) == 2
    assert main(["eval-samples", "s.npz", "--ref", "s.npz", "--metrics", "fvd", "--save-ref", "r.npz"]) == 2


def test_statistics_ref_serves_fid_only(monkeypatch, caplog):
    """pr/fvd against a mu/sigma --ref: one line naming the file and the metrics, before any extractor is built
    (not the sample reader's "a statistics file can only be a --ref")."""
    dim = TinyExtractor.num_features
    np.savez("stats.npz", mu=np.zeros(dim), sigma=np.eye(dim))
    np.savez("s.npz", arr_0=_nhwc(4, seed=5))
    frames = _nhwc(8, seed=6)
    np.savez("v.npz", arr_0=frames.reshape(4, 2, *frames.shape[1:]))  # [N, T, H, W, 3]

    def no_extractor(*args, **kwargs):
        raise AssertionError("extractor built before --ref was checked")

    monkeypatch.setattr(nar.metrics, "default_extractor", no_extractor)
    for samples, metrics, named in (("s.npz", "fid,pr", "pr"), ("v.npz", "fvd", "fvd")):
        caplog.clear()
        assert main(["eval-samples", samples, "--ref", "stats.npz", "--metrics", metrics]) == 2
        assert "--ref stats.npz is a statistics file (mu/sigma), which only serves fid" in caplog.text, caplog.text
        assert f"--metrics {named} need real images/videos as --ref" in caplog.text


def test_ref_without_pixels_names_it(caplog):
    """A token-shard folder as --ref holds no images: exit 2 naming it, for fid (statistics) and pr (features)."""
    with ShardWriter("tokens/train-000000.tar") as w:
        for i in range(3):
            w.write(f"{i:06d}", {"tokens.npy": np.zeros((2, 2), np.int16)})
    np.savez("s.npz", arr_0=_nhwc(4, seed=7))
    for metric in ("fid", "pr"):
        caplog.clear()
        assert main(["eval-samples", "s.npz", "--ref", "tokens", "--metrics", metric]) == 2
        assert "tokens: 0 images/videos" in caplog.text and "token shards hold none" in caplog.text, caplog.text


def test_adm_reference_batch_serves_pr_and_fvd():
    """An ADM reference batch holds its images (arr_0) beside mu/sigma: pr and fvd read arr_0, FID still reads
    mu/sigma (the same FID as against the statistics alone)."""
    dim = TinyExtractor.num_features
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=dim) * 0.1, np.eye(dim) * 0.01
    images = _nhwc(20, seed=8)
    np.savez("s.npz", arr_0=images)
    np.savez("ref_batch.npz", arr_0=images, mu=mu, sigma=sigma)
    np.savez("stats.npz", mu=mu, sigma=sigma)
    assert main(["eval-samples", "s.npz", "--ref", "ref_batch.npz", "--metrics", "fid,pr", "--out", "batch.json"]) == 0
    assert main(["eval-samples", "s.npz", "--ref", "stats.npz", "--metrics", "fid", "--out", "stats.json"]) == 0
    batch = json.loads(open("batch.json").read())["metrics"]
    assert batch["precision"] == 1.0 and batch["recall"] == 1.0  # the samples are the reference's images
    assert batch["fid"] == pytest.approx(json.loads(open("stats.json").read())["metrics"]["fid"], rel=1e-6)
    assert batch["fid"] > 0.01  # from mu/sigma, not from arr_0 (the same images: 0)
    videos = _nhwc(8, seed=9).reshape(4, 2, *images.shape[1:])  # [N, T, H, W, 3]
    np.savez("v.npz", arr_0=videos)
    np.savez("v_ref.npz", arr_0=videos, mu=np.zeros(2 * dim), sigma=np.eye(2 * dim))
    assert main(["eval-samples", "v.npz", "--ref", "v_ref.npz", "--metrics", "fvd", "--out", "v.json"]) == 0
    assert abs(json.loads(open("v.json").read())["metrics"]["fvd_proxy_inception"]) < 1e-6


def test_sfid_against_a_reference_batch_and_an_image_folder(monkeypatch, caplog):
    """--metrics sfid (the ADM evaluator's third score): the extractor is built with spatial features; against an ADM
    reference batch sFID uses its mu_s/sigma_s (with pr too, which reads its arr_0), against an image folder the
    real images' spatial features; a --ref without mu_s/sigma_s is refused naming the file."""
    built = []

    def extractor(*args, **kwargs):
        built.append(kwargs.get("spatial", False))
        return (TinySpatialExtractor() if kwargs.get("spatial") else TinyExtractor()).eval()

    monkeypatch.setattr(nar.metrics, "default_extractor", extractor)
    images = _nhwc(20, seed=10)
    np.savez("s.npz", arr_0=images)
    spatial = TinySpatialExtractor().eval()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())["spatial"]
    spatial = spatial.detach().double().numpy()
    mu_s, sigma_s = spatial.mean(0) + 0.1, np.cov(spatial, rowvar=False) * 1.5  # a reference unlike the samples
    dim = TinyExtractor.num_features
    np.savez("ref_batch.npz", arr_0=images, mu=np.zeros(dim), sigma=np.eye(dim), mu_s=mu_s, sigma_s=sigma_s)
    expected = float(frechet_distance(torch.from_numpy(spatial.mean(0)), torch.from_numpy(np.cov(spatial, rowvar=False)),
                                      torch.from_numpy(mu_s), torch.from_numpy(sigma_s)))
    assert expected > 0.01
    for metrics in ("sfid", "fid,sfid,pr"):
        built.clear()
        assert main(["eval-samples", "s.npz", "--ref", "ref_batch.npz", "--metrics", metrics, "--out", "b.json"]) == 0
        report = json.loads(open("b.json").read())["metrics"]
        assert report["sfid"] == pytest.approx(expected, rel=1e-5) and built == [True], (metrics, report, built)
    folder = Path("real")
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    assert main(["eval-samples", "s.npz", "--ref", "real", "--metrics", "fid,sfid", "--out", "f.json"]) == 0
    report = json.loads(open("f.json").read())["metrics"]
    assert abs(report["sfid"]) < 1e-6 and abs(report["fid"]) < 1e-6  # the samples are the folder's images
    np.savez("stats.npz", mu=np.zeros(dim), sigma=np.eye(dim))
    caplog.clear()
    assert main(["eval-samples", "s.npz", "--ref", "stats.npz", "--metrics", "sfid"]) == 2
    assert "stats.npz" in caplog.text and "mu_s" in caplog.text, caplog.text


def test_a_saved_reference_serves_sfid(monkeypatch):
    """--save-ref with sfid among --metrics also writes the real spatial statistics mu_s/sigma_s (as an ADM reference
    batch holds them): scoring against the saved file gives the FID and sFID scored against the real images; a
    reference batch passes its own on; with fid alone (no spatial features computed) the file holds mu/sigma only."""
    monkeypatch.setattr(nar.metrics, "default_extractor", lambda *a, **k: (
        TinySpatialExtractor() if k.get("spatial") else TinyExtractor()).eval())
    folder = Path("real")
    folder.mkdir()
    for i, img in enumerate(_nhwc(24, seed=11)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    np.savez("s.npz", arr_0=_nhwc(20, seed=12))
    assert main(["eval-samples", "s.npz", "--ref", "real", "--metrics", "fid,sfid", "--save-ref", "ref.npz",
                 "--out", "direct.json"]) == 0
    with np.load("ref.npz") as saved:
        assert {"mu", "sigma", "mu_s", "sigma_s"} <= set(saved.files)
        mu_s = saved["mu_s"]
    assert main(["eval-samples", "s.npz", "--ref", "ref.npz", "--metrics", "fid,sfid", "--save-ref", "again.npz",
                 "--out", "saved.json"]) == 0
    direct = json.loads(open("direct.json").read())["metrics"]
    saved = json.loads(open("saved.json").read())["metrics"]
    assert direct["fid"] > 0.01 and direct["sfid"] > 0.01  # real images unlike the samples: a distance to match
    assert saved["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    assert saved["sfid"] == pytest.approx(direct["sfid"], rel=1e-9)
    with np.load("again.npz") as again:
        assert np.array_equal(again["mu_s"], mu_s)
    assert main(["eval-samples", "s.npz", "--ref", "real", "--metrics", "fid", "--save-ref", "pool.npz",
                 "--out", "pool.json"]) == 0
    with np.load("pool.npz") as pool:
        assert "mu" in pool.files and "mu_s" not in pool.files
