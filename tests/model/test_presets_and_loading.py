"""Preset sizes (on the meta device), config validation, and loading official files in every wrapping."""

from __future__ import annotations

import pytest
import torch

from nar.checkpoints import read_checkpoint
from nar.config import from_dict
from nar.errors import CheckpointError, ConfigError
from nar.model import NARConfig, NARModel, load_generator
from nar.model.official import config_from_official, load_official, to_official_state_dict


@pytest.mark.parametrize("name,millions", [("NAR-B", 130.6), ("NAR-M", 295.5), ("NAR-L", 372.5),
                                           ("NAR-XL", 816.0), ("NAR-XXL", 1464.5)])
def test_preset_parameter_counts(name, millions):
    with torch.device("meta"):
        model = NARModel(NARConfig.from_name(name))
    assert round(model.num_parameters() / 1e6, 1) == millions


@pytest.mark.parametrize("bad,match", [
    (dict(dim=30, n_head=4), "dim"),
    (dict(mode="diagonal"), "mode"),
    (dict(head_blocks=[1]), "head_blocks"),
    (dict(n_kv_head=3), "n_kv_head"),
    (dict(grid=[2, 2, 2, 2]), "grid"),
    (dict(mode="par"), "regions'?: mode 'par' needs regions"),
    (dict(mode="par", regions=[3, 2]), "regions'?: .*axis 0 has 16 cells"),
    (dict(mode="par", regions=[2, 2, 2]), "regions'?: .*one count per axis"),
    (dict(regions=[2, 2]), "regions'?: .*'par' only"),
    (dict(multiple_of=0), "multiple_of"),
    (dict(grid=[3, 4], mode="raster", head_sharing="shared", shared_axis=1), "shared_axis'?: 1: mode=raster has one"),
    (dict(grid=[4, 4], mode="par", regions=[2, 2], head_sharing="shared", shared_axis=1), "shared_axis"),
    # Values the model would accept and turn into NaN logits, a zero-width FFN or another grid.
    (dict(rope_base=0.0), "key 'rope_base'"),
    (dict(rope_base=-10000.0), "key 'rope_base'"),
    (dict(norm_eps=-1e-5), "key 'norm_eps'"),
    (dict(norm_eps=0.0), "key 'norm_eps'"),  # an all-zero row (a zero-padded caption) would be 0/0
    (dict(ffn_dim_multiplier=0.0), "key 'ffn_dim_multiplier'"),
    (dict(ffn_dim_multiplier=1e-4), "key 'ffn_dim_multiplier'"),  # positive, but rounds to 0 units
    (dict(ffn_dim_multiplier=float("nan")), "key 'ffn_dim_multiplier'"),
    (dict(rope_base=float("nan")), "key 'rope_base'"),
    (dict(grid="16"), "key 'grid'"),
    (dict(grid=16), "key 'grid'"),
    (dict(grid=[4.7, 4]), "key 'grid'"),
    (dict(grid=[True, 4]), "key 'grid'"),
    (dict(head_blocks=[1.9, 0]), "key 'head_blocks'"),
    (dict(initializer_range=-0.02), "key 'initializer_range'"),
    (dict(head_sharing="shared", shared_axis=True), "key 'shared_axis'"),
])
def test_bad_config_names_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        NARConfig(**bad)


def test_bad_value_from_a_yaml_names_the_key():
    with pytest.raises(ConfigError, match="rope_base"):
        from_dict(NARConfig, {"preset": "NAR-tiny", "rope_base": -10000.0})


def test_grid_takes_any_sequence_of_ints():
    import numpy as np

    assert NARConfig(grid=(2, 8)).grid == [2, 8]
    assert NARConfig(grid=torch.Size([3, 5])).grid == [3, 5]
    assert NARConfig(grid=np.array([4, 6])).grid == [4, 6] and NARConfig(grid=torch.tensor([2, 2])).grid == [2, 2]
    with pytest.raises(ConfigError, match="key 'grid'"):
        NARConfig(grid=np.array([4.5, 6.0]))


def test_unknown_preset():
    with pytest.raises(ConfigError, match="NAR-Q"):
        NARConfig.from_name("NAR-Q")


