"""The series layout: one time series, or several by an id column → forecasting.

A window of up to ``window`` past steps predicts the next ``horizon`` values of the target.

* **Scaling per input window.** Each window is scaled by statistics of its own past values: its last
  value is subtracted and the result divided by the window's mean absolute step (``window_scale``).
  The model predicts the next values in those units and the forecast is mapped back with the same
  two numbers, so no series ever gets identity statistics and a series unseen in training is
  forecast from its own history. Covariates (other numeric columns) are past inputs per step,
  standardised by one global scaler fitted on the training rows. The last input channel is the
  window's level (``level_channel``), which the scaling takes out of the target channel: with it a
  statistical member adjusts a season that grows with the series by ratio. The networks do not read
  it (``cellsearch.data.encoders.unread``).
* **Every series counts.** Windows have variable length: a series shorter than the window trains
  and forecasts on what it has — training needs ``horizon + 1`` points (one input, ``horizon``
  targets), forecasting needs 1.
* **Time splits that fit short series.** The last part of each series (``test_size``, at least one
  horizon) is test and the part before it validation; a series too short for all parts gives up
  validation, then test, and still trains. A window belongs to the split of its forecast steps.
* **MASE.** Each validation/test window carries the weight that turns its scaled absolute error into
  its MASE: its scale over its series' in-sample mean absolute seasonal difference (``season``:
  ``--season``, else from the time column's dates).
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


def default_window(lengths: np.ndarray, horizon: int, season: int = 1) -> int:
    """Three horizons, at least 8 steps and, where the data has a season, at least three seasons:
    what the classical decomposition of theta and the damped trend needs to take the season out
    (``cellsearch.tasks.forecasting.seasonal_indices``), and enough for a network to see it repeat.
    At most 96 steps, or a season plus a step where a season is longer (a window then still sees the
    value a season back); bounded by the typical (median) series less its horizon: short series
    simply use the shorter windows they have. A short horizon on monthly data (6: 18 steps) used to
    leave the statistical members no season to adjust: on the monthly panel at horizon 6, theta's
    MASE 1.253 on 18 steps against 0.741 on 36 (docs/benchmarks.md)."""
    med = float(np.median(lengths))
    want = max(3 * horizon, 8, 3 * season if season > 1 else 0)
    return int(max(1, min(want, max(96, season + 1), med - horizon)))


def detect_season(df: pd.DataFrame, time_col: str | None) -> int:
    """The season length from the time column's dates: 12 monthly, 4 quarterly, 7 daily, 52 weekly,
    24 hourly; 1 (no season) for anything else, numeric time steps included."""
    if not time_col or pd.api.types.is_numeric_dtype(df[time_col]):
        return 1
    t = pd.to_datetime(df[time_col], errors="coerce", format="mixed").dropna().drop_duplicates().sort_values()
    if len(t) < 3:
        return 1
    days = float(np.median(np.diff(t.to_numpy()).astype("timedelta64[s]").astype(np.int64))) / 86400
    for lo, hi, season in ((0.03, 0.05, 24), (0.9, 1.1, 7), (6.5, 7.5, 52), (27, 32, 12), (88, 93, 4)):
        if lo <= days <= hi:
            return season
    return 1


def window_scale(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window (rows of ``values``, the first ``lengths`` real): (last value, mean absolute step).

    A window of one point, or a flat one, is scaled by its last value's magnitude instead (at
    least 1), so a scale is never zero and never the identity for a series far from 0.
    """
    n, w = values.shape
    last = values[np.arange(n), lengths - 1]
    steps = np.abs(np.diff(values, axis=1))
    real = np.arange(w - 1)[None, :] < (lengths - 1)[:, None]
    mean_step = np.where(real, steps, 0).sum(axis=1) / np.maximum(lengths - 1, 1)
    fallback = np.maximum(np.abs(last), 1.0)
    ok = (lengths > 1) & (mean_step > 1e-9 * fallback)
    return last, np.where(ok, mean_step, fallback)


