"""Side work of generator training, run where rank matters."""

from nar.lightning.callbacks.decoding import FrontierDecodingCallback, condition_list
from nar.lightning.callbacks.metrics_file import MetricsFileCallback

__all__ = ["FrontierDecodingCallback", "MetricsFileCallback", "condition_list"]
