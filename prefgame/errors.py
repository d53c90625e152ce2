"""User-facing errors.

A :class:`PrefgameError` carries one line that says what went wrong, where, and how to fix it. The
CLI prints it without a traceback and exits non-zero; library users can catch it.
"""


class PrefgameError(Exception):
    """An error the user can cause and fix (bad path, bad config, bad data)."""


class ConfigError(PrefgameError):
    """A config file or override is invalid."""


class DataError(PrefgameError):
    """Input data is missing or malformed."""
