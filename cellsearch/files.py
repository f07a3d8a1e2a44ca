"""Writing files safely: ``atomic_path`` (a temporary name, then one rename, so nothing is ever
half-written — the one place that pattern lives), strict JSON (``null``, never ``NaN``), the run
directory's lock, and checks of the user's input files before anything heavy is imported."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # NumPy scalars
        return strict(obj.item())
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (``strict``; anything else unknown as its ``str``)."""
    return json.dumps(strict(obj), indent=indent, default=str, allow_nan=False)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (its folder created) to write to inside the block; renamed
    over ``path`` in one step when the block ends, removed if it raises — readers see the old file
    or the whole new one, never part of it.

    Example:
        >>> with atomic_path(out) as tmp:          # doctest: +SKIP
        ...     frame.to_csv(tmp, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented strict JSON at ``path`` (folders created), replaced in one rename."""
    write_text(path, dumps(obj))
