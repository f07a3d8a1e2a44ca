"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, column, option): message only, no traceback."""
