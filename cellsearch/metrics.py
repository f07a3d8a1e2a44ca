"""The score each task is judged by, in one place: networks, references and exports use it alike.

* classification: accuracy (higher is better);
* regression: RMSE in the target's units (lower is better);
* forecasting: MASE — mean absolute error of the ``horizon`` values over the series' in-sample mean
  absolute seasonal difference — averaged over forecast windows (lower is better). Models predict in
  each window's own scaled units; a window's ``weight`` (its scale over its series' MASE denominator,
  ``SplitTensors.weight``) turns a scaled absolute error into that window's MASE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = {"classification": ("accuracy", "maximize"), "regression": ("rmse", "minimize"),
           "forecasting": ("mase", "minimize")}


def metric_of(task: str) -> tuple[str, str]:
    """(metric name, optimisation direction) of a task."""
    return METRICS[task]


def score(task: str, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
          weight: np.ndarray | None = None) -> float:
    """The task's score of predictions ``pred`` against targets ``y``.

    ``pred`` is class scores (N, classes) or labels (N,) for classification, values in the model's
    (standardised or window-scaled) units otherwise; ``target_scale`` maps a regression error back
    to target units, ``weight`` a forecasting window's error to its MASE.
    """
    pred, y = np.asarray(pred), np.asarray(y)
    if task == "classification":
        labels = pred.argmax(axis=1) if pred.ndim == 2 else pred
        return float(np.mean(labels == y))
    err = pred.reshape(len(y), -1).astype(np.float64) - y.reshape(len(y), -1)
    if task == "forecasting":
        w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        return float(np.mean(w * np.abs(err).mean(axis=1)))
    return float(np.sqrt(np.mean(err ** 2)) * target_scale)


def test_scores(task: str, pred: np.ndarray, split: Any, target_scale: float = 1.0) -> dict[str, float]:
    """Predictions on a test split as ``{"test_score": ..., "test_smape": ..., ...}``: the task's score
    and the secondary ones, named as result tables, model cards and MLflow show them."""
    return {"test_score": score(task, pred, split.y, target_scale, split.weight),
            **{f"test_{k}": v for k, v in secondary(task, pred, split.y, split.origin).items()}}


def secondary(task: str, pred: np.ndarray, y: np.ndarray, origin: np.ndarray | None) -> dict[str, float]:
    """Scores reported beside the main one: for forecasting, sMAPE (0–2) and RMSE over the mean
    absolute target (normalised RMSE), both in the target's units (``origin``: each window's offset
    and scale); nothing for the other tasks."""
    if task != "forecasting" or origin is None or not len(y):
        return {}
    off, sc = np.asarray(origin, dtype=np.float64)[:, :1], np.asarray(origin, dtype=np.float64)[:, 1:]
    p = np.asarray(pred, dtype=np.float64).reshape(len(y), -1) * sc + off
    t = np.asarray(y, dtype=np.float64).reshape(len(y), -1) * sc + off
    denom = np.abs(p) + np.abs(t)
    smape = np.divide(2 * np.abs(p - t), denom, out=np.zeros_like(denom), where=denom > 0)
    return {"smape": float(smape.mean()),
            "nrmse": float(np.sqrt(np.mean((p - t) ** 2)) / max(float(np.mean(np.abs(t))), 1e-12))}
