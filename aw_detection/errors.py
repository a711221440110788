"""Errors caused by the user's input (files, configs, data): shown as one message, no traceback."""

__all__ = ["UserError"]


class UserError(Exception):
    """A problem with the user's input; the message names the file/field and what to do."""
