"""Writing files safely: ``atomic_path`` (a temporary name, then one rename, so nothing is ever
half-written — the one place that pattern lives) and strict JSON (``null``, never ``NaN``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
