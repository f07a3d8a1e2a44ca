"""The score each task is judged by, in one place: networks, references and exports use it alike.

Each function takes the task's registry name and asks the task (``cellsearch.tasks``): its metric
and direction, its score of predictions in the model's units, and the secondary scores shown
beside it (forecasting: sMAPE and normalised RMSE).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsearch.tasks import get_task


def metric_of(task: str) -> tuple[str, str]:
    """(metric name, optimisation direction) of a task."""
    t = get_task(task)
    return t.metric, t.direction


def score(task: str, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
          weight: np.ndarray | None = None) -> float:
    """The task's score of predictions ``pred`` against targets ``y`` (``Task.score``).

    ``pred`` is class scores (N, classes) or labels (N,) for classification, values in the model's
    (standardised or window-scaled) units otherwise; ``target_scale`` maps a regression error back
    to target units, ``weight`` a forecasting window's error to its MASE.
    """
    return get_task(task).score(np.asarray(pred), np.asarray(y), target_scale, weight)


def test_scores(task: str, pred: np.ndarray, split: Any, target_scale: float = 1.0) -> dict[str, float]:
    """Predictions on a test split as ``{"test_score": ..., "test_smape": ..., ...}``: the task's score
    and the secondary ones, named as result tables, model cards and MLflow show them."""
    return {"test_score": score(task, pred, split.y, target_scale, split.weight),
            **{f"test_{k}": v for k, v in secondary(task, pred, split.y, split.origin).items()}}


def secondary(task: str, pred: np.ndarray, y: np.ndarray, origin: np.ndarray | None) -> dict[str, float]:
    """Scores reported beside the main one (``Task.secondary``)."""
    return get_task(task).secondary(pred, y, origin)
