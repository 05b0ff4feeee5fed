"""The DataModule of a run's ``data`` section (nar.lightning.data): start-up checks and the validation subset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nar.config import load_config
from nar.data.encode import encode_png
from nar.data.shards import write_meta, write_split
from nar.runs import TrainConfig


def _image(i: int) -> dict:
    return {"png": encode_png(Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8))), "cls": i % 2}


def test_pixels_tokenized_during_training_are_checked_without_building_the_tokenizer(tokenizer_file, tmp_path,
                                                                                        monkeypatch):
    """The pixel-size check of a run that tokenizes as it trains reads the tokenizer file's config only."""
    from nar.lightning.data import generator_datamodule
    from nar.tokenizers import VQTokenizer, load_tokenizer

    config = load_tokenizer(tokenizer_file).config
    grid = list(config.grid)
    rec = write_split(tmp_path / "img", "train", list(range(2)), make_sample=_image, shard_size=2)
    write_meta(tmp_path / "img", "image", [rec], classes=["x", "y"])

    def refuse(*args, **kwargs):
        raise AssertionError("a start-up check built the tokenizer")

    monkeypatch.setattr(VQTokenizer, "__init__", refuse)
    cfg = load_config(TrainConfig, [], [f"data.root={tmp_path / 'img'}", "data.num_workers=0",
                                        f"tokenizer.path={tokenizer_file}", f"model.grid={grid}"])
    assert generator_datamodule(cfg).cfg.image_size == config.image_size


CLASSES, PER_CLASS = 6, 5  # a class-sorted validation split: samples 0-4 are class 0, 5-9 class 1, …


