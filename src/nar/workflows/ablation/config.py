"""``AblationConfig``: one base training config, a list of named generator variants, one shared budget.

An ablation YAML looks like::

    name: heads-emoji
    out: runs/ablations/heads-emoji
    base: [experiments/demo/emoji.yaml]        # TrainConfig YAMLs every variant starts from
    overrides: [trainer.max_steps=150]          # shared key=value overrides (budget, eval; not seeds or names)
    seeds: [0, 1, 2]                            # every variant trains once per seed
    prepare: {domain: emoji}                    # optional: embedded data -> tokenizer -> token shards, once
    variants:
      - {name: none, label: "no dimension heads", model: {head_sharing: shared, head_blocks: [0, 0]}}
      - {name: mixed, model: {}, paper_score: 3.06}

Everything but the ``model`` section of a variant is shared, so a row differs from another only in its
head configuration. Unknown keys (of the file, of a variant, of a variant's ``model``) fail at start-up
with a :class:`~nar.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nar.config import config_path, load_config
from nar.errors import ConfigError
from nar.model import NARConfig

DOMAINS = ("", "emoji", "atari")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class VariantConfig:
    """One row of the grid: a name (its run folder and CSV key) and its ``model.*`` overrides."""

    name: str = ""
    label: str = ""  # what the row means, for the table ("row head only", ...)
    model: dict[str, Any] = field(default_factory=dict)
    # The paper's FID for this configuration, when it reports one (Optional: OmegaConf reads no `X | None`).
    paper_score: Optional[float] = None  # noqa: UP045


@dataclass
class PrepareConfig:
    """Data and tokenizer shared by every variant, built once (``nar demo``'s steps) when ``domain`` is set."""

    domain: str = ""  # "" = the base config already points at token shards and a tokenizer
    data: str = "data/embedded"  # embedded shard folder (built when missing)
    tokenizer_dir: str = ""  # folder of tokenizer.pt ("" = <out>/tokenizer); reused when it exists
    smoke: bool = False  # tiny tokenizer budget and data (tests)
    tokenizer_steps: int | None = None  # the tokenizer's training steps (None: `nar demo`'s budget for the domain)


@dataclass
class BenchConfig:
    """Images/s of token generation with the fast sampler (no pixel decoding), on the trained weights."""

    enabled: bool = True
    # "random": a fresh copy of the variant's network with random heads (as `nar bench`), so that images/s is a
    # property of the configuration; "trained": the variant's EMA weights (on CPU the sampler is several times
    # slower with the near-zero heads of a short run, which would confound the comparison).
    weights: str = "random"
    batch: int = 16
    warmup: int = 1
    iters: int = 2


@dataclass
class AblationConfig:
    """A grid of generator variants trained and evaluated with everything else fixed."""

    name: str = "ablation"
    out: str = ""  # results folder ("" = runs/ablations/<name>)
    base: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    variants: list[VariantConfig] = field(default_factory=list)
    # Training seeds: every variant trains once per seed (trainer.seed, data.seed and eval.seed all set to it, so
    # `overrides` and the shared overrides may not set them), and results.md reports each variant's mean and 95 %
    # confidence interval over them.
    seeds: list[int] = field(default_factory=lambda: [0])
    # Runs trained at once, each in its own process with trainer.threads = cores / jobs (CPU grids; 1 under DDP).
    jobs: int = 1

    def __post_init__(self) -> None:
        if not self.variants:
            raise ConfigError("key 'variants': the grid is empty")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"key 'seeds': needs distinct seeds, got {list(self.seeds)}")
        if self.jobs < 1:
            raise ConfigError(f"key 'jobs': must be >= 1, got {self.jobs}")
        if self.prepare.domain not in DOMAINS:
            raise ConfigError(f"key 'prepare.domain': '{self.prepare.domain}' is not one of {DOMAINS}")
        if self.prepare.tokenizer_steps is not None and self.prepare.tokenizer_steps < 1:
            raise ConfigError(f"key 'prepare.tokenizer_steps': must be >= 1, got {self.prepare.tokenizer_steps}")
        if self.bench.weights not in ("random", "trained"):
            raise ConfigError(f"key 'bench.weights': '{self.bench.weights}' is not one of ('random', 'trained')")
        for key in ("batch", "iters"):
            if getattr(self.bench, key) < 1:
                raise ConfigError(f"key 'bench.{key}': must be >= 1, got {getattr(self.bench, key)}")
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"key 'overrides': entries must look like key=value, got {bad}")
        model_keys = {f.name for f in dataclasses.fields(NARConfig)}
        seen: set[str] = set()
        for i, v in enumerate(self.variants):
            where = f"variants[{i}]"
            if not _NAME.match(v.name):
                raise ConfigError(f"key '{where}.name': '{v.name}' must be a folder-safe name ([A-Za-z0-9_.-])")
            if v.name in seen:
                raise ConfigError(f"key '{where}.name': '{v.name}' appears twice")
            seen.add(v.name)
            unknown = sorted(set(v.model) - model_keys)
            if unknown:
                raise ConfigError(f"key '{where}.model.{unknown[0]}' ({v.name}): not a NARConfig field")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path("runs") / "ablations" / self.name)


def load_ablation_config(path: str | Path, overrides: Sequence[str] = ()) -> AblationConfig:
    """Schema defaults <- the YAML <- ``key=value`` overrides of the *ablation* keys (``out=...``).

    ``path`` may name a packaged grid (``ablations/heads_emoji.yaml``). ``base`` paths are resolved against
    the working directory first, then the YAML's folder, then the packaged experiment configs.
    """
    path = config_path(path)
    cfg = load_config(AblationConfig, [path], overrides)
    here = Path(path).resolve().parent
    cfg.base = [str(p if Path(p).is_file() else here / p if (here / p).is_file() else config_path(p)) for p in cfg.base]
    return cfg


def variant_overrides(variant: VariantConfig) -> list[str]:
    """The variant's ``model.*`` section as ``key=value`` strings (lists in YAML flow style)."""
    out = []
    for key, value in variant.model.items():
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        elif value is None:
            value = "null"
        out.append(f"model.{key}={value}")
    return out
