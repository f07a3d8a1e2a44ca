"""The series layout: one time series, or several by an id column → forecasting.

A window of ``window`` past steps predicts the next ``horizon`` values of the target. The target of
each series is normalised by its own statistics (``series_stats``: the training part's mean and
standard deviation, the same rule for a series first seen at prediction time); covariates by one
global scaler. Splits are by time: the last part of each series is validation, then test, and a
window belongs to the split of its forecast steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cellsearch.data.detect import Columns, Schema
from cellsearch.data.features import encode_features, fit_scaler, handle_missing
from cellsearch.data.layouts.base import Inputs, Layout, guess_target
from cellsearch.data.options import SPLITS, DataOptions
from cellsearch.data.preprocessing import Preprocessing, Scaler
from cellsearch.data.sequences import group_order, py_scalar
from cellsearch.data.splits import SplitTensors, split_from_column
from cellsearch.errors import UserError

SERIES_TARGET_NAMES = ("value", "y", "target", "sales", "demand", "load")


def default_window(lengths: np.ndarray, horizon: int) -> int:
    """A window that the data can afford: about a sixth of the median series, 4..48 steps, and
    short enough that the median series still yields training, validation and test windows."""
    med = float(np.median(lengths))
    w = max(4, 2 * horizon, int(round(med / 6)))
    cap = int(med - 3 * horizon)
    return max(2, min(48, w, max(2, cap)))


def series_stats(values: np.ndarray, codes: np.ndarray, rows: np.ndarray, n_series: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each series' ``values`` over the marked ``rows``.

    The one rule for a (near) constant series, used in training and prediction alike: its standard
    deviation becomes its mean's magnitude, at least 1, so its values scale to about ±1.
    """
    cnt = np.bincount(codes, weights=rows, minlength=n_series)
    s1 = np.bincount(codes, weights=np.where(rows, values, 0), minlength=n_series)
    s2 = np.bincount(codes, weights=np.where(rows, values * values, 0), minlength=n_series)
    mean = np.divide(s1, cnt, out=np.zeros(n_series), where=cnt > 0)
    var = np.divide(s2, cnt, out=np.ones(n_series), where=cnt > 0) - mean ** 2
    std = np.sqrt(np.maximum(var, 0))
    std = np.where(std > 1e-9 * np.maximum(1, np.abs(mean)), std, np.maximum(np.abs(mean), 1.0))
    return mean, std


def _time_splits(lengths: np.ndarray, codes: np.ndarray, pos: np.ndarray, horizon: int, opts: DataOptions
                 ) -> np.ndarray:
    """Each row's split by time: the last part of each series is validation, then test."""
    n_test = np.maximum(horizon, np.round(lengths * opts.test_size).astype(int)) if opts.test_size else 0 * lengths
    n_val = np.maximum(horizon, np.round(lengths * opts.val_size).astype(int)) if opts.val_size else 0 * lengths
    test_start = (lengths - n_test)[codes]
    val_start = (lengths - n_test - n_val)[codes]
    return np.where(pos >= test_start, "test", np.where(pos >= val_start, "val", "train")).astype(object)


def _windows(scaled: np.ndarray, row_split: np.ndarray, valid: np.ndarray, window: int, horizon: int,
             t_idx: int, keys: np.ndarray, codes: np.ndarray) -> dict[str, SplitTensors]:
    """Every window whose forecast starts at a ``valid`` row, in the split of its last forecast step
    (a window reaching into a later split is dropped)."""
    first_rows = np.flatnonzero(valid)
    rank = {"train": 0, "val": 1, "test": 2}
    rs = np.vectorize(rank.get, otypes=[np.int64])(row_split) if len(row_split) else np.zeros(0, int)
    first_rank = rs[first_rows]
    last_rank = rs[first_rows + horizon - 1]
    keep = first_rank == last_rank
    first_rows = first_rows[keep]
    win_split = np.array(SPLITS, dtype=object)[last_rank[keep]]
    x = scaled[first_rows[:, None] + np.arange(-window, 0)[None, :]]
    y = scaled[first_rows[:, None] + np.arange(horizon)[None, :], t_idx]
    win_keys = keys[codes[first_rows]]
    splits = {}
    for s in SPLITS:
        m = win_split == s
        splits[s] = SplitTensors(x[m], np.full(int(m.sum()), window, dtype=np.int64), y[m], win_keys[m])
    return splits


