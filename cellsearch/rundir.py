"""The run directory: its lock, the paths stored relative to it, and whether it can be written.

Everything a search writes lives under one run directory, and every path stored inside it is
relative to it, so that the folder can be moved, copied or archived.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cellsearch.errors import UserError


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively: processes creating the same run directory's databases (the
    study storage's and MLflow's schemas, a new study, its experiment) take turns instead of racing."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def in_run_dir(root: Path | None, stored: str | None) -> str | None:
    """A path stored in a study (relative to its run directory, so that the folder can be moved or
    copied) as a usable path; older studies' paths (relative to where ``tune`` ran) are kept."""
    if not stored or root is None or Path(stored).is_absolute():
        return stored
    inside = Path(root) / stored
    return str(inside) if inside.exists() or not Path(stored).exists() else stored


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and prove it writable, or raise ``UserError`` in one line. The
    probe file has a name of its own: with a fixed name, a search starting beside another could
    find the other's probe already removed and take the run directory for unwritable."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"--run-dir {run_dir}: cannot write there ({exc.strerror or exc})") from None