def _sorted_token_split(root, bad: tuple[int, ...] = ()):
    """Token shards whose val split is sorted by class, each sample's tokens all equal to its index; the val
    samples in ``bad`` hold a grid other than meta.json's (skipped as invalid)."""
    n = CLASSES * PER_CLASS

    def sample(i: int) -> dict:
        return {"tokens.npy": np.full((1, 2, 2), i, dtype=np.int32), "cls": i // PER_CLASS}

    def val_sample(i: int) -> dict:
        return {**sample(i), "tokens.npy": np.zeros((1, 3, 3), dtype=np.int32)} if i in bad else sample(i)

    recs = [write_split(root, "train", list(range(4)), make_sample=sample, shard_size=4),
            write_split(root, "val", list(range(n)), make_sample=val_sample, shard_size=7)]
    write_meta(root, "tokens", recs, classes=[f"c{c}" for c in range(CLASSES)], grid=[2, 2], codebook_size=64)
    return root


def _sorted_image_split(root, bad: tuple[int, ...] = ()):
    n = CLASSES * PER_CLASS

    def sample(i: int) -> dict:
        return {**_image(i), "cls": i // PER_CLASS, **({"png": b"not a png"} if i in bad else {})}

    recs = [write_split(root, "train", list(range(4)), make_sample=_image, shard_size=4),
            write_split(root, "val", list(range(n)), make_sample=sample, shard_size=7)]
    write_meta(root, "image", recs, classes=[f"c{c}" for c in range(CLASSES)], image_size=8)
    return root


def _index(batch: dict) -> list[int]:
    """Each sample's index in the split (tokens hold it; images hold it as their pixel value)."""
    if "tokens" in batch:
        return batch["tokens"].flatten(1)[:, 0].tolist()
    return ((batch["image"][:, 0, 0, 0] + 1) / 2 * 255).round().long().tolist()


def _run_config(kind: str, tmp_path, *overrides: str, bad: tuple[int, ...] = ()):
    """The config of a run over a class-sorted split (its val samples ``bad`` damaged), and the run's DataModule."""
    from nar.lightning.data import generator_datamodule, tokenizer_datamodule
    from nar.runs import TokenizerRunConfig

    common = ["data.num_workers=0", "data.eval_batch_size=2", *overrides]
    if kind == "generator":
        root = _sorted_token_split(tmp_path / "tokens", bad)
        cfg = load_config(TrainConfig, [], [f"data.root={root}", "model.grid=[2,2]", "model.vocab_size=64", *common])
        return cfg, generator_datamodule(cfg)
    root = _sorted_image_split(tmp_path / "img", bad)
    cfg = load_config(TokenizerRunConfig, [], [f"data.root={root}", "model.preset=vq-tiny-emoji", "model.image_size=8",
                                               *common])
    return cfg, tokenizer_datamodule(cfg)


def _run_datamodule(kind: str, tmp_path, *overrides: str):
    """The run's DataModule over a class-sorted split, and the run's data section."""
    cfg, dm = _run_config(kind, tmp_path, *overrides)
    return dm, cfg.data


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
def test_validation_subset_spreads_over_a_class_sorted_split(kind, tmp_path):
    """data.limit_val_samples validates on samples spread evenly over the split, first to last (every class of a
    class-sorted split), not its first batches; as many as before (whole batches), the same on every pass, and what
    a Lightning validation reads with every batch of the loader (build_trainer's limit_val_batches=1.0)."""
    import torch

    import lightning as L

    n = CLASSES * PER_CLASS
    limit = 2 * CLASSES + 1  # 6 batches of 2
    dm, data = _run_datamodule(kind, tmp_path, f"data.limit_val_samples={limit}")

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[int] = []

        def validation_step(self, batch, _):
            self.seen += _index(batch)

    probe = Probe()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1.0)
    for _ in range(2):  # every validation reads the same subset
        probe.seen = []
        trainer.validate(probe, datamodule=dm, verbose=False)
        assert len(probe.seen) == limit // 2 * 2 and len(set(probe.seen)) == len(probe.seen)
        assert min(probe.seen) == 0 and max(probe.seen) == n - 1
        assert {i // PER_CLASS for i in probe.seen} == set(range(CLASSES))


def test_validation_subset_is_shared_out_over_processes(tmp_path):
    """Under DDP each process validates its own part of the one spread subset: disjoint, equal, together the
    subset a single process validates."""
    from types import SimpleNamespace

    n = CLASSES * PER_CLASS
    dm, _ = _run_datamodule("generator", tmp_path, f"data.limit_val_samples={2 * CLASSES}")
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    alone = [i for batch in dm.val_dataloader() for i in _index(batch)]
    parts = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        parts.append([i for batch in dm.val_dataloader() for i in _index(batch)])
    assert len(parts[0]) == len(parts[1]) == len(alone) // 2 and sorted(parts[0] + parts[1]) == sorted(alone)
    assert len(alone) == 2 * CLASSES and min(alone) == 0 and max(alone) == n - 1
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    whole, _ = _run_datamodule("generator", tmp_path / "all")  # no limit: the whole split, in order
    assert [i for batch in whole.val_dataloader() for i in _index(batch)] == list(range(n))


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
@pytest.mark.parametrize("shuffled", [False, True])
def test_a_class_sorted_train_split_is_warned_about_at_start(kind, shuffled, tmp_path, caplog):
    """Training reads whole shards into a buffer, so a train split stored class by class (shards of an earlier
    version) gives batches of a few classes: the run says so once at start, naming data.root and the remedies; a
    shuffled split gets no warning."""
    from nar.data.order import write_order
    from nar.lightning.data import generator_datamodule, tokenizer_datamodule
    from nar.runs import TokenizerRunConfig

    n = CLASSES * PER_CLASS
    order = write_order("train", list(range(n)))[0] if shuffled else list(range(n))
    root = tmp_path / "data"
    if kind == "generator":
        def sample(i: int) -> dict:
            return {"tokens.npy": np.zeros((1, 2, 2), dtype=np.int32), "cls": i // PER_CLASS}

        write_meta(root, "tokens", [write_split(root, "train", order, make_sample=sample, shard_size=10)],
                   classes=[f"c{c}" for c in range(CLASSES)], grid=[2, 2], codebook_size=64)
        cfg = load_config(TrainConfig, [], [f"data.root={root}", "model.grid=[2,2]", "model.vocab_size=64",
                                            "data.num_workers=0"])
        build = generator_datamodule
    else:
        def sample(i: int) -> dict:
            return {**_image(i), "cls": i // PER_CLASS}

        write_meta(root, "image", [write_split(root, "train", order, make_sample=sample, shard_size=10)],
                   classes=[f"c{c}" for c in range(CLASSES)], image_size=8)
        cfg = load_config(TokenizerRunConfig, [], [f"data.root={root}", "model.preset=vq-tiny-emoji",
                                                   "model.image_size=8", "data.num_workers=0"])
        build = tokenizer_datamodule
    with caplog.at_level("WARNING"):
        build(cfg)
    warned = [r.getMessage() for r in caplog.records if "sorted by class" in r.getMessage()]
    if shuffled:
        assert warned == []
    else:
        assert len(warned) == 1 and f"data.root={root}" in warned[0] and "data.shuffle_buffer" in warned[0]
    if kind == "generator":  # an evaluation reads the val split only: not checked
        caplog.clear()
        generator_datamodule(cfg, training=False)
        assert not [r for r in caplog.records if "sorted by class" in r.getMessage()]


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
def test_a_run_validates_past_a_damaged_val_sample_and_logs_how_many_it_read(kind, tmp_path):
    """A damaged sample among the 12 of the spread validation subset, data.val_missing_tolerance=0.1 (one of
    12): the run trains, validates on the other 11 and logs val/samples=11, also in its final validation after fit.
    A trainer that only validates (`nar evaluate`) stays strict; data.allow_missing is named."""
    import torch

    import lightning as L
    from nar.data.readers import MissingSamples

    torch.manual_seed(0)
    limit = 2 * CLASSES  # samples 0, 2, 5, 7, … of the 30: spread_ids(30, 12)
    tiny = ["model.dim=32", "model.n_layer=1", "model.n_head=2"] if kind == "generator" else []
    cfg, dm = _run_config(kind, tmp_path, f"data.limit_val_samples={limit}", "data.val_missing_tolerance=0.1",
                          "data.batch_size=4", *tiny, bad=(5,))
    assert dm.cfg.val_missing_tolerance == 0.1
    if kind == "generator":
        from nar.lightning.generator_module import GeneratorModule

        module = GeneratorModule(cfg)
    else:
        from nar.lightning.tokenizer_module import TokenizerModule

        module = TokenizerModule(cfg.model, cfg.loss, cfg.optim, replace(cfg.val, rfid=False, log_samples=0))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)  # one batch of the 4 training samples, then the validation
    assert trainer.global_step >= 1 and trainer.callback_metrics["val/samples"].item() == limit - 1
    trainer.callback_metrics.clear()
    trainer.validate(module, datamodule=dm, verbose=False)  # the run's final validation
    assert trainer.callback_metrics["val/samples"].item() == limit - 1
    evaluation = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(MissingSamples, match=r"11 of 12 selected samples read.*data\.allow_missing"):
        evaluation.validate(module, datamodule=dm, verbose=False)


@pytest.mark.parametrize("bad", [-0.5, 1, "nan"])
def test_val_missing_tolerance_is_checked_in_both_run_configs(bad):
    from nar.errors import ConfigError
    from nar.runs import TokenizerRunConfig

    for schema in (TrainConfig, TokenizerRunConfig):
        assert load_config(schema, [], []).data.val_missing_tolerance == 0.01
        with pytest.raises(ConfigError, match=r"data\.val_missing_tolerance"):
            load_config(schema, [], [f"data.val_missing_tolerance={bad}"])


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
def test_a_shuffle_buffer_too_large_for_memory_is_refused_naming_a_value_that_fits(kind, tmp_path, monkeypatch,
                                                                                    caplog):
    """Every loader worker of every process buffers data.shuffle_buffer raw samples: whole videos with the video
    recipe's buffer would fill ~146 GB a GPU. Estimated from the split's shard files against the machine's memory
    (here pretended small): above it refused, naming the key and a buffer that fits a quarter; above half warned."""
    from nar.errors import ConfigError
    from nar.lightning import data as run_data
    from nar.runs import TokenizerRunConfig

    root = tmp_path / "data"
    write_meta(root, "image", [write_split(root, "train", list(range(40)), make_sample=_image, shard_size=10)],
               classes=[], image_size=8)
    per_sample = sum(f.stat().st_size for f in (root / "train").glob("*.tar")) / 40
    if kind == "generator":
        schema, extra, build = TrainConfig, ["tokenizer.path=x.pt"], run_data.generator_datamodule
        monkeypatch.setattr(run_data, "_pixel_size", lambda *a: 8)  # no tokenizer file needed for this check
    else:
        schema, extra, build = TokenizerRunConfig, ["model.preset=vq-tiny-emoji", "model.image_size=8"], \
            run_data.tokenizer_datamodule
    cfg = load_config(schema, [], [f"data.root={root}", "data.num_workers=2", "data.shuffle_buffer=30",
                                   "trainer.devices=2", *extra])
    held = 30 * per_sample * 2 * 2  # buffer x workers x processes
    monkeypatch.setattr(run_data, "_memory_limit", lambda: int(held / 1.5))
    with pytest.raises(ConfigError, match=r"data\.shuffle_buffer.*data\.shuffle_buffer=\d+ keeps it to a quarter"):
        build(cfg)
    monkeypatch.setattr(run_data, "_memory_limit", lambda: int(held * 1.5))  # above half: a warning
    with caplog.at_level("WARNING"):
        build(cfg)
    assert any("data.shuffle_buffer" in r.getMessage() and "keeps it to a quarter" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(run_data, "_memory_limit", lambda: int(held * 4))  # a quarter: nothing said
    with caplog.at_level("WARNING"):
        build(cfg)
    assert not [r for r in caplog.records if "shuffle_buffer" in r.getMessage()]


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
def test_a_val_split_smaller_than_the_processes_is_refused_at_start(kind, tmp_path):
    """A process with no val sample would skip the epoch-end reductions the others wait in (a hang at the first
    validation, hours in): refused at start naming data.val_split; as many samples as processes is fine."""
    from nar.errors import ConfigError
    from nar.lightning.data import generator_datamodule, tokenizer_datamodule
    from nar.runs import TokenizerRunConfig

    root = tmp_path / "data"
    if kind == "generator":
        def sample(i: int) -> dict:
            return {"tokens.npy": np.zeros((1, 2, 2), dtype=np.int32)}

        splits = [write_split(root, s, list(range(n)), make_sample=sample, shard_size=8) for s, n in (("train", 8),
                                                                                                     ("test", 3))]
        write_meta(root, "tokens", splits, classes=[], grid=[2, 2], codebook_size=64)
        schema, build = TrainConfig, generator_datamodule
        extra = ["model.grid=[2,2]", "model.vocab_size=64"]
    else:
        splits = [write_split(root, s, list(range(n)), make_sample=_image, shard_size=8) for s, n in (("train", 8),
                                                                                                    ("test", 3))]
        write_meta(root, "image", splits, classes=[], image_size=8)
        schema, build = TokenizerRunConfig, tokenizer_datamodule
        extra = ["model.preset=vq-tiny-emoji", "model.image_size=8"]

    def cfg(devices: int):
        return load_config(schema, [], [f"data.root={root}", "data.num_workers=0", f"trainer.devices={devices}",
                                        *extra])

    with pytest.raises(ConfigError, match=r"data\.val_split.*'test' holds 3 samples for 4 processes"):
        build(cfg(4))
    build(cfg(3))  # the val split falls back to test, one sample each


def test_the_memory_a_job_may_use_is_its_cgroup_limit_when_lower(tmp_path, monkeypatch):
    """A scheduler's limit (Slurm --mem: the job's own cgroup, named in /proc/self/cgroup, or one above it; a
    container's) is what kills a job, not the machine's memory; "max" and v1's huge "unlimited" leave the machine's."""
    import os

    from nar.lightning import data as run_data

    machine = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    fs = tmp_path / "sys" / "fs" / "cgroup"
    real_path = Path

    def fake_path(*parts):  # /proc/self/cgroup and /sys/fs/cgroup/... inside tmp_path
        path = real_path(*parts)
        return tmp_path / str(path).lstrip("/") if str(path).startswith(("/proc/", "/sys/")) else path

    monkeypatch.setattr(run_data, "Path", fake_path)
    (tmp_path / "proc" / "self").mkdir(parents=True)
    cgroup = tmp_path / "proc" / "self" / "cgroup"

    cgroup.write_text("not a cgroup line\n0::/slurm/uid_0/job_7/step_0\n")  # v2: the job's limit above the step
    for level, text in (("", None), ("slurm", "max"), ("slurm/uid_0", "max"), ("slurm/uid_0/job_7", str(2 ** 30)),
                        ("slurm/uid_0/job_7/step_0", "max")):
        (fs / level).mkdir(parents=True, exist_ok=True)
        if text is not None:
            (fs / level / "memory.max").write_text(text + "\n")
    assert run_data._memory_limit() == min(2 ** 30, machine)
    (fs / "slurm/uid_0/job_7/memory.max").write_text("max\n")  # no limit anywhere: the machine's
    assert run_data._memory_limit() == machine

    cgroup.write_text("12:cpu,cpuacct:/job_9\n4:memory:/job_9\n")  # v1: the memory controller's tree
    v1 = fs / "memory" / "job_9"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{machine * 4}\n")  # v1's "unlimited" is a huge number
    assert run_data._memory_limit() == machine
    (v1 / "memory.limit_in_bytes").write_text(f"{2 ** 31}\n")
    assert run_data._memory_limit() == min(2 ** 31, machine)


def test_pixel_data_needs_no_real_root_for_its_scores(tokenizer_file, tmp_path):
    """A run that tokenizes pixels as it trains scores against its validated samples (real pixels) when no
    eval.real_root is set: fid, sfid, pr and kid are not degraded there; token data (reconstructions) still is."""
    from nar.tokenizers import load_tokenizer
    from nar.workflows.preflight import check_generator_run

    grid = list(load_tokenizer(tokenizer_file).config.grid)
    pixels, tokens = tmp_path / "img", tmp_path / "tok"
    write_meta(pixels, "image", [write_split(pixels, "val", list(range(4)), make_sample=_image, shard_size=4)],
               classes=["x", "y"])

    def token_sample(i: int) -> dict:
        return {"tokens.npy": np.zeros((1, *grid), dtype=np.int32), "cls": i % 2}

    write_meta(tokens, "tokens", [write_split(tokens, "val", list(range(4)), make_sample=token_sample, shard_size=4)],
               classes=["x", "y"], grid=grid, codebook_size=64)

    def degraded(root) -> list[str]:
        return check_generator_run(load_config(TrainConfig, [], [
            f"data.root={root}", f"tokenizer.path={tokenizer_file}", f"model.grid=[{','.join(map(str, grid))}]",
            "model.vocab_size=64", "model.num_classes=2", "eval.metrics=[fid,sfid,pr,kid]", "allow_degraded=true"]))

    assert not [d for d in degraded(pixels) if d.startswith(("eval.metrics fid", "eval.metrics sfid",
                                                              "eval.metrics pr", "eval.metrics kid"))]
    named = " ".join(degraded(tokens))
    assert all(f"eval.metrics {m}:" in named for m in ("fid", "sfid", "pr", "kid")), named



def test_validated_pixels_are_scored_as_their_batches_come_and_count_once(tmp_path, monkeypatch):
    """Pixel data without eval.real_root: each val batch's pixels go into the metrics' real side when the batch
    ends (no validation holds a split's pixels until it samples); a validation stopped before its real side was
    complete is not counted again by the next one."""
    from types import SimpleNamespace

    import torch

    from nar.lightning.callbacks import FrontierDecodingCallback, decoding
    from nar.lightning.generation import to_uint8

    built = []

    class Recorder:  # the metrics' side of the contract: update(pixels, real), to(device)
        def __init__(self) -> None:
            self.real: list[torch.Tensor] = []
            built.append(self)

        def to(self, device):
            return self

        def update(self, pixels: torch.Tensor, real: bool) -> None:
            assert real and pixels.dtype == torch.uint8
            self.real.append(pixels)

    monkeypatch.setattr(decoding, "build_metrics", lambda *args, **kwargs: {"image": Recorder()})
    cfg = load_config(TrainConfig, [], ["eval.metrics=[fid]", "allow_degraded=true"])
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="validate"), global_step=0,
                              max_steps=-1, callback_metrics={})
    module = SimpleNamespace(cfg=cfg, tokenizer=object(), device=torch.device("cpu"),
                             eval_model=SimpleNamespace(cfg=SimpleNamespace(grid=[2, 2])))
    generator = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1, "cls": torch.tensor([0, 1])}
               for _ in range(3)]
    callback = FrontierDecodingCallback(cfg, tmp_path)

    def validate() -> None:
        callback.on_validation_epoch_start(trainer, module)
        for i, batch in enumerate(batches):
            callback.on_validation_batch_end(trainer, module, None, batch, i)
            assert len(callback.metrics["image"].real) == i + 1  # fed now, not at the epoch's end

    validate()
    validate()  # the first stopped before its real side was complete (_real_done unset): nothing counts twice
    assert len(built) == 2 and callback._real_streamed == 6
    fed = torch.cat(callback.metrics["image"].real)
    assert torch.equal(fed, to_uint8(torch.cat([b["image"] for b in batches]).clamp(-1, 1)))


