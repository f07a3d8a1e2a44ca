"""Reference models beside every search: does the recurrent network beat the simple answer?

Each reference is fitted on the training split only and scored on the same validation and test
splits as the networks, with the same metric. They are shown beside the networks (Pareto table and
plot, MLflow runs tagged ``reference``, the model card) and never exported: the bundle is always a
network. The registry ``REFERENCES`` maps a name to a ``Reference``; a reference serves the tasks it
lists (forecasting references join here too).

* ``1nn``: 1-nearest-neighbour, Euclidean distance, on sequences z-normalised one by one (each
  channel over its real steps: the UCR convention) and resampled to one common length.
* ``ridge``: ridge regression (``RidgeClassifierCV``/``RidgeCV``, the penalty chosen by leave-one-out)
  on the flattened sequences (the loader's scaling, resampled to the common length).

Cost is counted as for the networks, per prediction: 1-NN compares with every stored training
sequence (one multiply-accumulate per stored number), ridge is one dot product per output; its
parameters are the numbers it stores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHAS = np.logspace(-3, 3, 13)
#: A reference whose scoring would take more multiply-accumulates than this (about a minute on two
#: cores: 1-NN on very large data) is skipped.
MAX_WORK = 2e11


def resample(x: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Each padded sequence's real steps linearly resampled to ``length`` steps: (N, length, F)."""
    n, _, f = x.shape
    pos = np.linspace(0.0, 1.0, length)[None, :] * (np.maximum(lengths, 1) - 1)[:, None]  # (N, L)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(lengths, 1)[:, None] - 1)
    w = (pos - lo)[:, :, None]
    rows = np.arange(n)[:, None]
    return (x[rows, lo] * (1 - w) + x[rows, hi] * w).astype(np.float32)


def znormalise(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each sequence's channels to mean 0 and standard deviation 1 over its real steps (a constant
    channel becomes 0); padding stays 0."""
    real = (np.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
    n = np.maximum(lengths, 1)[:, None, None]
    mean = np.where(real, x, 0).sum(axis=1, keepdims=True) / n
    std = np.sqrt(np.where(real, (x - mean) ** 2, 0).sum(axis=1, keepdims=True) / n)
    return np.where(real, (x - mean) / np.where(std > 1e-8, std, 1.0), 0).astype(np.float32)


@dataclass(frozen=True)
class Reference:
    """One simple model.

    Args:
        label: how tables and plots name it.
        tasks: the tasks it serves.
        features: ``features(x, lengths, length)`` → (N, D) flat inputs from padded sequences.
        model: ``model(task)`` → an unfitted scikit-learn estimator.
        macs: ``macs(n_train, dim, n_outputs)`` per prediction; ``params`` likewise, numbers stored.
    """

    label: str
    tasks: tuple[str, ...]
    features: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    model: Callable[[str], Any]
    macs: Callable[[int, int, int], int]
    params: Callable[[int, int, int], int]


def _nn_model(task: str) -> Any:
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    cls = KNeighborsClassifier if task == "classification" else KNeighborsRegressor
    return cls(n_neighbors=1, algorithm="brute")


def _ridge_model(task: str) -> Any:
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    return RidgeClassifierCV(alphas=ALPHAS) if task == "classification" else RidgeCV(alphas=ALPHAS)


REFERENCES: dict[str, Reference] = {
    "1nn": Reference("1-NN", ("classification", "regression"),
                     lambda x, n, length: resample(znormalise(x, n), n, length).reshape(len(x), -1), _nn_model,
                     macs=lambda n_train, dim, n_out: n_train * dim, params=lambda n_train, dim, n_out: n_train * dim),
    "ridge": Reference("ridge", ("classification", "regression"),
                       lambda x, n, length: resample(x, n, length).reshape(len(x), -1), _ridge_model,
                       macs=lambda n_train, dim, n_out: dim * n_out,
                       params=lambda n_train, dim, n_out: (dim + 1) * n_out),
}


def _score(pred: np.ndarray, y: np.ndarray, task: str, target_scale: float) -> float:
    """The networks' metric: accuracy, or RMSE in target units."""
    if task == "classification":
        return float(np.mean(pred == y))
    return float(np.sqrt(np.mean((pred.reshape(len(y), -1) - y.reshape(len(y), -1)) ** 2)) * target_scale)


def fit_references(dataset: Any, cost: str, deadline: float | None = None,
                   names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Fit each reference that serves the task on the training split; score it on validation (the
    training split when validation is empty, as the networks are) and test.

    Returns one entry per reference, shaped like a Pareto point (``score``, ``test_score``, ``cost``
    for ``cost``, ``macs``, ``params``) with ``reference: True``. References whose turn comes after
    ``deadline`` are skipped.
    """
    from cellsearch.costs import cost_value

    task = dataset.task
    train = dataset.splits["train"]
    val = dataset.splits["val"] if len(dataset.splits["val"]) else train
    test = dataset.splits["test"]
    length = max(1, int(np.median(train.lengths)))
    scale = dataset.preprocessing.target_scale
    out = []
    for name in names or tuple(REFERENCES):
        ref = REFERENCES[name]
        dim, n_out = length * train.x.shape[2], dataset.n_outputs
        if task not in ref.tasks or (deadline is not None and time.time() >= deadline) or \
                ref.macs(len(train), dim, n_out) * (len(val) + len(test)) > MAX_WORK:
            continue
        t0 = time.perf_counter()
        feats = ref.features(train.x, train.lengths, length)
        model = ref.model(task).fit(feats, train.y)
        score = _score(model.predict(ref.features(val.x, val.lengths, length)), val.y, task, scale)
        test_score = (_score(model.predict(ref.features(test.x, test.lengths, length)), test.y, task, scale)
                      if len(test) else None)
        attrs = {"macs": ref.macs(len(train), dim, n_out), "params": ref.params(len(train), dim, n_out)}
        c = cost_value(cost, attrs)
        out.append({"reference": True, "name": name, "arch": ref.label, "score": score, "test_score": test_score,
                    "cost": c if math.isfinite(c) else None, **attrs, "length": length,
                    "fit_seconds": time.perf_counter() - t0})
    return out


def best_reference(references: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The reference with the best validation score."""
    if not references:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(references, key=lambda r: sign * r["score"])


def verdict(chosen: dict[str, Any] | None, references: list[dict[str, Any]], metric: str,
            direction: str) -> str | None:
    """One plain line when the chosen network scores worse on validation than the best reference."""
    best = best_reference(references, direction)
    if chosen is None or best is None:
        return None
    worse = chosen["score"] < best["score"] if direction == "maximize" else chosen["score"] > best["score"]
    if not worse:
        return None
    return (f"the chosen network scores worse than a simple reference on validation: {metric} "
            f"{chosen['score']:.4g} ({chosen['arch']}) against {best['score']:.4g} ({best['arch']})")
