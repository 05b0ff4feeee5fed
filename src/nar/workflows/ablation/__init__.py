"""Ablation grids: generator variants trained and evaluated with everything else fixed (``nar ablate``)."""

from nar.workflows.ablation.config import (
           AblationConfig,
           BenchConfig,
           PrepareConfig,
           VariantConfig,
           load_ablation_config,
)
from nar.workflows.ablation.report import markdown_table, ordering_agreement, read_rows
from nar.workflows.ablation.runner import build_train_configs, fingerprint, run_ablation

__all__ = ["AblationConfig", "BenchConfig", "PrepareConfig", "VariantConfig", "build_train_configs", "fingerprint",
           "load_ablation_config", "markdown_table", "ordering_agreement", "read_rows", "run_ablation"]
