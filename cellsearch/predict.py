"""Prediction from a raw DataFrame in the training CSV's layout, with the fitted preprocessing.

``Predictor`` is what ``cellsearch.load(DIR)`` returns: it checks the frame's columns and types
against the training schema, applies the training split's scalers and encodings, runs the model and
answers in the units of the training target (labels and class probabilities, values, or the next
``horizon`` values of each series).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data import (
    _encode_features,
    _group_order,
    _handle_missing,
    _is_numeric,
    _padded_rows,
    _plan_inputs,
    _py,
    _scatter_inputs,
    _standardise_padded,
    wide_steps,
)
from cellsearch.errors import UserError


def _check_columns(df: pd.DataFrame, prep: dict[str, Any], where: str) -> list[str]:
    """Required input columns; the target and split columns are optional; anything else is refused."""
    if prep["layout"] == "wide":
        required = [c for row in prep["step_columns"] for c in row]
    else:
        required = list(prep["features"])
    for c in (prep.get("id_col"), prep.get("time_col")):
        if c and c not in required:
            required.append(c)
    if prep["layout"] == "series" and prep["target"] not in required:
        required.append(prep["target"])
    optional = {prep["target"], prep.get("split_col"), "split"}
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)} (the model was trained on: "
                        f"{', '.join(required)})")
    extra = [c for c in df.columns if c not in required and c not in optional]
    if extra:
        raise UserError(f"{where}: unexpected column(s) {', '.join(map(str, extra))} (the model was trained on: "
                        f"{', '.join(required)})")
    return required


def _check_types(df: pd.DataFrame, columns: list[str], prep: dict[str, Any], where: str) -> None:
    cats = prep.get("categories", {})
    for c in columns:
        if c in (prep.get("id_col"), prep.get("time_col")):
            continue
        s = df[c]
        if c in cats:
            seen = set(pd.unique(s.dropna().astype(str)))
            unseen = sorted(seen - set(cats[c]))
            if unseen:
                raise UserError(f"{where}: column {c!r} has value(s) unseen in training: {', '.join(unseen[:5])}")
        elif not (_is_numeric(s) or pd.api.types.is_bool_dtype(s)):
            bad = pd.to_numeric(s, errors="coerce").isna() & s.notna()
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
            raise UserError(f"{where}: column {c!r} should be numeric but has text such as {s.iloc[row]!r} "
                            f"(row {row + 1})")


def transform(df: pd.DataFrame, prep: dict[str, Any], where: str = "input"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """A frame in the training layout → padded inputs (N, T, F), lengths, sequence keys, extras."""
    if len(df) == 0:
        raise UserError(f"{where}: no rows")
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    required = _check_columns(df, prep, where)
    _check_types(df, required, prep, where)
    path = Path(where)
    fill = prep.get("options", {}).get("fill")
    mean = np.asarray(prep["scaler"]["mean"])
    std = np.asarray(prep["scaler"]["std"])
    if prep["layout"] == "wide":
        raw, lengths, inside = wide_steps(df, prep["step_columns"], fill, path)
        n = len(df)
        x = np.nan_to_num(raw, copy=False)
        _standardise_padded(x, inside, scaler=(mean, std))
        keys = df[prep["id_col"]].to_numpy() if prep.get("id_col") else np.arange(n)
        return x, lengths, keys, {}
    order, codes, starts, keys = _group_order(df, prep.get("id_col"), prep.get("time_col"), path)
    lengths = np.diff(np.r_[starts, len(codes)])
    everything = np.ones(len(df), dtype=bool)
    if prep["layout"] == "long":
        plan, _, cats = _plan_inputs(df, prep["features"], everything, path, prep.get("categories", {}))
        steps = int(lengths.max())
        x = np.zeros((len(starts), steps, len(plan)), dtype=np.float32)
        _scatter_inputs(df, plan, cats, _padded_rows(order, codes, starts, steps), x, lengths, fill, path,
                        scaler=(mean, std))
        return x, lengths.astype(np.int64), keys, {}
    values, _, _ = _encode_features(df, prep["features"], everything, path, categories=prep.get("categories", {}))
    values = _handle_missing(values[order], prep["inputs"], codes, starts, fill, path)
    # Series: the last `window` rows of each series; the target scaled by that series' statistics.
    window, t_idx = int(prep["window"]), int(prep["target_index"])
    short = lengths < window
    if short.any():
        k = int(np.argmax(short))
        raise UserError(f"{where}: series {_py(keys[k])!r} has {int(lengths[k])} rows; the model needs the last "
                        f"{window}")
    stats = prep["series_stats"]
    tv = values[:, t_idx].astype(np.float64)
    s_mean = np.empty(len(starts))
    s_std = np.empty(len(starts))
    for i, key in enumerate(keys):  # one entry per series, not per row
        if str(_py(key)) in stats:
            s_mean[i], s_std[i] = stats[str(_py(key))]
        else:  # a series unseen in training: normalise by its own history
            seg = tv[starts[i]:starts[i] + lengths[i]]
            s_mean[i], s_std[i] = float(seg.mean()), float(seg.std()) or max(abs(float(seg.mean())), 1.0)
    scaled = ((values - mean) / std).astype(np.float32)
    scaled[:, t_idx] = ((tv - s_mean[codes]) / s_std[codes]).astype(np.float32)
    ends = starts + lengths
    idx = ends[:, None] + np.arange(-window, 0)[None, :]
    x = scaled[idx]
    return x, np.full(len(starts), window, dtype=np.int64), keys, {"series_mean": s_mean, "series_std": s_std}


class Predictor:
    """A trained model with its preprocessing: ``predict(df)`` answers in the training target's units."""

    def __init__(self, model: Any, prep: dict[str, Any], info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.prep = prep
        self.info = info or {}

    @property
    def task(self) -> str:
        return self.prep["task"]

    def raw_outputs(self, x: np.ndarray, lengths: np.ndarray, batch_size: int = 512) -> np.ndarray:
        import torch

        self.model.eval()
        outs = []
        with torch.no_grad():
            for k in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[k:k + batch_size]))
                lb = torch.from_numpy(lengths[k:k + batch_size])
                outs.append(self.model(xb[:, : int(lb.max())], lb).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.model.spec.n_outputs), dtype=np.float32)

    def predict(self, df: pd.DataFrame, where: str = "input") -> pd.DataFrame:
        """Predictions for every sequence (or, for forecasting, every series) in ``df``."""
        x, lengths, keys, extra = transform(df, self.prep, where)
        out = self.raw_outputs(x, lengths)
        key_name = self.prep.get("id_col") or ("series" if self.task == "forecasting" else "row")
        if self.task == "classification":
            z = out - out.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            classes = self.prep["classes"]
            res = pd.DataFrame({key_name: keys, "prediction": [classes[i] for i in p.argmax(axis=1)]})
            for j, c in enumerate(classes):
                res[f"prob_{c}"] = p[:, j]
            return res
        if self.task == "regression":
            values = out[:, 0] * self.prep["target_std"] + self.prep["target_mean"]
            return pd.DataFrame({key_name: keys, "prediction": values})
        horizon = out.shape[1]
        values = out * extra["series_std"][:, None] + extra["series_mean"][:, None]
        return pd.DataFrame({key_name: np.repeat(keys, horizon), "step": np.tile(np.arange(1, horizon + 1), len(keys)),
                             "prediction": values.reshape(-1)})
