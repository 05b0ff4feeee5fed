"""A saved tokenizer reloads and reproduces its codes; loading is strict and config-checked."""

from __future__ import annotations

import pytest
import torch
from tokenizer_helpers import tiny_image, tiny_video

from nar.errors import CheckpointError, ConfigError
from nar.tokenizers import VQTokenizer, load_tokenizer, save_tokenizer


@pytest.mark.parametrize("make_config,shape", [(tiny_image, (2, 3, 16, 16)), (tiny_video, (2, 3, 4, 16, 16))])
def test_saved_tokenizer_reproduces_codes(make_config, shape, tmp_path):
    tokenizer = VQTokenizer(make_config()).eval()
    x = torch.rand(shape) * 2 - 1
    codes = tokenizer.encode(x)
    path = save_tokenizer(tokenizer, tmp_path / "tok.pt")
    reloaded = load_tokenizer(path)
    assert not reloaded.training
    assert reloaded.config == tokenizer.config
    assert torch.equal(reloaded.encode(x), codes)
    torch.testing.assert_close(reloaded.decode(codes), tokenizer.decode(codes), atol=0, rtol=0)


def test_load_checks_a_given_config(tmp_path):
    path = save_tokenizer(VQTokenizer(tiny_image()), tmp_path / "tok.pt")
    assert load_tokenizer(path, config=tiny_image()).config == tiny_image()
    with pytest.raises(ConfigError, match="codebook_size"):
        load_tokenizer(path, config=tiny_image(codebook_size=64))


def test_a_preset_and_its_fields_are_the_same_config(tmp_path):
    """The informational preset name is not compared: a file of a preset loads with its fields spelt out."""
    from dataclasses import replace

    from nar.tokenizers import VQConfig

    path = save_tokenizer(VQTokenizer(VQConfig.from_name("vq-tiny-emoji")), tmp_path / "tok.pt")
    assert load_tokenizer(path, config=replace(VQConfig.from_name("vq-tiny-emoji"), preset="")).config.grid == (8, 8)


def test_a_video_tokenizer_saved_before_causal_pad_keeps_its_layout(tmp_path, caplog):
    """A video tokenizer file without causal_pad was built with kernel - 1 frames of front padding: it loads with
    that layout (the codes its weights give), and a warning says what the layout misses."""
    from dataclasses import replace

    old = VQTokenizer(replace(tiny_video(), causal_pad="kernel")).eval()
    path = save_tokenizer(old, tmp_path / "tok.pt")
    payload = torch.load(path, weights_only=False)
    del payload["config"]["causal_pad"]
    torch.save(payload, path)
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    loaded = load_tokenizer(path, config=tiny_video())
    assert loaded.config.causal_pad == "kernel" and "saved before 2026-12-07" in caplog.text
    assert torch.equal(loaded.encode(x), old.encode(x))


def test_load_strict_reports_mismatch(tmp_path):
    tokenizer = VQTokenizer(tiny_image())
    path = save_tokenizer(tokenizer, tmp_path / "tok.pt")
    payload = torch.load(path, weights_only=False)
    del payload["state_dict"]["decoder.conv_out.bias"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="missing keys.*decoder.conv_out.bias"):
        load_tokenizer(path)


def test_load_from_config_or_preset_name():
    assert load_tokenizer(tiny_image()).config == tiny_image()
    assert load_tokenizer("vq-tiny-emoji").config.grid == (8, 8)
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer("missing/tokenizer.pt")


