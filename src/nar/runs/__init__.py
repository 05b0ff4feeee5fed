"""Runs: their typed configurations and their folders, for generators and tokenizers alike.

This layer knows configs and files, not Lightning: ``nar sample`` reads a run's settings through it
without importing the training stack.
"""

from nar.runs.config import (
    DataConfig,
    EMAConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    TokenizerDataConfig,
    TokenizerRef,
    TokenizerRunConfig,
    TrainConfig,
    TrainerConfig,
)

__all__ = ["DataConfig", "EMAConfig", "EvalConfig", "OptimConfig", "RunConfig", "TokenizerDataConfig",
           "TokenizerRef", "TokenizerRunConfig", "TrainConfig", "TrainerConfig"]