def test_fewer_model_classes_than_the_data_holds_are_refused_at_start(tmp_path):
    """model.num_classes below the data's classes was an IndexError traceback at the first batch holding a larger
    label (in a grid, it took the whole grid down); caption models ignore the classes."""
    from nar.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"2, but .* holds {CLASSES} classes.*model.num_classes={CLASSES}") as refused:
        _run_config("generator", tmp_path / "a", "model.num_classes=2")
    assert refused.value.key == "model.num_classes"
    _run_config("generator", tmp_path / "b", f"model.num_classes={CLASSES}")


def test_a_tokenizer_file_other_than_the_one_the_codes_were_made_with_is_warned_of(tokenizer_file, tmp_path, caplog):
    """Token shards record their tokenizer file's sha256 (nar data tokens); a run decoding with a file of other
    content (a tokenizer retrained into the same path) is told so at start; the same file says nothing."""
    import json
    import logging
    import shutil

    from nar.data.tokens import file_sha256
    from nar.workflows.preflight import check_generator_run

    root = _sorted_token_split(tmp_path / "tokens")
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": file_sha256(tokenizer_file)}))
    other = tmp_path / "retrained.pt"
    shutil.copy(tokenizer_file, other)
    with other.open("ab") as fh:
        fh.write(b"\0")  # other bytes: another file as far as the codes can tell

    def said(path, needs_data: bool = True) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nar"):
            check_generator_run(load_config(TrainConfig, [], [f"data.root={root}", f"tokenizer.path={path}",
                                                              "model.grid=[2,2]", "model.vocab_size=64",
                                                              "eval.metrics=[]"]), needs_data=needs_data)
        return [r.getMessage() for r in caplog.records if "tokenizer_sha256" in r.getMessage()]

    assert said(tokenizer_file) == []
    (warning,) = said(other)
    assert str(other) in warning and str(root) in warning
    assert len(said(other, needs_data=False)) == 1  # nar evaluate, which reads no data, is told too
