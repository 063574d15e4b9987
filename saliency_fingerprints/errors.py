"""Exceptions that carry a one-line message meant for the user, not a traceback."""


class PipelineError(Exception):
    """Bad input or state: the message names the key or file and what was expected."""


class ConfigError(PipelineError):
    """A configuration value is invalid."""


class DataError(PipelineError):
    """An input file (dataset, store, archive) is missing, corrupt or of the wrong shape."""
