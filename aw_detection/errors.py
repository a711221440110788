"""Errors caused by the user's input (files, configs, data): shown as one message, no traceback."""

__all__ = ["UserError", "ConfigError", "few"]


class UserError(Exception):
    """A problem with the user's input; the message names the file/field and what to do."""


class ConfigError(UserError, ValueError):
    """A config value the model cannot be built with (a ValueError for library callers)."""


def few(items, n=5):
    """The first ``n`` items for a message: "a, b, c and 7 more"."""
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")
