"""nar.model.io: our Lightning checkpoints and official files, EMA choice, one read, strict init_from loading."""

from __future__ import annotations

import pytest
import torch

from nar.config import to_dict
from nar.errors import CheckpointError, ConfigError
from nar.model import NARConfig, NARModel, load_generator, load_weights_into, stored_run_config
from nar.model.io import _weights, load_generator_and_run_config, read_generator_file
from nar.model.official import to_official_state_dict
from nar.sampling import SamplingConfig


def tiny(**overrides) -> NARConfig:
    return NARConfig.from_name("NAR-tiny", **{"dim": 32, "n_layer": 1, "n_head": 2, **overrides})


def run_checkpoint(path, cfg: NARConfig, ema: bool = True, seed: int = 0) -> tuple[NARModel, NARModel | None]:
    """A checkpoint as our training run writes it: Lightning keys, prefixed weights, the run config as a dict."""
    torch.manual_seed(seed)
    model, ema_model = NARModel(cfg), NARModel(cfg) if ema else None
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema_model is not None:
        state.update({f"ema_model.{k}": v for k, v in ema_model.state_dict().items()})
    run = {"name": "tiny", "model": to_dict(cfg), "tokenizer": {"path": "vq-tiny-emoji", "config": ""},
           "sampling": to_dict(SamplingConfig(cfg_scale=3.0))}
    torch.save({"pytorch-lightning_version": "2.4", "hyper_parameters": {"cfg": run}, "state_dict": state,
                "global_step": 7}, path)
    return model, ema_model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_run_checkpoint_loads_ema_by_default_with_its_stored_config(tmp_path):
    cfg = tiny(grid=[3, 5])
    model, ema = run_checkpoint(tmp_path / "last.ckpt", cfg)
    loaded = load_generator(tmp_path / "last.ckpt", tiny())  # the stored model config wins over the given one
    assert loaded.cfg.grid == [3, 5] and not loaded.training and same_weights(loaded, ema)
    assert same_weights(load_generator(tmp_path / "last.ckpt", prefer_ema=False), model)
    run = stored_run_config(tmp_path / "last.ckpt")
    assert run["tokenizer"]["path"] == "vq-tiny-emoji" and run["sampling"]["cfg_scale"] == 3.0
    assert NARConfig(**run["model"]) == cfg
    plain, _ = run_checkpoint(tmp_path / "plain.ckpt", cfg, ema=False, seed=1)  # a run without EMA
    assert same_weights(load_generator(tmp_path / "plain.ckpt"), plain)


def test_official_file_ema_entry_and_one_read(tmp_path, monkeypatch):
    cfg = tiny()
    torch.manual_seed(0)
    trained, ema = NARModel(cfg), NARModel(cfg)
    path = tmp_path / "official.pt"
    torch.save({"model": to_official_state_dict(trained), "ema": to_official_state_dict(ema), "args": {}}, path)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("mmap")) or real_load(*a, **k))
    model, run = load_generator_and_run_config(path, n_head=cfg.n_head)
    assert run is None and loads == [True] and same_weights(model, ema)
    assert same_weights(load_generator(path, cfg, prefer_ema=False), trained)
    assert stored_run_config(path) is None


