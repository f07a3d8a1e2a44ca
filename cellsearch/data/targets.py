"""The target of whole sequences: one value per sequence, encoded (class indices or standardised values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.detect import is_numeric
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


def encode_target(first: pd.Series, task: str, train: np.ndarray, path: Path, target: str
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Class indices (classification) or values standardised by the training sequences' mean and
    standard deviation; returns them with the ``Preprocessing`` fields that undo the encoding."""
    if task == "classification":
        labels = first.astype(str).to_numpy() if not is_numeric(first) else first.to_numpy()
        classes = np.unique(labels)
        if len(classes) < 2:
            raise UserError(f"{path}: target {target!r} has only one class ({py_scalar(classes[0])!r}); "
                            "classification needs at least two")
        y = np.searchsorted(classes, labels).astype(np.int64)
        counts = {str(py_scalar(c)): int((labels == c).sum()) for c in classes}
        return y, {"classes": [py_scalar(c) for c in classes], "class_counts": counts}
    v = first.to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        raise UserError(f"{path}: target {target!r} has non-finite values")
    mean, std = float(v[train].mean()), float(v[train].std())
    if std < 1e-12:
        raise UserError(f"{path}: target {target!r} is constant; nothing to learn")
    return ((v - mean) / std).astype(np.float32), {"target_mean": mean, "target_std": std}
