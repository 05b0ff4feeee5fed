"""``nar export``: one generator file, ours or official keys, from a plain or a sharded run checkpoint; the sharded
manifest's commit (complete or absent, the replaced folder removed) and its completeness check.

The sharded checkpoints here are written on this one process (``torch.distributed.checkpoint`` without a process
group) and committed by the writer the FSDP strategy uses; test_fsdp.py writes them from two processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nar.cli.main import main
from nar.config import load_config, to_dict
from nar.errors import EXIT_USAGE, CheckpointError
from nar.lightning.generator_module import GeneratorModule
from nar.lightning.sharding import commit_sharded
from nar.model.io import SHARDS_DIR, load_generator, read_generator_file, sharded_folder, stored_run_config
from nar.runs import TrainConfig
from nar.runs.folder import read_checkpoint_info, resume_checkpoint
from nar.workflows.export import export_generator

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.distributed is disabled")

OVERRIDES = {"name": "exp", "model.dim": 32, "model.n_layer": 1, "model.n_head": 2, "model.vocab_size": 512,
             "model.grid": "[8,8]", "model.num_classes": 4, "tokenizer.path": "vq-tiny-emoji",
             "trainer.accelerator": "cpu", "eval.metrics": "[]", "eval.num_samples": 2, "eval.batch_size": 2}


def trained_module(tmp_path: Path, ema: bool = True) -> GeneratorModule:
    cfg = load_config(TrainConfig, [], [f"{k}={v}" for k, v in {**OVERRIDES, "runs_root": str(tmp_path),
                                                                   "ema.enabled": str(ema).lower()}.items()])
    torch.manual_seed(0)
    module = GeneratorModule(cfg)
    with torch.no_grad():  # trained weights and an EMA copy that differ from each other and from the init
        for p in module.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return module


def metadata(module: GeneratorModule, step: int = 3) -> dict:
    return {"pytorch-lightning_version": "2.6", "global_step": step, "epoch": 0,
            "hyper_parameters": {"cfg": to_dict(module.cfg)}}


def save_sharded(module: GeneratorModule, manifest: Path, step: int = 3) -> Path:
    """A sharded checkpoint as ShardedStrategy writes it (here from one process): shards into a temporary
    folder, then the commit (meta.pt, rename, manifest)."""
    from torch.distributed.checkpoint import save

    tmp = manifest.parent / SHARDS_DIR / f".{manifest.stem}-{step}.tmp"
    state = {"state_dict": module.state_dict(), "optimizer_0": {"state": {}, "param_groups": []}}
    save(state, checkpoint_id=tmp, no_dist=True)
    return commit_sharded(metadata(module, step), tmp, tmp.parent / f"{manifest.stem}-{step}", manifest, world_size=1)


def save_plain(module: GeneratorModule, path: Path) -> None:
    torch.save({**metadata(module), "state_dict": module.state_dict()}, path)


def equal(model: torch.nn.Module, reference: torch.nn.Module) -> bool:
    ref = reference.state_dict()
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_export_sharded_and_plain_ours_and_official(tmp_path: Path) -> None:
    module = trained_module(tmp_path)
    ckpts = tmp_path / "exp" / "checkpoints"
    manifest = ckpts / "last.ckpt"
    folder = save_sharded(module, manifest)
    assert read_checkpoint_info(manifest).step == 3 and resume_checkpoint(tmp_path / "exp").path == manifest
    assert sharded_folder(read_generator_file(manifest), manifest) == folder

    # The manifest itself loads like a .ckpt: EMA by default, the trained weights on request, its run config.
    assert equal(load_generator(manifest), module.ema_model)
    assert equal(load_generator(manifest, prefer_ema=False), module.model)
    assert stored_run_config(manifest)["name"] == "exp"

    # Ours: the run config and one set of weights; loads with load_generator, as the run's checkpoint does.
    assert main(["export", "--ckpt", str(manifest), "--out", str(tmp_path / "ema.pt")]) == 0
    assert main(["export", "--ckpt", str(manifest), "--out", str(tmp_path / "raw.pt"), "--no-ema"]) == 0
    assert equal(load_generator(tmp_path / "ema.pt"), module.ema_model)
    assert equal(load_generator(tmp_path / "raw.pt"), module.model)
    assert stored_run_config(tmp_path / "ema.pt") == to_dict(module.cfg)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically

    # Official key names ({"model": ...}, no config): loads with the model's config, as official files do.
    assert main(["export", "--ckpt", str(manifest), "--out", str(tmp_path / "official.pt"), "--official"]) == 0
    official = torch.load(tmp_path / "official.pt", weights_only=True)
    assert set(official) == {"model"} and "layers.1.attention.wqkv.weight" in official["model"]  # the row head's block
    assert equal(load_generator(tmp_path / "official.pt", module.cfg.model), module.ema_model)

    # A plain Lightning .ckpt exports the same way.
    save_plain(module, tmp_path / "plain.ckpt")
    done = export_generator(tmp_path / "plain.ckpt", tmp_path / "plain.pt")
    assert done["weights"] == "ema" and not done["sharded"] and done["global_step"] == 3
    assert equal(load_generator(tmp_path / "plain.pt"), module.ema_model)

    # nar sample takes the exported file (the run's tokenizer and sampling settings come with it).
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", str(tmp_path / "ema.pt"), "--classes", "0", "1", "--out", str(out),
                 "--device", "cpu", "--batch-size", "2"]) == 0
    assert len(json.loads((out / "samples.json").read_text())["samples"]) == 2


def test_nar_evaluate_takes_the_exported_file(tmp_path: Path) -> None:
    module = trained_module(tmp_path)
    save_plain(module, tmp_path / "plain.ckpt")
    export_generator(tmp_path / "plain.ckpt", tmp_path / "nar.pt")
    out = tmp_path / "eval"
    assert main(["evaluate", "--ckpt", str(tmp_path / "nar.pt"), "--out", str(out), "trainer.precision=32-true"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_samples"] == 2 and results["scores"]["val/forward_passes"] == module.model.num_passes


def test_commit_replaces_the_manifest_and_removes_what_it_pointed_to(tmp_path: Path) -> None:
    module = trained_module(tmp_path, ema=False)
    manifest = tmp_path / "checkpoints" / "last.ckpt"
    first = save_sharded(module, manifest, step=3)
    second = save_sharded(module, manifest, step=5)
    assert not first.exists() and second.is_dir()
    assert read_checkpoint_info(manifest).step == 5
    assert not list((tmp_path / "checkpoints" / SHARDS_DIR).glob(".*"))  # no temporary folder left

    # A run without an EMA copy: --ema is refused, the default takes the trained weights.
    assert main(["export", "--ckpt", str(manifest), "--out", str(tmp_path / "x.pt"), "--ema"]) == EXIT_USAGE
    assert not (tmp_path / "x.pt").exists()
    assert export_generator(manifest, tmp_path / "x.pt")["weights"] == "model"

    # A shard lost or truncated: named, never read as a checkpoint with missing weights.
    shard = next(second.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{shard.name} has 100 bytes"):
        load_generator(manifest)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name} missing"):
        export_generator(manifest, tmp_path / "y.pt")
    assert not (tmp_path / "y.pt").exists()


def test_export_never_replaces_its_checkpoint_and_asks_before_replacing_a_file(tmp_path: Path, monkeypatch, caplog) -> None:
    """--out naming the run checkpoint (however spelt, or through a link) is refused even with --force; another
    existing file is replaced only with --force. The refusals name --out."""
    module = trained_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "last.ckpt"
    save_plain(module, ckpt)
    before = ckpt.read_bytes()
    (tmp_path / "link.pt").symlink_to(ckpt)
    for out in ("last.ckpt", str(ckpt), "./sub/../last.ckpt", "link.pt"):
        for force in ([], ["--force"]):
            caplog.clear()
            assert main(["export", "--ckpt", "last.ckpt", "--out", out, "--official", *force]) == EXIT_USAGE
            assert "--out" in caplog.text
    assert ckpt.read_bytes() == before and (tmp_path / "link.pt").is_symlink()

    out = tmp_path / "nar.pt"
    out.write_bytes(b"an earlier export")
    caplog.clear()
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == EXIT_USAGE
    assert "--out" in caplog.text and "--force" in caplog.text and out.read_bytes() == b"an earlier export"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--force"]) == 0
    assert equal(load_generator(out), module.ema_model)