def test_legacy_files_load_without_mmap(tmp_path):
    cfg = tiny()
    src = NARModel(cfg)
    torch.save({"model": to_official_state_dict(src)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert same_weights(load_generator(tmp_path / "old.pt", cfg), src)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.ckpt")
    torch.save({"model": to_official_state_dict(NARModel(tiny()))}, tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match="official checkpoints need a config"):
        load_generator(tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match=r"official.pt does not match NARModel:\n  shape differences"):
        load_generator_and_run_config(tmp_path / "official.pt", tiny(dim=64, n_head=4))


def test_run_config_without_model_section_uses_the_given_config(tmp_path):
    cfg = tiny(grid=[3, 5])
    model = NARModel(cfg)
    path = tmp_path / "no_model.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"pytorch-lightning_version": "2.4", "hyper_parameters": {"cfg": {"name": "x"}}, "state_dict": state},
               path)
    weights, used, _ = _weights(read_generator_file(path), path, cfg, True, None, {})  # no NAR-L built on failure
    assert used == cfg and set(weights) == set(model.state_dict())
    with pytest.raises(CheckpointError, match="no_model.ckpt: no run config"):
        _weights(read_generator_file(path), path, None, True, None, {})
    run_checkpoint(tmp_path / "last.ckpt", cfg)
    with pytest.raises(ConfigError, match="grid"):  # overrides describe official files, not a stored config
        load_generator(tmp_path / "last.ckpt", grid=[5, 3])


def test_load_weights_into_a_larger_grid_and_a_strict_diff(tmp_path):
    _, ema = run_checkpoint(tmp_path / "stage1.ckpt", tiny(grid=[4, 4]))
    stage2 = NARModel(tiny(grid=[8, 8]))
    load_weights_into(stage2, tmp_path / "stage1.ckpt")
    assert same_weights(stage2, ema)
    official = tmp_path / "official.pt"
    src = NARModel(tiny())
    torch.save({"model": to_official_state_dict(src)}, official)
    target = NARModel(tiny(grid=[6, 2]))
    load_weights_into(target, official)
    assert same_weights(target, src)
    with pytest.raises(CheckpointError, match=r"init_from=.*stage1.ckpt \(ema_model weights\)"):
        load_weights_into(NARModel(tiny(dim=64, n_head=4)), tmp_path / "stage1.ckpt")


def test_a_given_config_that_reads_the_weights_otherwise_is_refused(tmp_path):
    """n_head (or mixing, position ...) changes what the same-shaped weights mean: a given config that disagrees
    with the stored one is refused naming the field and both values; training-only fields and the grid may
    differ (the stored config is used)."""
    cfg = tiny(grid=[3, 5])
    run_checkpoint(tmp_path / "last.ckpt", cfg)
    heads = cfg.n_head * 2  # same shapes, other attention
    with pytest.raises(ConfigError, match=rf"n_head: given {heads}, stored {cfg.n_head}") as err:
        load_generator(tmp_path / "last.ckpt", tiny(grid=[3, 5], n_head=heads))
    assert "last.ckpt" in str(err.value)
    with pytest.raises(ConfigError, match=r"mixing: given 'probs', stored 'logits'.*position: given 'absolute'"):
        load_generator_and_run_config(tmp_path / "last.ckpt", tiny(grid=[3, 5], mixing="probs", position="absolute"))
    same = tiny(grid=[4, 4], n_kv_head=cfg.n_head, head_blocks=cfg.blocks_per_axis, token_dropout=0.5,
                drop_path=0.2, initializer_range=0.1)
    assert load_generator(tmp_path / "last.ckpt", same).cfg == cfg


def test_a_given_config_may_differ_in_fields_the_model_does_not_use(tmp_path):
    """Fields the stored model never reads (shared_axis of per-axis heads, rope_base of absolute positions,
    head_layout with one branch of head blocks) and other spellings of the same network (ffn_dim_multiplier giving
    the same ffn_hidden) are not a disagreement; the shared head's axis counted from the end is the same head."""
    from dataclasses import replace

    stored = tiny(grid=[3, 5], position="absolute")
    run_checkpoint(tmp_path / "a.ckpt", stored)
    assert load_generator(tmp_path / "a.ckpt", replace(stored, rope_base=stored.rope_base / 2, shared_axis=0)).cfg \
        == stored
    one_branch = tiny(grid=[3, 5], head_blocks=[0, 1])
    run_checkpoint(tmp_path / "b.ckpt", one_branch)
    other = "parallel" if one_branch.head_layout == "chain" else "chain"
    assert load_generator(tmp_path / "b.ckpt", replace(one_branch, head_layout=other)).cfg == one_branch
    wider = replace(one_branch, ffn_dim_multiplier=2.0)  # int(8 * 32 / 3) = 85 units, x2, rounded up to 256
    assert wider.ffn_hidden == one_branch.ffn_hidden
    assert load_generator(tmp_path / "b.ckpt", wider).cfg == one_branch
    shared = tiny(grid=[3, 5], head_sharing="shared", shared_axis=-1)
    run_checkpoint(tmp_path / "c.ckpt", shared)
    last = len(shared.blocks_per_axis) - 1
    assert load_generator(tmp_path / "c.ckpt", replace(shared, shared_axis=last)).cfg == shared
    with pytest.raises(ConfigError, match="shared_axis"):
        load_generator(tmp_path / "c.ckpt", replace(shared, shared_axis=0))
