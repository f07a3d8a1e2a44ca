"""Small helpers on values that every layer of the package uses (a leaf module: imports nothing of ours)."""

from __future__ import annotations

from typing import Any


def py_scalar(v: Any) -> Any:
    """A NumPy scalar as the Python value (for messages and JSON keys)."""
    return v.item() if hasattr(v, "item") else v
