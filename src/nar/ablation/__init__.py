"""Ablation grids: generator variants trained and evaluated with everything else fixed (``nar ablate``)."""

from nar.ablation.config import (
           AblationConfig,
           BenchConfig,
           PrepareConfig,
           VariantConfig,
           load_ablation_config,
)
from nar.ablation.report import markdown_table, ordering_agreement, read_rows
from nar.ablation.runner import build_train_configs, fingerprint, run_ablation

__all__ = ["AblationConfig", "BenchConfig", "PrepareConfig", "VariantConfig", "build_train_configs", "fingerprint",
           "load_ablation_config", "markdown_table", "ordering_agreement", "read_rows", "run_ablation"]
