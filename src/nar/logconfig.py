"""Logging set-up of the ``nar`` command and of the worker processes it starts: one line per event."""

from __future__ import annotations

import logging
import warnings


class _DropNoise(logging.Filter):
    """Lightning's advertising and what it says about settings nobody chose."""

    NOISE = ("Tip:", "was configured so 100% of the batches", "`weights_only` was not set")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


def configure_logging(verbose: bool = False, lightning: bool = False) -> None:
    """One line per event: our format on the root logger, Lightning's loggers sent through it (``import
    lightning`` gives them a console handler of their own, which printed every line twice), known noise
    dropped."""
    if lightning:
        import lightning  # noqa: F401  (so that its handlers exist before they are removed)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    # The EMA copy is in eval mode on purpose; the pytree deprecation is Lightning's own.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
