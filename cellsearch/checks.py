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


def check_output(out: Path, inputs: tuple[Path, ...] = (), folders: tuple[Path, ...] = ()) -> None:
    """Refuse, with one line, an output file that would destroy what the command reads: one of its
    ``inputs``, a path inside one of its ``folders`` (a model bundle), or an existing folder."""
    from cellsearch.errors import UserError

    target = Path(out).resolve()
    if target.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name")
    for path in inputs:
        if Path(path).exists() and target == Path(path).resolve():
            raise UserError(f"--out {out}: is the input file {path}; write the output elsewhere")
    for folder in folders:
        if Path(folder).is_dir() and target.is_relative_to(Path(folder).resolve()):
            raise UserError(f"--out {out}: is inside the model bundle {folder}; write the output elsewhere")
