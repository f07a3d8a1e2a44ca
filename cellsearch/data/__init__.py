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

from cellsearch.data.dataset import Dataset, inspect, read_dataset
from cellsearch.data.layouts import LAYOUTS, Inputs, Layout, get_layout, register_layout
from cellsearch.data.options import DataOptions
from cellsearch.data.preprocessing import Preprocessing, Scaler
from cellsearch.data.reader import read_csv
from cellsearch.data.splits import SplitTensors

__all__ = ["LAYOUTS", "DataOptions", "Dataset", "Inputs", "Layout", "Preprocessing", "Scaler", "SplitTensors",
           "get_layout", "inspect", "read_csv", "read_dataset", "register_layout"]