@pytest.mark.parametrize("wrap", ["model", "ema", "module", "state_dict", None])
def test_load_official_file_in_any_wrapping(tmp_path, wrap):
    cfg = NARConfig.from_name("NAR-tiny")
    src = NARModel(cfg)
    state = to_official_state_dict(src)
    path = tmp_path / "ckpt.pt"
    torch.save({wrap: state, "args": {"lr": 1}} if wrap else state, path)
    model = load_official(path, n_head=cfg.n_head)
    assert model.cfg.dim == cfg.dim and model.cfg.n_layer == cfg.n_layer and model.cfg.num_classes == 10
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_ddp_prefix_is_stripped(tmp_path):
    cfg = NARConfig.from_name("NAR-tiny")
    state = {f"module.{k}": v for k, v in to_official_state_dict(NARModel(cfg)).items()}
    torch.save(state, tmp_path / "ddp.pt")
    assert "tok_embeddings.weight" in read_checkpoint(tmp_path / "ddp.pt")


def test_missing_file_and_wrong_layout(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="head_blocks"):
        to_official_state_dict(NARModel(NARConfig.from_name("NAR-tiny", head_layout="parallel", head_blocks=[2, 1])))
    with pytest.raises(ConfigError, match="PAR"):
        to_official_state_dict(NARModel(NARConfig.from_name("NAR-tiny", mode="par", regions=[2, 2])))


def test_llamagen_raster_layout_round_trips(tmp_path):
    cfg = NARConfig.from_name("NAR-tiny", mode="raster")
    src = NARModel(cfg)
    state = to_official_state_dict(src)
    assert "output.weight" in state and "medusa_output.weight" not in state
    assert config_from_official(state, n_head=4).mode == "raster"


@pytest.mark.parametrize("ablation", [dict(mixing="probs"), dict(parents="row")])
def test_ablations_do_not_export_to_the_official_format(tmp_path, ablation):
    # The official code (and load_official) reads any file as the mean of logits over every parent.
    (key,) = ablation
    cfg = NARConfig.from_name("NAR-tiny", **ablation)
    src = NARModel(cfg)
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        to_official_state_dict(src)
    # Official weights still load into an ablation (an init_from): the weights hold no mixing rule.
    path = tmp_path / "official.pt"
    torch.save({"model": to_official_state_dict(NARModel(NARConfig.from_name("NAR-tiny")))}, path)
    assert getattr(load_official(path, cfg=cfg).cfg, key) == ablation[key]


def test_truncated_official_file_and_misspelled_override(tmp_path):
    cfg = NARConfig.from_name("NAR-tiny")
    state = to_official_state_dict(NARModel(cfg))
    path = tmp_path / "truncated.pt"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("layers.0.feed_forward")}}, path)
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*layers\.0\.feed_forward\.w1\.weight"):
        load_generator(path, n_head=cfg.n_head)
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*layers\.0\.feed_forward\.w1\.weight"):
        load_official(path, n_head=cfg.n_head)
    torch.save({"model": state}, tmp_path / "whole.pt")
    with pytest.raises(ConfigError, match="key 'grdi'"):
        load_generator(tmp_path / "whole.pt", n_head=cfg.n_head, grdi=[4, 4])
    with pytest.raises(ConfigError, match="key 'grdi'"):
        config_from_official(state, n_head=cfg.n_head, grdi=[4, 4])


def test_overrides_next_to_a_config_are_refused(tmp_path):
    cfg = NARConfig.from_name("NAR-tiny")
    path = tmp_path / "official.pt"
    torch.save({"model": to_official_state_dict(NARModel(cfg))}, path)
    with pytest.raises(ConfigError, match="grid"):
        load_official(path, cfg=cfg, grid=[2, 8])
    with pytest.raises(ConfigError, match="grid"):
        load_generator(path, cfg, grid=[2, 8])
    assert load_official(path, n_head=cfg.n_head, grid=[2, 8]).cfg.grid == [2, 8]


def test_an_official_fsdp_checkpoint_folder_is_read_as_its_consolidated_file(tmp_path):
    """train_c2i_fsdp.py writes <step>/consolidated.pth (the full weights, raw) beside its optimizer shards: the
    folder itself, what the official --gpt-resume takes, loads."""
    from nar.model.io import load_generator

    cfg = NARConfig.from_name("NAR-tiny")
    src = NARModel(cfg)
    folder = tmp_path / "0005000"
    folder.mkdir()
    torch.save(to_official_state_dict(src), folder / "consolidated.pth")
    (folder / "resume_step.txt").write_text("5000\n")
    model = load_generator(folder, n_head=cfg.n_head)
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
