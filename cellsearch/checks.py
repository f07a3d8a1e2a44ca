"""Checks of the user's input files that run before anything heavy is imported, so that a typo in
a path is reported at once, in one line."""

from __future__ import annotations

import os
from pathlib import Path


def check_readable(path: Path, what: str = "") -> None:
    """Refuse, with one line, a data file that is missing, not a file, a symlink loop or unreadable —
    before anything heavy is imported."""
    from cellsearch.errors import UserError

    label = f"{what} {path}".strip()
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python's "Symlink loop"
        raise UserError(f"{label}: a symbolic link loop") from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise UserError(f"{label}: a symbolic link loop") from None
        raise UserError(f"{label}: no such file") from None
    if path.is_dir():
        raise UserError(f"{label}: is a folder, not a CSV file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{label}: not readable (permission denied)")
