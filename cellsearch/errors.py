"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, column, option): message only, no traceback."""


class UnsupportedFormatError(Exception):
    """The model holds something this format cannot express; the message says which member. The
    bundle is written without that format's file, and export says so in one line."""
