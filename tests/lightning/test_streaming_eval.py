"""``nar evaluate`` at scale, on the CPU: samples stream chunk by chunk through the metrics and to disk, a killed
evaluation continues from its chunks to the same files and scores, ``samples_<N>.npz`` is what the ADM evaluator
reads, an ADM-style reference batch gives FID/sFID from its statistics and precision/recall/KID from its images,
and peak memory does not grow with the number of samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nar.config import load_config, to_dict
from nar.errors import ConfigError
from nar.lightning.generation import chunk_path
from nar.runs import TrainConfig
from process_helpers import sigkill_once_exists

NAR = [sys.executable, "-m", "nar"]


def save_generator(path: Path, tokenizer: Path, grid: tuple[int, int] = (8, 8)) -> Path:
    """A seeded random tiny generator as a run checkpoint (its run config inside, as `nar train` saves it)."""
    from nar.lightning.generator_module import GeneratorModule

    overrides = {"name": "exp", "runs_root": str(path.parent), "model.dim": 32, "model.n_layer": 1,
                 "model.n_head": 2, "model.vocab_size": 512, "model.grid": f"[{grid[0]},{grid[1]}]",
                 "model.num_classes": 4, "tokenizer.path": str(tokenizer), "trainer.accelerator": "cpu",
                 "trainer.precision": "32-true", "ema.enabled": "false"}
    cfg = load_config(TrainConfig, [], [f"{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    module = GeneratorModule(cfg)
    torch.save({"pytorch-lightning_version": "2.6", "global_step": 1, "epoch": 0,
                "hyper_parameters": {"cfg": to_dict(cfg)}, "state_dict": module.state_dict()}, path)
    return path


def reference_batch(path: Path, n: int = 12, size: int = 32) -> Path:
    """An ADM-style reference batch: images ``arr_0`` and their Inception ``mu``/``sigma`` and spatial
    ``mu_s``/``sigma_s``, computed here with the same network (as the ADM evaluator computes its own)."""
    from nar.metrics import ImageFidelity

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    metric = ImageFidelity(metrics=("fid", "sfid"))
    out = metric.extract(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    pool, spatial = out["features"].double(), out["spatial"].double()
    np.savez(path, arr_0=images, mu=pool.mean(0).numpy(), sigma=np.cov(pool.numpy(), rowvar=False),
             mu_s=spatial.mean(0).numpy(), sigma_s=np.cov(spatial.numpy(), rowvar=False))
    return path


def evaluate_args(ckpt: Path, out: Path, n: int, batch: int, *extra: str) -> list[str]:
    return ["evaluate", "--ckpt", str(ckpt), "--out", str(out), "--num-samples", str(n), f"eval.batch_size={batch}",
            "trainer.threads=1", *extra]


@pytest.fixture(scope="module")
def setup(tokenizer_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return save_generator(root / "gen.ckpt", tokenizer_file), reference_batch(root / "ref.npz")


def test_killed_evaluation_continues_to_the_same_files_and_scores(setup, tmp_path, caplog):
    """Only the killed evaluation is a process of its own (a SIGKILL is the subject): the uninterrupted one runs
    in this process meanwhile (one thread each, on two cores) and the rerun after it, the same command; this
    spares two start-ups of torch and Lightning and overlaps the third."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from nar.cli.main import main

    ckpt, ref = setup
    n, batch = 12, 4
    metrics = ["eval.metrics=[fid,sfid,pr,kid]", f"eval.reference_stats={ref}"]

    # The evaluation, SIGKILLed once its second chunk is on disk (watched from a thread), then run again with the
    # same command.
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = subprocess.Popen([*NAR, *evaluate_args(ckpt, cut, n, batch, *metrics)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(sigkill_once_exists, proc, chunk_path(cut / "chunks", 1), 300, "second chunk")
        assert main(evaluate_args(ckpt, whole, n, batch, *metrics)) == 0
        killed.result()  # the watcher's failure, if any
    assert not (cut / "results.json").exists() and not chunk_path(cut / "chunks", 2).exists()
    caplog.set_level(logging.INFO)
    assert main(evaluate_args(ckpt, cut, n, batch, *metrics)) == 0
    assert "2 of 3 chunks read back" in caplog.text

    first, second = (json.loads((d / "results.json").read_text()) for d in (whole, cut))
    for key in ("val/fid", "val/sfid", "val/precision", "val/recall", "val/kid_mean"):
        assert key in first["scores"], first["scores"]
        assert second["scores"][key] == pytest.approx(first["scores"][key], rel=1e-9, abs=1e-12), key
    for c in range(3):
        with np.load(chunk_path(whole / "chunks", c)) as a, np.load(chunk_path(cut / "chunks", c)) as b:
            assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["labels"], b["labels"])
    assert first["num_samples"] == n and set(first["seconds"]) >= {"tokens", "decode", "features", "write", "npz"}

    # samples_<N>.npz: what the ADM evaluator reads (arr_0 uint8 [N, H, W, 3], arr_1 the labels), the chunks'
    # pixels in order, and byte-identical between the two runs.
    npz = whole / f"samples_{n}.npz"
    assert first["samples_npz"] == str(npz)
    with np.load(npz) as data:
        arr, labels = data["arr_0"], data["arr_1"]
    assert arr.dtype == np.uint8 and arr.shape == (n, 32, 32, 3) and labels.shape == (n,)
    stored = [np.load(chunk_path(whole / "chunks", c)) for c in range(3)]
    assert np.array_equal(arr, np.concatenate([s["pixels"] for s in stored]))
    assert np.array_equal(labels, np.concatenate([s["labels"] for s in stored]))
    assert npz.read_bytes() == (cut / f"samples_{n}.npz").read_bytes()


def test_a_reference_without_what_a_metric_needs_is_refused(setup, tmp_path, caplog):
    """Asked-for metrics that the reference cannot give stop at start, naming the key and what is missing."""
    from nar.cli.main import main

    ckpt, ref = setup
    stats_only = tmp_path / "stats.npz"
    with np.load(ref) as data:
        np.savez(stats_only, mu=data["mu"], sigma=data["sigma"])
    for metric, missing in (("pr", "arr_0"), ("kid", "arr_0"), ("sfid", "mu_s/sigma_s")):
        out = tmp_path / metric
        code = main(evaluate_args(ckpt, out, 4, 4, f"eval.metrics=[fid,{metric}]",
                                  f"eval.reference_stats={stats_only}"))
        assert code == 2, metric
        message = caplog.text
        caplog.clear()
        assert "eval.metrics" in message and missing in message and "allow_degraded" in message, message
        assert not out.exists() or not any(out.rglob("*.npz")), metric
    # allow_degraded runs without them, and says so in results.json
    out = tmp_path / "degraded"
    assert main(evaluate_args(ckpt, out, 4, 4, "eval.metrics=[fid,sfid]", f"eval.reference_stats={stats_only}",
                              "allow_degraded=true")) == 0
    results = json.loads((out / "results.json").read_text())
    assert "val/fid" in results["scores"] and "val/sfid" not in results["scores"]
    assert any("sfid" in d and "mu_s" in d for d in results["degraded"])


PEAK = """
import json, resource, sys
from nar.cli.main import main
code = main({args!r})
print(json.dumps({{"code": code, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


@pytest.mark.slow  # ~1-2 min: 2200 samples generated and decoded on one thread
def test_peak_memory_does_not_grow_with_the_number_of_samples(tokenizer_file, tmp_path):
    """200 vs 2000 samples of 64-px images (16x16 tokens): holding every sample, as a collect-then-score
    evaluation does, would add >= 1800 x 64 x 64 x 3 x 4 bytes = 88 MB (float pixels); streaming adds
    nothing but the list of conditions."""
    ckpt = save_generator(tmp_path / "gen16.ckpt", tokenizer_file, grid=(16, 16))
    peaks = {}
    for n in (200, 2000):
        args = evaluate_args(ckpt, tmp_path / f"eval{n}", n, 100, "eval.metrics=[]", "eval.grid_samples=16")
        done = subprocess.run([sys.executable, "-c", PEAK.format(args=args)], capture_output=True, text=True,
                              timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["code"] == 0
        peaks[n] = report["peak_kb"] / 1024
        with np.load(tmp_path / f"eval{n}" / f"samples_{n}.npz") as data:
            assert data["arr_0"].shape == (n, 64, 64, 3)
    print(f"peak RSS: {peaks[200]:.1f} MB at 200 samples, {peaks[2000]:.1f} MB at 2000")
    assert peaks[2000] - peaks[200] < 20, peaks  # MB


def test_evaluate_through_the_wavefront_sampler(setup, tmp_path, caplog):
    """eval.sampler=wavefront: nar evaluate writes every sample; a misspelt sampler is refused, naming the key.
    (That a resumed wavefront run regenerates its chunks exactly: tests/sampling/test_wavefront.py.)"""
    from nar.cli.main import main

    ckpt, _ = setup
    n, batch = 10, 4  # chunks of 4 + 4 + 2
    out = tmp_path / "wave"
    assert main(evaluate_args(ckpt, out, n, batch, "eval.metrics=[]", "eval.sampler=wavefront")) == 0
    with np.load(out / f"samples_{n}.npz") as data:
        whole = data["arr_0"]
    assert whole.shape[0] == n
    assert main(evaluate_args(ckpt, tmp_path / "bad", n, batch, "eval.sampler=wavefrnt")) == 2
    assert "sampler" in caplog.text and "wavefrnt" in caplog.text


def test_evaluate_out_here_other_metrics_and_a_sigterm(setup, tmp_path, monkeypatch, caplog):
    """`--out .` writes into the current folder; a run trained with best checkpoints by val/fid is evaluated with
    other metrics (an evaluation keeps no best checkpoints); SIGTERM during the evaluation exits as interrupted
    (75) naming the chunk folder, not 0 without results, and the same command then finishes from the chunks."""
    from lightning_helpers import sigterm_at_decode

    from nar.cli.main import main
    from nar.errors import EXIT_INTERRUPTED

    ckpt, _ = setup
    payload = torch.load(ckpt, weights_only=False)
    payload["hyper_parameters"]["cfg"]["trainer"].update(keep_best=1, best_metric="val/fid")
    best = tmp_path / "best.ckpt"
    torch.save(payload, best)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    sigterm_at_decode(monkeypatch, at=2)
    args = ["evaluate", "--ckpt", str(best), "--out", ".", "--num-samples", "12", "eval.batch_size=4",
            "trainer.threads=1", "eval.metrics=[]"]
    assert main(args) == EXIT_INTERRUPTED
    assert "stopped by SIGTERM" in caplog.text and str(here / "chunks") in caplog.text
    assert not (here / "results.json").exists() and chunk_path(here / "chunks", 0).is_file()
    assert main(args) == 0
    assert json.loads((here / "results.json").read_text())["num_samples"] == 12


def test_ctrl_c_during_an_evaluation_is_an_interruption_too(setup, tmp_path, monkeypatch) -> None:
    """Ctrl-C (SIGINT) during `nar evaluate` stops it after the chunk being decoded and exits 75 as SIGTERM does
    (Lightning's own KeyboardInterrupt path exited 1); the same command then finishes from the chunks, and the
    process's SIGINT handler is left as it was."""
    import signal

    from nar.cli.main import main
    from nar.errors import EXIT_INTERRUPTED
    from nar.lightning.generation import ChunkGenerator

    ckpt, _ = setup
    n, batch = 12, 4
    plain, decoded = ChunkGenerator.decode, []

    def decode(self, tokens):
        decoded.append(tokens.shape[0])
        if len(decoded) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return plain(self, tokens)

    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(ChunkGenerator, "decode", decode)
    out = tmp_path / "ctrl-c"
    try:
        assert main(evaluate_args(ckpt, out, n, batch, "eval.metrics=[]")) == EXIT_INTERRUPTED
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGINT, previous)
    assert decoded == [batch] and chunk_path(out / "chunks", 0).is_file()
    assert not chunk_path(out / "chunks", 1).exists() and not (out / "results.json").exists()
    monkeypatch.setattr(ChunkGenerator, "decode", plain)
    assert main(evaluate_args(ckpt, out, n, batch, "eval.metrics=[]")) == 0
    assert json.loads((out / "results.json").read_text())["num_samples"] == n


def test_eval_per_class_sets_nar_evaluate_budget(setup, tmp_path):
    """eval.per_class (the ImageNet configs' 50) is nar evaluate's budget when no flag sets one: it was read by
    nothing, and evaluate fell back to eval.num_samples."""
    from nar.cli.main import main
    from nar.model.io import load_generator_and_run_config

    ckpt, _ = setup
    classes = load_generator_and_run_config(ckpt)[0].cfg.num_classes
    out = tmp_path / "per_class"
    assert main(["evaluate", "--ckpt", str(ckpt), "--out", str(out), "eval.batch_size=4", "trainer.threads=1",
                 "eval.metrics=[]", "eval.per_class=1", f"eval.num_samples={classes + 3}"]) == 0
    with np.load(out / f"samples_{classes}.npz") as data:
        assert data["arr_0"].shape[0] == classes


def test_a_stored_per_class_does_not_change_a_bare_evaluation(setup, tmp_path):
    """Runs saved before eval.per_class was read store its old default (50): a bare nar evaluate of them keeps
    eval.num_samples as its budget. Only a YAML or the command line sets it now."""
    import torch

    from nar.workflows.train import evaluation_config

    ckpt, _ = setup
    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = obj["hyper_parameters"]["cfg"]
    obj["hyper_parameters"]["cfg"] = {**cfg, "eval": {**cfg.get("eval", {}), "per_class": 50}}
    old = tmp_path / "old.ckpt"
    torch.save(obj, old)
    assert evaluation_config(old).eval.per_class is None
    assert evaluation_config(old, overrides=["eval.per_class=2"]).eval.per_class == 2


def test_random_labels_are_reproducible_cover_the_classes_and_differ_from_balanced():
    """eval.labels=random draws class ids uniformly (the official c2i sampler's torch.randint), from eval.seed only:
    the same list on every rank and every run; balanced is the round-robin of exactly n / classes each."""
    from types import SimpleNamespace

    from nar.lightning.callbacks import condition_list

    model = SimpleNamespace(cfg=SimpleNamespace(num_classes=10))
    n = 200
    balanced = condition_list(model, n)
    drawn = condition_list(model, n, "random", seed=0)
    assert torch.equal(balanced, torch.arange(n) % 10)
    assert drawn.shape == (n,) and torch.equal(drawn, condition_list(model, n, "random", seed=0))
    assert not torch.equal(drawn, condition_list(model, n, "random", seed=1))
    counts = torch.bincount(drawn, minlength=10)
    assert counts.numel() == 10 and bool((counts > 0).all()), counts  # every class, 10 ** -8 to miss one
    assert not torch.equal(counts, torch.bincount(balanced))  # not exactly n / classes each


def test_a_resumed_evaluation_with_random_labels_reads_back_its_chunks(setup, tmp_path, caplog):
    """nar evaluate with eval.labels=random writes the drawn labels with its chunks; the same command after a kill
    reads the chunks back (their labels are the ones drawn again), and other labels into that folder are refused."""
    import logging

    from nar.cli.main import main
    from nar.lightning.callbacks import condition_list
    from nar.model.io import load_generator_and_run_config

    ckpt, _ = setup
    n, batch = 12, 4
    out = tmp_path / "random"
    args = evaluate_args(ckpt, out, n, batch, "eval.metrics=[]", "eval.labels=random", "eval.seed=3")
    assert main(args) == 0
    model = load_generator_and_run_config(ckpt)[0]

    def stored() -> np.ndarray:
        return np.concatenate([np.load(chunk_path(out / "chunks", c))["labels"] for c in range(3)])

    drawn = stored()
    assert np.array_equal(drawn, condition_list(model, n, "random", seed=3).numpy())
    assert not np.array_equal(drawn, condition_list(model, n).numpy())
    chunk_path(out / "chunks", 2).unlink()  # as a run killed before its last chunk leaves the folder
    caplog.set_level(logging.INFO)
    assert main(args) == 0
    assert "2 of 3 chunks read back" in caplog.text
    assert np.array_equal(stored(), drawn)
    with np.load(out / f"samples_{n}.npz") as data:
        assert np.array_equal(data["arr_1"], drawn)
    caplog.clear()
    assert main(evaluate_args(ckpt, out, n, batch, "eval.metrics=[]", "eval.seed=3")) == 2  # balanced labels
    assert "labels differ" in caplog.text and str(out / "chunks") in caplog.text
    caplog.clear()
    assert main(evaluate_args(ckpt, tmp_path / "bad", n, batch, "eval.labels=uniform")) == 2
    assert "eval.labels" in caplog.text and "uniform" in caplog.text


def test_an_adm_reference_gives_its_arr_0_as_the_real_images(setup, tmp_path, caplog, monkeypatch):
    """An ADM reference batch holds its statistics and only 10k images (arr_0): without eval.num_real, pr/kid
    score against all of them (ADM: 50k samples against 10k) instead of failing after every sample is generated;
    an eval.num_real above arr_0 is refused at start, naming both."""
    from nar.cli.main import main

    monkeypatch.setenv("NAR_CACHE", str(tmp_path / "cache"))
    ckpt, full = setup
    ref, held = tmp_path / "ref4.npz", 4  # fewer images than samples, as ADM's 10k against 50k
    with np.load(full) as data:
        np.savez(ref, arr_0=data["arr_0"][:held], mu=data["mu"], sigma=data["sigma"])
    n, batch = held + 2, 4
    metrics = ["eval.metrics=[pr]", f"eval.reference_stats={ref}"]
    out = tmp_path / "more"
    assert main(evaluate_args(ckpt, out, n, batch, *metrics)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_samples"] == n and results["num_real"] == held and "val/precision" in results["scores"]

    refused = tmp_path / "refused"
    assert main(evaluate_args(ckpt, refused, n, batch, *metrics, f"eval.num_real={held + 1}")) == 2
    assert "eval.num_real" in caplog.text and f"holds {held} images (arr_0)" in caplog.text
    assert not chunk_path(refused / "chunks", 0).exists()


def test_an_adm_reference_gives_all_its_images_whatever_the_sample_count(tmp_path):
    """The ADM evaluator scores precision/recall against all of its reference batch's images (10k) whatever the
    number of samples: without eval.num_real that is arr_0's count below it (a 1k validation) as above it (50k);
    an explicit eval.num_real is kept. eval.labels=real pairs sample i with real sample i, so a reference batch
    with more images than samples is refused naming both counts, and eval.num_real = the samples takes the
    first of its arr_1."""
    from nar.lightning.callbacks.decoding import real_condition_ids, real_samples
    from nar.runs import EvalConfig

    held, dim = 6, 3
    ref = tmp_path / "ref.npz"
    labels = np.arange(held) % 4
    np.savez(ref, arr_0=np.zeros((held, 8, 8, 3), np.uint8), arr_1=labels, mu=np.zeros(dim), sigma=np.eye(dim))
    for n in (held - 2, held, held + 3):
        assert real_samples(EvalConfig(num_samples=n, reference_stats=str(ref))) == (str(ref), None, held), n
    assert real_samples(EvalConfig(num_samples=held + 3, reference_stats=str(ref), num_real=2))[2] == 2
    n = held - 2
    with pytest.raises(ConfigError, match=rf"eval\.labels.*gives {held} real samples.*for {n} generated"):
        real_condition_ids(EvalConfig(num_samples=n, reference_stats=str(ref), labels="real"), 4, n)
    paired = EvalConfig(num_samples=n, reference_stats=str(ref), labels="real", num_real=n)
    assert real_condition_ids(paired, 4, n).tolist() == labels[:n].tolist()


def class_sorted_shards(root: Path, classes: int, per_class: int) -> Path:
    """A real dataset stored class by class (as our UCF-101 and ImageNet writers store a split): 8x8 PNGs with
    their class as ``cls`` (labels.npy beside the shards)."""
    import io

    from PIL import Image

    from nar.data.shards import write_meta, write_split

    def sample(i: int) -> dict:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(buf, format="PNG")
        return {"png": buf.getvalue(), "cls": i // per_class}

    rec = write_split(root, "train", list(range(classes * per_class)), shard_size=7, make_sample=sample)
    write_meta(root, "image", [rec], classes=[f"c{c}" for c in range(classes)])
    return root


def test_real_labels_take_the_classes_of_the_real_samples(setup, tmp_path, caplog):
    """eval.labels=real (NAR-videos' protocol): generated sample i takes the class of real sample i, the seeded
    random subset of eval.real_root that the evaluation scores against; samples_<N>.npz's arr_1 holds them, and a
    resumed evaluation reads its chunks back with the same list."""
    import logging

    from nar.cli.main import main
    from nar.metrics.sources import iter_records

    ckpt, _ = setup
    n, batch = 12, 4
    real = class_sorted_shards(tmp_path / "real", 4, 5)
    out = tmp_path / "paired"
    args = evaluate_args(ckpt, out, n, batch, "eval.metrics=[]", "eval.labels=real", f"eval.real_root={real}",
                         "eval.real_split=train", "eval.real_seed=42")
    assert main(args) == 0
    expected = [int(r.pixels[0, 0, 0]) // 5 for r in iter_records(real, "train", n, seed=42)]  # pixel value: index
    with np.load(out / f"samples_{n}.npz") as data:
        assert data["arr_1"].tolist() == expected
    assert len(set(expected)) == 4  # every class, not the first ones of the class-sorted split
    chunk_path(out / "chunks", 2).unlink()
    caplog.set_level(logging.INFO)
    assert main(args) == 0 and "2 of 3 chunks read back" in caplog.text
    with np.load(out / f"samples_{n}.npz") as data:
        assert data["arr_1"].tolist() == expected


def test_real_labels_are_refused_at_start_without_a_fitting_real_source(setup, tmp_path, caplog):
    """eval.labels=real stops before any sample is made, naming eval.labels and the numbers: no real source, one
    without classes, fewer real samples than generated, eval.num_real other than the samples, classes the model
    lacks, a caption model."""
    from nar.cli.main import main
    from nar.workflows.preflight import check_generator_run

    ckpt, _ = setup
    n, batch = 12, 4
    real = class_sorted_shards(tmp_path / "real", 4, 5)
    wide = class_sorted_shards(tmp_path / "wide", 6, 3)  # the model has 4 classes
    refused = {
        "no source": ([], ["eval.real_root"]),
        "no classes": ([f"eval.reference_stats={setup[1]}"], ["arr_1"]),
        "fewer": ([f"eval.real_root={real}", "eval.real_split=train", "eval.num_real=0"], []),
        "num_real": ([f"eval.real_root={real}", "eval.real_split=train", "eval.num_real=8"], ["8", "eval.num_real"]),
        "classes": ([f"eval.real_root={wide}", "eval.real_split=train"], ["class 5", "4 classes"]),
    }
    for name, (extra, words) in refused.items():
        out = tmp_path / name.replace(" ", "_")
        count = 25 if name == "fewer" else n
        caplog.clear()
        assert main(evaluate_args(ckpt, out, count, batch, "eval.metrics=[]", "eval.labels=real", *extra)) == 2, name
        assert "eval.labels" in caplog.text and all(w in caplog.text for w in words), (name, caplog.text)
        if name == "fewer":
            assert "20 real samples" in caplog.text and "25" in caplog.text, caplog.text
        assert not chunk_path(out / "chunks", 0).exists(), name
    caption = load_config(TrainConfig, [], ["model.condition=caption", "eval.labels=real", f"eval.real_root={real}",
                                            "eval.real_split=train", f"eval.num_samples={n}"])
    with pytest.raises(ConfigError, match=r"eval\.labels.*caption"):
        check_generator_run(caption, needs_data=False)


def test_a_chunk_folder_of_an_official_fsdp_folder_follows_its_consolidated_file(tmp_path):
    """The chunks of an evaluation of an official FSDP checkpoint folder belong to the weights in its
    consolidated.pth: new weights there refuse the old chunks, as a changed file does (the folder's own size and
    time say nothing)."""
    from nar.config import load_config
    from nar.errors import ConfigError
    from nar.runs import TrainConfig
    from nar.workflows.train import claim_chunk_folder

    ckpt = tmp_path / "0005000"
    ckpt.mkdir()
    (ckpt / "consolidated.pth").write_bytes(b"weights one")
    cfg = load_config(TrainConfig, [], ["data.root=x"])
    claim_chunk_folder(tmp_path / "chunks", ckpt, cfg)
    claim_chunk_folder(tmp_path / "chunks", ckpt, cfg)  # the same weights: taken
    (ckpt / "consolidated.pth").write_bytes(b"other weights, longer")
    with pytest.raises(ConfigError, match="size"):
        claim_chunk_folder(tmp_path / "chunks", ckpt, cfg)
