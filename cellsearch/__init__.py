"""cellsearch: search recurrent architectures, choosing the cell variant per layer.

Heavy modules (torch, lightning, mlflow) load on first use, so ``import cellsearch`` and
``cellsearch --help`` stay instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CELLS": "cellsearch.cells",
    "Cell": "cellsearch.cells",
    "CellStack": "cellsearch.stack",
    "LayerSpec": "cellsearch.stack",
    "ModelSpec": "cellsearch.model",
    "build": "cellsearch.model",
    "tune": "cellsearch.search",
    "load": "cellsearch.predict",
    "explain": "cellsearch.explain",
    "read_dataset": "cellsearch.data",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cellsearch' has no attribute {name!r}")
