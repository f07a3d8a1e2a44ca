"""``forecasting``: the next ``horizon`` values of a series from a window of its past, scored by MASE.

Models predict in each window's own scaled units; a window's ``weight`` (its scale over its series'
MASE denominator, ``SplitTensors.weight``) turns a scaled absolute error into that window's MASE:
the mean absolute error of the ``horizon`` values over the series' in-sample mean absolute seasonal
difference, averaged over forecast windows. sMAPE and normalised RMSE are reported beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cellsearch.tasks.base import Task


class Forecasting(Task):
    """Windows cut from series (the series layout); L1 training loss by default (what MASE scores)."""

    name = "forecasting"
    metric = "mase"
    whole_sequences = False
    unit = "windows"
    references = ("naive", "seasonal_naive")
    metric_note = "(MASE: mean absolute error over the series' in-sample mean absolute seasonal difference)"

    def loss(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        """L1 on each window's scaled values, or squared error with ``forecast_loss="mse"``."""
        import torch.nn.functional as F  # noqa: N812

        return F.l1_loss(out, y) if forecast_loss == "l1" else F.mse_loss(out, y)

    def loss_rows(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        import torch.nn.functional as F  # noqa: N812

        rows = F.l1_loss(out, y, reduction="none") if forecast_loss == "l1" else F.mse_loss(out, y, reduction="none")
        return rows.reshape(len(out), -1).mean(1)

    def score(self, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
              weight: np.ndarray | None = None) -> float:
        """MASE: each window's mean absolute scaled error times its ``weight``, averaged."""
        err = np.asarray(pred).reshape(len(y), -1).astype(np.float64) - np.asarray(y).reshape(len(y), -1)
        w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        return float(np.mean(w * np.abs(err).mean(axis=1)))

    def secondary(self, pred: np.ndarray, y: np.ndarray, origin: np.ndarray | None) -> dict[str, float]:
        """sMAPE (0–2) and RMSE over the mean absolute target (normalised RMSE), both in the target's
        units (``origin``: each window's offset and scale)."""
        if origin is None or not len(y):
            return {}
        off, sc = np.asarray(origin, dtype=np.float64)[:, :1], np.asarray(origin, dtype=np.float64)[:, 1:]
        p = np.asarray(pred, dtype=np.float64).reshape(len(y), -1) * sc + off
        t = np.asarray(y, dtype=np.float64).reshape(len(y), -1) * sc + off
        denom = np.abs(p) + np.abs(t)
        smape = np.divide(2 * np.abs(p - t), denom, out=np.zeros_like(denom), where=denom > 0)
        return {"smape": float(smape.mean()),
                "nrmse": float(np.sqrt(np.mean((p - t) ** 2)) / max(float(np.mean(np.abs(t))), 1e-12))}

    def n_outputs(self, prep: Any) -> int:
        return int(prep.layout_data["horizon"])

    def predictions(self, keys: np.ndarray, values: np.ndarray, prep: Any, key_name: str) -> pd.DataFrame:
        """One row per series and forecast step."""
        horizon = values.shape[1]
        return pd.DataFrame({key_name: np.repeat(keys, horizon), "step": np.tile(np.arange(1, horizon + 1), len(keys)),
                             "prediction": values.reshape(-1)})

    def truth(self, y: Any, prep: Any) -> Any:
        return None


def seasonal_naive(target: Any, lengths: Any, season: int, horizon: int) -> Any:
    """(B, horizon) seasonal naive forecast from left-aligned windows ``target`` (B, T): step h repeats
    the value ``season`` steps before it (index ``length - season + h mod season``); 0 (the last value,
    in window-scaled units) where a window is shorter than a season. The model's seasonal base and
    the seasonal naive reference and member all use it (tensors; torch imported here, as the task's
    other torch code, so that reading a task stays light)."""
    import torch

    h = torch.arange(horizon, device=target.device)
    n = lengths.to(target.device)[:, None]
    idx = (n - season + h[None, :] % season).clamp(min=0)
    values = torch.gather(target, 1, idx)
    return torch.where(n >= season, values, torch.zeros_like(values))