def mase_scale(values: np.ndarray, codes: np.ndarray, rows: np.ndarray, starts: np.ndarray, season: int
               ) -> np.ndarray:
    """Each series' in-sample mean absolute seasonal difference over its marked (training) rows —
    the MASE denominator; the lag-1 difference where a series is shorter than a season. A series
    whose history is constant has none: it gets its mean magnitude, at least 1 (as a flat window's
    own scale, ``window_scale``), so that its windows' errors count like the others' instead of
    being divided by almost nothing (``flat_series`` names them)."""
    n_series = len(starts)
    pos = np.arange(len(values)) - starts[codes]
    out = np.zeros(n_series)
    for lag in (season, 1):
        ok = rows & (pos >= lag)
        ok[ok] &= rows[np.flatnonzero(ok) - lag]
        idx = np.flatnonzero(ok)
        diff = np.abs(values[idx] - values[idx - lag])
        cnt = np.bincount(codes[idx], minlength=n_series)
        mean = np.divide(np.bincount(codes[idx], weights=diff, minlength=n_series), cnt,
                         out=np.zeros(n_series), where=cnt > 0)
        out = np.where((out <= 0) & (mean > 0), mean, out)
    mag = np.bincount(codes, weights=np.abs(values), minlength=n_series) / np.maximum(
        np.bincount(codes, minlength=n_series), 1)
    return np.where(out > 0, out, np.maximum(mag, 1.0))


