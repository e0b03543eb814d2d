"""The one exception the CLI prints as a single line with a hint instead of a traceback."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: one line plus a hint."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint
