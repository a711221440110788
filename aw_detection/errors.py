"""Errors caused by the user's input (files, configs, data): shown as one message, no traceback."""

__all__ = ["UserError", "ConfigError"]


class UserError(Exception):
    """A problem with the user's input; the message names the file/field and what to do."""


class ConfigError(UserError, ValueError):
    """A config value the model cannot be built with (a ValueError for library callers)."""
