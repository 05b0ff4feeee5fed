"""Exceptions raised across the package; each names the offending file, key or value.

Exit codes of the ``nar`` command: an error that is the user's to fix (a bad key or value, a missing or
unreadable input file, a folder locked by another process) exits with :data:`EXIT_USAGE`; a failure at
run time (a full disk, a diverging loss, fewer samples than asked) with :data:`EXIT_RUNTIME`; a run that
saved a checkpoint and stopped on a signal with :data:`EXIT_INTERRUPTED`.
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_RUNTIME = 1
# A run stopped by SIGINT/SIGTERM after saving a resumable checkpoint (EX_TEMPFAIL: "try again"); schedulers
# such as SLURM can requeue on it.
EXIT_INTERRUPTED = 75


class NarError(Exception):
    """Base class of the package's own errors; ``exit_code`` is what ``nar`` exits with."""

    exit_code = EXIT_USAGE


class ConfigError(NarError, ValueError):
    """A configuration key is unknown or its value is invalid.

    ``key`` is the key's path relative to the config object that raised it (``"lr"`` inside
    ``OptimConfig``); the config loader prefixes the section path (``"optim.lr"``), so a dataclass never
    needs to know where it is nested.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key

    def __str__(self) -> str:
        return f"key '{self.key}': {self.message}" if self.key else self.message

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` put in front of its key path (or as the key when it has none)."""
        if not prefix:
            return self
        key = f"{prefix}.{self.key}" if self.key and not self.key.startswith("[") else f"{prefix}{self.key or ''}"
        return ConfigError(self.message, key=key)


class RuntimeFailure(NarError):
    """The run cannot go on (the input was fine): a full disk, a diverging loss, missing samples."""

    exit_code = EXIT_RUNTIME


class CheckpointError(NarError):
    """A checkpoint does not match the model it is loaded into."""


class DataError(NarError):
    """A data file or shard cannot be read."""


class StopAsked(Exception):  # noqa: N818 - a stop, not an error
    """Base of the exceptions that end a piece of work because SIGINT/SIGTERM asked it (a validation ended after a
    batch or a chunk), not because it failed: progress lines say "interrupted" for them."""


class RunInterrupted(NarError):
    """A run stopped on SIGINT/SIGTERM after saving a resumable checkpoint (the message names it)."""

    exit_code = EXIT_INTERRUPTED
