"""``NARConfig``: every shape and switch of the generator, validated, with a preset registry."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from nar.errors import ConfigError
from nar.geometry import GridGeometry

AXIS_NAMES = {1: ("col",), 2: ("row", "col"), 3: ("time", "row", "col")}


@dataclass
class NARConfig:
    """Shapes and switches of :class:`~nar.model.NARModel`.

    The defaults are the official image layout: the column head reads the trunk, the row head reads
    one extra block stacked on it (``head_blocks=[1, 0]``, ``head_layout='chain'``).
    """

    # A preset's name (PRESETS): in a YAML, ``model: {preset: NAR-L}`` takes NAR-L's fields as defaults and
    # the section's other keys on top (nar.config.load_config). Informational once loaded.
    preset: str = field(default="", compare=False)
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    n_kv_head: int | None = None
    vocab_size: int = 16384
    grid: list[int] = field(default_factory=lambda: [16, 16])
    # Conditioning: "class" (one token, table of num_classes + 1 rows, last = null) or "caption".
    condition: str = "class"
    num_classes: int = 1000
    caption_dim: int = 2048
    caption_len: int = 120
    # "nar": next-neighbour prediction; "raster": the LlamaGen-style next-token baseline; "par": PAR (Wang et
    # al.), the first cell of each of `regions` regions one at a time, then one cell of every region per pass.
    mode: str = "nar"
    # mode "par" only: regions along each axis, each dividing its axis ([2, 2]: PAR-4x, [4, 4]: PAR-16x,
    # [1, 2, 2]: a 4x split of every video frame). PAR adds regions - 1 learnable transition tokens.
    regions: list[int] | None = None
    # Extra transformer blocks in front of each axis head; None = the official layout of the grid and mode
    # (see blocks_per_axis). Left None rather than filled in, so that changing grid or mode re-derives it.
    head_blocks: list[int] | None = None
    # "chain": the heads tap one stack of extra blocks at their depth; "parallel": one branch each.
    head_layout: str = "chain"
    # "per_axis": one head per axis; "shared": one head (axis `shared_axis`'s) predicts every neighbour.
    head_sharing: str = "per_axis"
    shared_axis: int = -1
    # Which parents predict a cell: "all" (the mean over every parent, official) or one axis name
    # ("row", "col", "time"): only the parent along that axis when the cell has one (ablations).
    parents: str = "all"
    # How the parents' predictions combine: "logits" (mean of logits) or "probs" (mean of probabilities).
    mixing: str = "logits"
    # "rope": axial rotary embeddings (official 2-D layout for images); "absolute": learned table.
    position: str = "rope"
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    token_dropout: float = 0.1
    attn_dropout: float = 0.0
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    drop_path: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        self.grid = _sizes("grid", self.grid)
        if self.head_blocks is not None:
            self.head_blocks = _sizes("head_blocks", self.head_blocks)  # [1.9, 0] is not cut to [1, 0]
        if not 1 <= len(self.grid) <= 3 or any(g < 1 for g in self.grid):
            raise ConfigError(f"expected 1 to 3 positive sizes, got {self.grid}", key="grid")
        for key in ("dim", "n_layer", "n_head", "vocab_size", "num_classes", "caption_dim", "caption_len",
                    "multiple_of"):
            if getattr(self, key) < 1:
                raise ConfigError(f"must be positive, got {getattr(self, key)}", key=key)
        if self.dim % self.n_head:
            raise ConfigError(f"{self.dim} is not divisible by n_head={self.n_head}", key="dim")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ConfigError(f"{self.n_kv_head} must divide n_head={self.n_head}", key="n_kv_head")
        if self.head_dim % 2:
            raise ConfigError(f"head dim {self.dim}/{self.n_head} = {self.head_dim} must be even for rotary embeddings",
                              key="n_head")
        if self.position == "rope" and self.head_dim // 2 < len(self.grid):
            raise ConfigError(f"head dim {self.head_dim} is too small to rotate {len(self.grid)} axes", key="n_head")
        _choice("condition", self.condition, ("class", "caption"))
        _choice("mode", self.mode, ("nar", "raster", "par"))
        try:  # the geometry is the one judge of a decoding
            _, regions = GridGeometry(self.grid).decoding(self.mode, self.regions)
        except ConfigError as err:
            raise ConfigError(err.message, key="regions") from None
        self.regions = list(regions) if regions is not None else None
        _choice("head_layout", self.head_layout, ("chain", "parallel"))
        _choice("head_sharing", self.head_sharing, ("per_axis", "shared"))
        _choice("mixing", self.mixing, ("logits", "probs"))
        _choice("position", self.position, ("rope", "absolute"))
        k = len(self.grid)
        blocks = self.blocks_per_axis
        expected = k if self.mode == "nar" else 1
        if len(blocks) != expected:
            raise ConfigError(f"expected {expected} entries for mode={self.mode} and grid {self.grid}, "
                              f"got {self.head_blocks}", key="head_blocks")
        if any(b < 0 for b in blocks):
            raise ConfigError(f"counts must be >= 0, got {self.head_blocks}", key="head_blocks")
        if not -k <= self.shared_axis < k:
            raise ConfigError(f"{self.shared_axis} is not an axis of grid {self.grid}", key="shared_axis")
        if self.head_sharing == "shared" and not -expected <= self.shared_axis < expected:
            raise ConfigError(f"{self.shared_axis}: mode={self.mode} has one head, so a shared head is head 0 (or -1)",
                              key="shared_axis")
        allowed = ("all", *self.axis_names) if self.mode == "nar" else ("all",)
        _choice("parents", self.parents, allowed)
        for key in ("token_dropout", "attn_dropout", "resid_dropout", "ffn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"must be in [0, 1), got {getattr(self, key)}", key=key)
        # Both run without error and give NaN logits: rope_base <= 0 makes the rotary angles inf/NaN; with
        # norm_eps <= 0 an all-zero row (a zero-padded caption through the bias-free projection) is 0/0.
        for key in ("rope_base", "norm_eps"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"must be > 0, got {getattr(self, key)}", key=key)
        if (self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0) or self.ffn_hidden < 1:
            raise ConfigError(f"{self.ffn_dim_multiplier} leaves no feed-forward units at dim={self.dim}; "
                              "must be > 0 and large enough for one", key="ffn_dim_multiplier")
        if not self.initializer_range >= 0:  # the std of the initial weights
            raise ConfigError(f"must be >= 0, got {self.initializer_range}", key="initializer_range")
        if isinstance(self.shared_axis, bool):
            raise ConfigError(f"expected an axis index, got {self.shared_axis}", key="shared_axis")

    # ---------------------------------------------------------------- derived shapes
    @property
    def blocks_per_axis(self) -> list[int]:
        """Extra blocks in front of each axis head: ``head_blocks``, or the official layout when unset
        (column head on the trunk, each earlier axis one block deeper, a chain; raster: one head on the trunk)."""
        if self.head_blocks is not None:
            return [int(b) for b in self.head_blocks]
        k = len(self.grid)
        return [k - 1 - i for i in range(k)] if self.mode == "nar" else [0]

    @property
    def parent_axis(self) -> int | None:
        """Index of the only predicting axis (``parents`` names one), or None for every parent."""
        return None if self.parents == "all" else self.axis_names.index(self.parents)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def num_cond_tokens(self) -> int:
        return 1 if self.condition == "class" else self.caption_len

    @property
    def num_cells(self) -> int:
        return math.prod(self.grid)

    @property
    def num_transition_tokens(self) -> int:
        """PAR's learnable transition tokens (``prod(regions) - 1`` for ``par``, else 0), fed after the grid."""
        return len(GridGeometry(self.grid).token_cells(self.mode, regions=self.regions)) - self.num_cells

    @property
    def seq_len(self) -> int:
        """Tokens of the training sequence: condition, grid, transition tokens."""
        return self.num_cond_tokens + self.num_cells + self.num_transition_tokens

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @property
    def axis_names(self) -> tuple[str, ...]:
        return AXIS_NAMES[len(self.grid)] if self.mode == "nar" else ("next",)

    @classmethod
    def check_field_names(cls, keys: Any) -> None:
        """Raise :class:`ConfigError` naming the first of ``keys`` that is not a field (a misspelt override)."""
        known = {f.name for f in fields(cls)}
        for key in keys:
            if key not in known:
                raise ConfigError(f"not a NARConfig field; known: {', '.join(sorted(known))}", key=key)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> NARConfig:
        """A preset by name (``NAR-B`` … ``NAR-XXL``, ``NAR-tiny``, ``bench-cpu``) with overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
        base = PRESETS[name]
        cls.check_field_names(overrides)
        for key, value in overrides.items():
            default = getattr(base, key)
            if value is None or default is None:
                continue
            ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
            if not ok or (isinstance(value, bool) and not isinstance(default, bool)):
                raise ConfigError(f"expected {type(default).__name__} like {default!r}, got {value!r}", key=key)
        return replace(base, preset=name, **overrides)

    @classmethod
    def preset_fields(cls, name: str) -> dict[str, Any]:
        """Preset ``name`` as a plain dict, the defaults of a config section saying ``preset: name``."""
        return asdict(cls.from_name(name))


def _sizes(key: str, value: Any) -> list[int]:
    """``value`` as a list of ints: a sequence of ints (a tuple, a ``torch.Size``, a YAML list) and nothing
    else, so that ``"16"`` is not read as ``[1, 6]`` nor ``4.7`` cut to 4. A 1-D numpy array or tensor is
    read as its list."""
    if getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"expected a list of sizes like [16, 16], got {value!r}", key=key)
    try:
        if any(isinstance(v, bool) for v in value):
            raise TypeError
        return [operator.index(v) for v in value]
    except TypeError:
        raise ConfigError(f"expected whole numbers, got {list(value)!r}", key=key) from None


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"'{value}' is not one of {allowed}", key=key)


# The paper's sizes (ImageNet 256 px, VQ-16 → 16×16 tokens, vocabulary 16384, 1000 classes).
PRESETS: dict[str, NARConfig] = {
    "NAR-B": NARConfig(dim=768, n_layer=12, n_head=12),
    "NAR-M": NARConfig(dim=1024, n_layer=18, n_head=16),
    "NAR-L": NARConfig(dim=1024, n_layer=24, n_head=16),
    "NAR-XL": NARConfig(dim=1280, n_layer=36, n_head=20),
    "NAR-XXL": NARConfig(dim=1536, n_layer=48, n_head=24),
    # Tests: the conformance fixture's shape.
    "NAR-tiny": NARConfig(dim=64, n_layer=2, n_head=4, vocab_size=64, grid=[4, 4], num_classes=10,
                          token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0),
    # The CPU sampling benchmark: small trunk, 16×16 grid.
    "bench-cpu": NARConfig(dim=256, n_layer=4, n_head=4, vocab_size=4096, grid=[16, 16], num_classes=10,
                           token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0),
}
