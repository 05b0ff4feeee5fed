"""Exceptions raised across the package; each names the offending file, key or value."""


class NarError(Exception):
    """Base class of the package's own errors."""


class ConfigError(NarError, ValueError):
    """A configuration key is unknown or its value is invalid."""


class CheckpointError(NarError):
    """A checkpoint does not match the model it is loaded into."""


class DataError(NarError):
    """A data file or shard cannot be read."""
