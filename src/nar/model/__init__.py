"""The generator: plain ``nn.Module``s, no Lightning."""

from nar.model.config import PRESETS, NARConfig
from nar.model.nar import InferenceState, NARModel

__all__ = ["PRESETS", "InferenceState", "NARConfig", "NARModel"]
