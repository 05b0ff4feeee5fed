"""Preset sizes (on the meta device), config validation, and loading official files in every wrapping."""

from __future__ import annotations

import pytest
import torch

from nar.checkpoints import read_checkpoint
from nar.errors import CheckpointError, ConfigError
from nar.model import NARConfig, NARModel
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
])
def test_bad_config_names_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        NARConfig(**bad)


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
