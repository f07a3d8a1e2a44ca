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


#: The run directory's databases (the Optuna studies, the MLflow store).
DATABASES = ("optuna.db", "mlflow.db")


def stores_for_reading(run_dir: Path) -> Path:
    """Where to open the run directory's databases for reading: the run directory itself when they
    can be written, else a private copy of them (an archived study, a read-only share). SQLite
    writes even to read — schema checks, MLflow's migrations, re-pointing moved artifacts — so a
    read-only store is opened as a copy; its ``mlartifacts`` stay the original's. The copy goes
    when the process ends."""
    import atexit
    import os
    import shutil

    present = [run_dir / n for n in DATABASES if (run_dir / n).exists()]
    if os.access(run_dir, os.W_OK) and all(os.access(p, os.W_OK) for p in present):
        return run_dir
    copy = Path(tempfile.mkdtemp(prefix="cellsearch-read-only-"))
    atexit.register(shutil.rmtree, copy, True)
    for p in present:
        shutil.copy2(p, copy / p.name)
        os.chmod(copy / p.name, 0o600)
    if (run_dir / "mlartifacts").exists():
        (copy / "mlartifacts").symlink_to((run_dir / "mlartifacts").resolve(), target_is_directory=True)
    return copy


def is_copy(store: Path, run_dir: Path) -> bool:
    """Whether ``stores_for_reading`` gave a copy (the run directory is read-only)."""
    return Path(store).resolve() != Path(run_dir).resolve()
