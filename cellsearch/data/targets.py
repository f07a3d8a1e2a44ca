"""The target of whole sequences: one value per sequence (its encoding is the task's: ``Task.encode_target``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellsearch.data.sequences import py_scalar
from cellsearch.errors import UserError


def sequence_targets(df: pd.DataFrame, target: str, order: np.ndarray, starts: np.ndarray,
                      codes: np.ndarray, keys: np.ndarray, path: Path) -> pd.Series:
    """The one target value per sequence; refuses sequences whose target changes."""
    tgt = df[target].iloc[order].reset_index(drop=True)
    if tgt.isna().any():
        raise UserError(f"{path}: target column {target!r} has {int(tgt.isna().sum())} missing values")
    first = tgt.iloc[starts].reset_index(drop=True)
    differs = tgt.to_numpy() != first.to_numpy()[codes]
    if differs.any():
        k = int(np.flatnonzero(differs)[0])
        seq = py_scalar(keys[codes[k]])
        a, b = py_scalar(first.iloc[codes[k]]), py_scalar(tgt.iloc[k])
        raise UserError(f"{path}: sequence {seq!r} has more than one target value in {target!r} "
                        f"({a!r} and {b!r}, line {int(order[k]) + 2})")
    return first
