"""Reading sequence CSVs: the reader, detection, the fitted preprocessing, and one module per layout.

* ``reader``: Arrow's streaming CSV reader into NumPy columns (``read_csv``).
* ``detect``: the column roles and the layout (``detect``), by name or by the data.
* ``features``, ``sequences``, ``splits``, ``targets``: the pieces layouts build from — input
  encoding and scaling, grouping rows into padded sequences, train/val/test splits, target encoding.
* ``preprocessing``: the fitted ``Preprocessing``, saved as JSON, applied at prediction time.
* ``layouts``: ``LAYOUTS``, the registry of ``Layout`` implementations (long, wide, series).
* ``dataset``: ``read_dataset`` ties them together.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Names load on first use (PEP 562), so that ``cellsearch.data.options`` (what the CLI's option
# checks need) does not import pandas and pyarrow.
_WHERE = {"Dataset": "dataset", "inspect": "dataset", "read_dataset": "dataset", "LAYOUTS": "layouts",
          "Inputs": "layouts", "Layout": "layouts", "get_layout": "layouts", "register_layout": "layouts",
          "DataOptions": "options", "Preprocessing": "preprocessing", "Scaler": "preprocessing",
          "read_csv": "reader", "SplitTensors": "splits"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cellsearch.data' has no attribute {name!r}")
    value = getattr(import_module(f"cellsearch.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
