"""The generator: plain ``nn.Module``s, no Lightning."""

from nar.model.config import PRESETS, NARConfig
from nar.model.io import load_generator, load_weights_into, stored_run_config
from nar.model.nar import InferenceState, NARModel

__all__ = ["PRESETS", "InferenceState", "NARConfig", "NARModel", "load_generator", "load_weights_into",
           "stored_run_config"]
