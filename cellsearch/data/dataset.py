"""``read_dataset``: read, detect, validate and tensorise a sequence CSV in any registered layout."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.detect import check_stray_cells
from cellsearch.data.layouts import detect, get_layout
from cellsearch.data.options import SPLITS, DataOptions
from cellsearch.data.preprocessing import Preprocessing
from cellsearch.data.reader import read_csv
from cellsearch.data.splits import SplitTensors


@dataclass
class Dataset:
    """What ``read_dataset`` returns: tensors per split, the fitted preprocessing and a summary."""

    splits: dict[str, SplitTensors]
    preprocessing: Preprocessing
    info: dict[str, Any]

    @property
    def task(self) -> str:
        return self.preprocessing.task

    @property
    def n_features(self) -> int:
        return len(self.preprocessing.inputs)

    @property
    def n_outputs(self) -> int:
        """Classes for classification, 1 for regression, the horizon for forecasting."""
        return get_layout(self.preprocessing.layout).n_outputs(self.preprocessing)


def read_dataset(path: str | Path, options: DataOptions | None = None, *, frame: pd.DataFrame | None = None,
                 **overrides: Any) -> Dataset:
    """Read, validate and tensorise a sequence CSV.

    Args:
        path: the CSV file.
        options: how to read it (``DataOptions``); every field left ``None`` is detected.
        **overrides: fields of ``DataOptions`` (``layout``, ``target``, ``id_col``, ``time_col``,
            ``task``, ``window``, ``horizon``, ``fill``, ``seed``, ``val_size``, ``test_size``) that
            replace those of ``options``; ``None`` values are ignored.
        frame: the file as ``read_csv`` already read it (left unchanged), so that a caller that also
            needs the raw rows reads the file once; ``path`` still names it in messages.

    Raises:
        UserError: on any problem with the file, with one line naming it.

    Example:
        >>> ds = read_dataset("examples/digits.csv")          # doctest: +SKIP
        >>> ds.info["layout"], ds.task, len(ds.splits["train"])  # doctest: +SKIP
        ('long', 'classification', 1257)
    """
    base = asdict(options) if options is not None else {}
    opts = DataOptions(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
    opts.validate()
    if opts.layout is not None:
        get_layout(opts.layout)  # an unknown --layout is refused before the file is read
    path = Path(path)
    if frame is not None:
        df = frame.copy()
    else:
        df = read_csv(path, keys=(opts.id_col, opts.time_col), text=(opts.id_col, opts.target))
    n_rows = len(df)
    schema, warnings = detect(df, opts, path)
    roles = {schema.target, schema.id_col, schema.time_col, schema.split_col}
    check_stray_cells(df, [c for c in df.columns if c not in roles], path)
    layout = get_layout(schema.layout)
    splits, fitted = layout.build(df, schema, opts, path, warnings)
    if len(splits["val"]) == 0 and opts.val_size > 0:
        warnings.append("the validation split is empty; scores will use the training split")
    prep = Preprocessing(layout=schema.layout, task=schema.task, target=schema.target, id_col=schema.id_col,
                         time_col=schema.time_col, features=schema.features, split_col=schema.split_col,
                         options=asdict(opts), **fitted)
    all_lengths = np.concatenate([s.lengths for s in splits.values()])
    info = {
        "file": str(path),
        "layout": schema.layout,
        "task": schema.task,
        "target": schema.target,
        "id_col": schema.id_col,
        "time_col": schema.time_col,
        "features": schema.features,
        "inputs": prep.inputs,
        "n_rows": n_rows,
        "n_sequences": int(len(all_lengths)),
        "splits": {s: len(splits[s]) for s in SPLITS},
        "length": {"min": int(all_lengths.min()), "median": float(np.median(all_lengths)),
                   "max": int(all_lengths.max())},
        "split_source": f"column {schema.split_col!r}" if schema.split_col else layout.split_source(schema),
        "warnings": warnings,
    }
    if prep.class_counts is not None:
        info["classes"] = prep.class_counts
    info.update(layout.summary(prep))
    return Dataset(splits=splits, preprocessing=prep, info=info)


def inspect(path: str | Path, options: DataOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """What cellsearch understood of a file (the ``cellsearch inspect --json`` document)."""
    return read_dataset(path, options, **overrides).info
