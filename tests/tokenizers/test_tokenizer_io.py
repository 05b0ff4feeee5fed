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