class SeriesLayout(Layout):
    name: ClassVar[str] = "series"
    tasks: ClassVar[tuple[str, ...]] = ("forecasting",)
    priority: ClassVar[int] = 100  # the fallback: any file with a numeric column is a series
    target_names: ClassVar[tuple[str, ...]] = SERIES_TARGET_NAMES

    def recognises(self, df: pd.DataFrame, found: Columns, opts: DataOptions) -> bool:
        return True

    def schema(self, df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path,
               warnings: list[str]) -> Schema:
        target = guess_target(df, found, self.target_names, path, warnings, numeric_only=True)
        features = [c for c in found.rest(df) if c != target]
        return Schema(self.name, "forecasting", target, found.id_col, found.time_col, found.split_col,
                      [target, *features])

    def build(self, df: pd.DataFrame, schema: Schema, opts: DataOptions, path: Path, warnings: list[str]
              ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
        order, codes, starts, keys = group_order(df, schema.id_col, schema.time_col, path)
        sorted_df = df.iloc[order].reset_index(drop=True)
        lengths = np.diff(np.r_[starts, len(codes)])
        horizon = opts.horizon or 1
        window = opts.window or default_window(lengths, horizon)
        tgt = sorted_df[schema.target].to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(tgt).all() and opts.fill is None:
            raise UserError(f"{path}: target column {schema.target!r} has {int((~np.isfinite(tgt)).sum())} "
                            "missing or infinite values; pass --fill ffill or --fill zero")
        short = lengths < window + horizon
        if short.all():
            k = int(np.argmax(short))
            raise UserError(f"{path}: series {py_scalar(keys[k])!r} has {int(lengths[k])} rows, shorter than "
                            f"window {window} + horizon {horizon}; use a smaller --window or --horizon")
        if short.any():
            warnings.append(f"{int(short.sum())} series shorter than window {window} + horizon {horizon} "
                            f"skipped: {', '.join(str(py_scalar(k)) for k in keys[short][:5])}"
                            f"{' ...' if short.sum() > 5 else ''}")
        pos = np.arange(len(codes)) - starts[codes]
        row_split = (split_from_column(sorted_df, schema.split_col, path) if schema.split_col
                     else _time_splits(lengths, codes, pos, horizon, opts))
        train_rows = (row_split == "train") & ~short[codes]
        if not train_rows.any():
            raise UserError(f"{path}: no training rows left after the time split")
        values, names, cats = encode_features(sorted_df, schema.features, train_rows, path)
        values = handle_missing(values, names, codes, starts, opts.fill, path)
        t_idx = names.index(schema.target)
        s_mean, s_std = series_stats(values[:, t_idx].astype(np.float64), codes, train_rows, len(starts))
        mean, std = fit_scaler(values, train_rows)
        mean[t_idx], std[t_idx] = 0.0, 1.0
        scaled = _scale(values, mean, std, t_idx, s_mean[codes], s_std[codes])
        valid = (pos >= window) & (pos + horizon <= lengths[codes]) & ~short[codes]
        splits = _windows(scaled, row_split, valid, window, horizon, t_idx, keys, codes)
        if len(splits["train"]) == 0:
            raise UserError(f"{path}: no training window fits (window {window}, horizon {horizon}); "
                            "use a smaller --window or --horizon")
        stats = {str(py_scalar(k)): [float(m_), float(s_)] for k, m_, s_ in zip(keys, s_mean, s_std)}
        layout_data = {"window": window, "horizon": horizon, "target_index": t_idx, "series_stats": stats,
                       "n_series": int(len(starts) - short.sum())}
        return splits, {"inputs": names, "categories": cats, "scaler": Scaler(mean.tolist(), std.tolist()),
                        "layout_data": layout_data}

    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        """The last ``window`` rows of each series; the target scaled by that series' statistics (those
        of training, or for a series unseen in training, of its own history by the same rule)."""
        order, codes, starts, keys = group_order(df, prep.id_col, prep.time_col, path)
        lengths = np.diff(np.r_[starts, len(codes)])
        values, _, _ = encode_features(df, prep.features, np.ones(len(df), dtype=bool), path,
                                       categories=prep.categories)
        values = handle_missing(values[order], prep.inputs, codes, starts, prep.fill, path)
        window, t_idx = int(prep.layout_data["window"]), int(prep.layout_data["target_index"])
        short = lengths < window
        if short.any():
            k = int(np.argmax(short))
            raise UserError(f"{path}: series {py_scalar(keys[k])!r} has {int(lengths[k])} rows; the model needs "
                            f"the last {window}")
        tv = values[:, t_idx].astype(np.float64)
        s_mean, s_std = series_stats(tv, codes, np.ones(len(tv), dtype=bool), len(starts))
        known = prep.layout_data["series_stats"]
        for i, key in enumerate(keys):  # one entry per series, not per row
            s_mean[i], s_std[i] = known.get(str(py_scalar(key)), (s_mean[i], s_std[i]))
        mean, std = prep.scaler.arrays()
        scaled = _scale(values, mean, std, t_idx, s_mean[codes], s_std[codes])
        idx = (starts + lengths)[:, None] + np.arange(-window, 0)[None, :]
        return Inputs(scaled[idx], np.full(len(starts), window, dtype=np.int64), keys, scale=(s_mean, s_std))

    def input_columns(self, prep: Preprocessing) -> list[str]:
        return list(prep.features)  # the target is an input too

    def example(self, df: pd.DataFrame, prep: Preprocessing) -> pd.DataFrame:
        if prep.id_col:
            df = df[df[prep.id_col].isin(df[prep.id_col].drop_duplicates().head(1))]
        return df.tail(int(prep.layout_data["window"]) + 2).reset_index(drop=True)

    def n_outputs(self, prep: Preprocessing) -> int:
        return int(prep.layout_data["horizon"])

    def summary(self, prep: Preprocessing) -> dict[str, Any]:
        d = prep.layout_data
        return {"window": d["window"], "horizon": d["horizon"], "n_series": d["n_series"]}

    def split_source(self, schema: Schema) -> str:
        return "by time (last part of each series)"


def _scale(values: np.ndarray, mean: np.ndarray, std: np.ndarray, t_idx: int, row_mean: np.ndarray,
           row_std: np.ndarray) -> np.ndarray:
    """Covariates by the global scaler, the target column by its series' statistics (per row)."""
    scaled = (values - mean) / std
    scaled[:, t_idx] = (values[:, t_idx].astype(np.float64) - row_mean) / row_std
    return scaled.astype(np.float32)