def flat_series(values: np.ndarray, codes: np.ndarray, rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Which series have a constant history over their marked (training) rows."""
    n_series = len(starts)
    idx = np.flatnonzero(rows)
    hi = np.full(n_series, -np.inf)
    lo = np.full(n_series, np.inf)
    np.maximum.at(hi, codes[idx], values[idx])
    np.minimum.at(lo, codes[idx], values[idx])
    return np.isfinite(hi) & (hi - lo <= 0)


def _time_splits(lengths: np.ndarray, codes: np.ndarray, pos: np.ndarray, horizon: int, opts: DataOptions
                 ) -> np.ndarray:
    """Each row's split by time: the last part of each series is test, the part before validation;
    a series too short for training (``horizon + 1`` points) plus both keeps only what it can."""
    from cellsearch.data.options import AUTO_TEST_SHARE

    # independent units of a default test split: whole horizons at the ends of the series
    units = int((np.maximum(horizon, np.round(lengths * AUTO_TEST_SHARE)) // max(horizon, 1)).sum())
    share = opts.test_share(units)
    n_test = np.maximum(horizon, np.round(lengths * share).astype(int)) if share else 0 * lengths
    n_val = np.maximum(horizon, np.round(lengths * opts.val_size).astype(int)) if opts.val_size else 0 * lengths
    need = horizon + 1
    n_val = np.where(lengths - n_test - n_val >= need, n_val, 0)
    n_test = np.where(lengths - n_test - n_val >= need, n_test, 0)
    test_start = (lengths - n_test)[codes]
    val_start = (lengths - n_test - n_val)[codes]
    return np.where(pos >= test_start, "test", np.where(pos >= val_start, "val", "train")).astype(object)


def level_channel(last: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each window's level channel: ``last / scale``, the window's last value in units of its scale,
    which the window scaling takes out of the target channel. Added to the scaled values it gives the
    series' own values over the scale, so a statistical member can adjust a season by ratio
    (``cellsearch.tasks.forecasting.multiplicative``); the networks leave it out (the ``unread``
    encoder), as the scaling meant them to."""
    return last / scale


def _windows(x_rows: np.ndarray, target: np.ndarray, origins: np.ndarray, available: np.ndarray, window: int,
             horizon: int, t_idx: int, level: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows ending just before each origin row (``available`` rows of its series before it):
    inputs (N, window, F) left-aligned with their lengths, the target channel window-scaled (and with
    ``level`` one more channel, the ``level_channel`` at every real step), the scaled next ``horizon``
    targets (``None`` when ``horizon`` is 0), each window's (last value, scale). The same code makes
    training windows and prediction inputs."""
    lengths = np.minimum(window, available).astype(np.int64)
    idx = origins[:, None] - lengths[:, None] + np.arange(window)[None, :]
    real = np.arange(window)[None, :] < lengths[:, None]
    idx = np.where(real, idx, origins[:, None] - 1)
    raw = target[idx]
    last, scale = window_scale(raw, lengths)
    x = x_rows[idx]
    x[:, :, t_idx] = (raw - last[:, None]) / scale[:, None]
    if level:
        x = np.concatenate([x, np.broadcast_to(level_channel(last, scale)[:, None, None], (len(x), window, 1))], axis=2)
    x[~real] = 0.0
    y = None
    if horizon:
        y = ((target[origins[:, None] + np.arange(horizon)[None, :]] - last[:, None]) / scale[:, None])
        y = y.astype(np.float32)
    return x.astype(np.float32), lengths, y, last, scale


class SeriesLayout(Layout):
    name: ClassVar[str] = "series"
    whole_sequences: ClassVar[bool] = False
    priority: ClassVar[int] = 100  # the fallback: any file with a numeric column is a series
    target_names: ClassVar[tuple[str, ...]] = SERIES_TARGET_NAMES

    def recognises(self, df: pd.DataFrame, found: Columns, opts: DataOptions) -> bool:
        return True

    def schema(self, df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path,
               warnings: list[str]) -> Schema:
        target = guess_target(df, found, self.target_names, path, warnings, numeric_only=True)
        features = [c for c in found.rest(df) if c != target]
        return Schema(self.name, opts.task or self.tasks()[0], target, found.id_col, found.time_col, found.split_col,
                      [target, *features])

    def build(self, df: pd.DataFrame, schema: Schema, opts: DataOptions, path: Path, warnings: list[str]
              ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
        order, codes, starts, keys = group_order(df, schema.id_col, schema.time_col, path)
        sorted_df = df.iloc[order].reset_index(drop=True)
        lengths = np.diff(np.r_[starts, len(codes)])
        horizon = opts.horizon or 1
        season = opts.season or detect_season(sorted_df, schema.time_col)
        window = opts.window or default_window(lengths, horizon, season)
        if season > 1 and window < season:
            warnings.append(f"the window ({window} steps) is shorter than the season ({season}): the seasonal naive "
                            f"reference and seasonal base see no value a season back and repeat the last value "
                            f"(pass --window {season + 1} or more, where the series are long enough)")
        tgt = sorted_df[schema.target].to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(tgt).all() and opts.fill is None:
            raise UserError(f"{path}: target column {schema.target!r} has {int((~np.isfinite(tgt)).sum())} "
                            "missing or infinite values; pass --fill ffill or --fill zero")
        short = lengths < horizon + 1
        if short.all():
            k = int(np.argmax(short))
            raise UserError(f"{path}: series {py_scalar(keys[k])!r} has {int(lengths[k])} rows; training needs at "
                            f"least horizon + 1 = {horizon + 1}; use a smaller --horizon")
        if short.any():
            warnings.append(f"{int(short.sum())} series shorter than horizon + 1 = {horizon + 1} rows do not "
                            f"train (they are still forecast): {', '.join(str(py_scalar(k)) for k in keys[short][:5])}"
                            f"{' ...' if short.sum() > 5 else ''}")
        pos = np.arange(len(codes)) - starts[codes]
        row_split = (split_from_column(sorted_df, schema.split_col, path) if schema.split_col
                     else _time_splits(lengths, codes, pos, horizon, opts))
        train_rows = row_split == "train"
        if not train_rows.any():
            raise UserError(f"{path}: no training rows left after the time split")
        values, names, fitted = encode_features(sorted_df, schema.features, train_rows, path)
        values = handle_missing(values, names, codes, starts, opts.fill, path)
        t_idx = names.index(schema.target)
        target = values[:, t_idx].astype(np.float64)
        denominators = mase_scale(target, codes, train_rows, starts, season)
        flat = flat_series(target, codes, train_rows, starts)
        if flat.any():
            warnings.append(f"{int(flat.sum())} series with a constant history have no MASE scale of their own "
                            f"and are scored relative to their level (at least 1): "
                            f"{', '.join(str(py_scalar(k)) for k in keys[flat][:5])}{' ...' if flat.sum() > 5 else ''}")
        mean, std = fit_scaler(values, train_rows)
        mean[t_idx], std[t_idx] = 0.0, 1.0
        x_rows = ((values - mean) / std).astype(np.float32)
        # Forecast origins: at least one input point before, the whole horizon inside the series, and
        # all forecast steps in one split (a window never reaches across a split boundary).
        rank = {s: k for k, s in enumerate(SPLITS)}
        rs = np.vectorize(rank.get, otypes=[np.int64])(row_split) if len(row_split) else np.zeros(0, int)
        valid = (pos >= 1) & (pos + horizon <= lengths[codes])
        origins = np.flatnonzero(valid)
        origins = origins[rs[origins] == rs[origins + horizon - 1]]
        x, win_len, y, last, scale = _windows(x_rows, target, origins, pos[origins], window, horizon, t_idx, level=True)
        offsets = np.stack([last, scale], axis=1)
        weight = (scale / denominators[codes[origins]]).astype(np.float32)
        win_split = np.array(SPLITS, dtype=object)[rs[origins]]
        position = pos[origins].astype(np.int64)
        win_keys = keys[codes[origins]]
        splits = {}
        for s in SPLITS:
            m = win_split == s
            splits[s] = SplitTensors(x[m], win_len[m], y[m], win_keys[m], weight[m], offsets[m], position[m])
        if len(splits["train"]) == 0:
            raise UserError(f"{path}: no training window fits (horizon {horizon}); use a smaller --horizon")
        layout_data = {"window": window, "horizon": horizon, "season": season, "target_index": t_idx,
                       "level_index": len(names), "n_series": int(len(starts)), "series_trained": int((~short).sum())}
        return splits, {"inputs": [*names, f"{schema.target} (level)"], "encoders": fitted,
                        "scaler": Scaler([*mean.tolist(), 0.0], [*std.tolist(), 1.0]),  # the level as it is
                        "layout_data": layout_data}

    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        """The last ``window`` rows of each series (all it has, if fewer), scaled as in training by
        the window's own last value and mean absolute step; ``scale`` maps the forecast back."""
        order, codes, starts, keys = group_order(df, prep.id_col, prep.time_col, path)
        lengths = np.diff(np.r_[starts, len(codes)])
        values, _, _ = encode_features(df, prep.features, np.ones(len(df), dtype=bool), path, prep.encoders)
        # a bundle from before the level channel has none (its inputs are the encoded columns alone)
        level = "level_index" in prep.layout_data
        values = handle_missing(values[order], prep.inputs[:-1] if level else prep.inputs, codes, starts, prep.fill,
                                path)
        window, t_idx = int(prep.layout_data["window"]), int(prep.layout_data["target_index"])
        mean, std = prep.scaler.arrays()
        k = values.shape[1]  # the columns' channels (the level's comes after them)
        x_rows = ((values - mean[:k]) / std[:k]).astype(np.float32)
        # The forecast origin of each series is just past its last row.
        x, win_len, _, last, scale = _windows(x_rows, values[:, t_idx].astype(np.float64), starts + lengths, lengths,
                                              window, 0, t_idx, level=level)
        return Inputs(x, win_len, keys, scale=(last, scale))

    def input_columns(self, prep: Preprocessing) -> list[str]:
        return list(prep.features)  # the target is an input too

    def example(self, df: pd.DataFrame, prep: Preprocessing) -> pd.DataFrame:
        if prep.id_col:
            df = df[df[prep.id_col].isin(df[prep.id_col].drop_duplicates().head(1))]
        return df.tail(int(prep.layout_data["window"]) + 2).reset_index(drop=True)

    def seasonality(self, prep: Preprocessing) -> tuple[int, int]:
        return int(prep.layout_data["season"]), int(prep.layout_data["target_index"])

    def summary(self, prep: Preprocessing) -> dict[str, Any]:
        d = prep.layout_data
        return {k: d[k] for k in ("window", "horizon", "season", "n_series", "series_trained")}

    def split_source(self, schema: Schema) -> str:
        return "by time (last part of each series)"