def test_a_file_that_is_no_tokenizer_is_named(tmp_path):
    import re

    path = tmp_path / "generator_last.ckpt"  # a generator's checkpoint: neither ours nor LlamaGen's
    torch.save({"state_dict": {"model.tok_embeddings.weight": torch.zeros(4, 2)}, "hyper_parameters": {}}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_tokenizer(path)


@pytest.mark.parametrize("name", ["x.safetensors", "runs/tok/tokenizer"])
def test_a_missing_path_is_not_found_not_an_unknown_preset(tmp_path, name):
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(str(tmp_path / name) if "/" in name else name)
    with pytest.raises(ConfigError, match="unknown tokenizer preset"):
        load_tokenizer("vq-17")


def _lightning_checkpoint(tokenizer: VQTokenizer, path):
    """What TokenizerModule's Lightning checkpoint holds of its tokenizer: the config and prefixed weights."""
    from nar.config import to_dict
    from nar.tokenizers.io import LIGHTNING_CONFIG_KEY, LIGHTNING_PREFIX

    state = {LIGHTNING_PREFIX + k: v for k, v in tokenizer.state_dict().items()}
    torch.save({LIGHTNING_CONFIG_KEY: to_dict(tokenizer.config), "state_dict": state, "hyper_parameters": {}}, path)
    return path


@pytest.mark.parametrize("make_config", [tiny_image, tiny_video])
@pytest.mark.parametrize("fmt", ["nar", "lightning"])
def test_the_config_reader_gives_the_loaders_config(make_config, fmt, tmp_path):
    """Start-up checks read a tokenizer's config without building it: the same config the full loader builds."""
    from nar.tokenizers.io import read_tokenizer_config

    tokenizer = VQTokenizer(make_config())
    path = (save_tokenizer(tokenizer, tmp_path / "tok.pt") if fmt == "nar"
            else _lightning_checkpoint(tokenizer, tmp_path / "last.ckpt"))
    assert read_tokenizer_config(path) == load_tokenizer(path).config == make_config()
    assert read_tokenizer_config(str(path), config=make_config()) == make_config()
    with pytest.raises(ConfigError, match="codebook_size"):  # a given config is checked, as the loader checks it
        read_tokenizer_config(path, config=make_config(codebook_size=64))
    assert read_tokenizer_config("vq-tiny-emoji") == load_tokenizer("vq-tiny-emoji").config


def test_the_config_reader_reads_an_official_checkpoint(tmp_path):
    """An official (LlamaGen) file has no config: read off its shapes, or the one given, as the loader does."""
    from nar.tokenizers import export_official_vq
    from nar.tokenizers.io import read_tokenizer_config

    path = tmp_path / "vq.pt"
    torch.save(export_official_vq(VQTokenizer(tiny_image(norm_groups=32, base_channels=32))), path)
    assert read_tokenizer_config(path) == load_tokenizer(path).config
    given = tiny_image(norm_groups=32, base_channels=32, image_size=32)
    assert read_tokenizer_config(path, config=given) == load_tokenizer(path, config=given).config == given


def test_the_config_reader_reads_the_conformance_checkpoint(conformance, tmp_path):
    from nar.tokenizers.io import read_tokenizer_config

    official = conformance["vq"]
    path = tmp_path / "fixture_vq.pt"
    torch.save(official["checkpoint"], path)
    for config in (None, official["config"]):
        assert read_tokenizer_config(path, config=config) == load_tokenizer(path, config=config).config


def test_the_config_reader_names_a_missing_or_damaged_file(tmp_path):
    import re

    from nar.tokenizers.io import read_tokenizer_config

    with pytest.raises(CheckpointError, match="not found.*missing.pt"):
        read_tokenizer_config(tmp_path / "missing.pt")
    path = save_tokenizer(VQTokenizer(tiny_image()), tmp_path / "tok.pt")
    path.write_bytes(path.read_bytes()[:200])  # cut short
    with pytest.raises(CheckpointError, match=f"cannot read.*{re.escape(str(path))}"):
        read_tokenizer_config(path)
    other = tmp_path / "generator_last.ckpt"
    torch.save({"state_dict": {"model.tok_embeddings.weight": torch.zeros(4, 2)}, "hyper_parameters": {}}, other)
    with pytest.raises(CheckpointError, match=re.escape(str(other))):
        read_tokenizer_config(other)


def test_the_codebook_check_at_start_builds_no_tokenizer(tmp_path, monkeypatch):
    """`nar train`'s start-up check reads the codebook size off the file's config, without building the model."""
    from nar.tokenizers import VQConfig
    from nar.workflows.preflight import tokenizer_config

    path = save_tokenizer(VQTokenizer(tiny_image()), tmp_path / "tok.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("a start-up check built the tokenizer")

    monkeypatch.setattr(VQTokenizer, "__init__", refuse)
    assert tokenizer_config(str(path)).codebook_size == tiny_image().codebook_size
    assert tokenizer_config("vq-tiny-emoji").codebook_size == VQConfig.from_name("vq-tiny-emoji").codebook_size
