"""``classification``: one class per sequence; accuracy, cross-entropy, probabilities averaged."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.scalars import py_scalar
from cellsearch.tasks.base import Task, weighted_sum

#: The out-of-fold loss's weight in a trial's search value, per out-of-fold row (``search_value``):
#: a loss difference of up to 10 weighs less than one sequence more or less classified right.
TIE_WEIGHT = 0.1


def softmax(out: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, classes)."""
    p = np.exp(out - out.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


class Classification(Task):
    """Class indices in the order of the sorted labels; the head's outputs are logits."""

    name = "classification"
    metric = "accuracy"
    direction = "maximize"
    labels = True
    onnx_outputs = ("output", "probabilities")

    def encode_target(self, first: pd.Series, train: np.ndarray, path: Path, target: str
                      ) -> tuple[np.ndarray, dict[str, Any]]:
        """Class indices, with the classes and their counts (labels as numbers where the column is
        numeric, else as text)."""
        from cellsearch.errors import UserError

        numeric = pd.api.types.is_numeric_dtype(first) and not pd.api.types.is_bool_dtype(first)
        labels = first.to_numpy() if numeric else first.astype(str).to_numpy()
        classes = np.unique(labels)
        if len(classes) < 2:
            raise UserError(f"{path}: target {target!r} has only one class ({py_scalar(classes[0])!r}); "
                            "classification needs at least two")
        y = np.searchsorted(classes, labels).astype(np.int64)
        counts = {str(py_scalar(c)): int((labels == c).sum()) for c in classes}
        return y, {"classes": [py_scalar(c) for c in classes], "class_counts": counts}

    def target_tensor(self, y: Any, n: int) -> Any:
        return y.long()

    def loss(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        import torch.nn.functional as F  # noqa: N812

        return F.cross_entropy(out, y)

    def loss_rows(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        import torch.nn.functional as F  # noqa: N812

        return F.cross_entropy(out, y, reduction="none")

    def row_losses(self, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Log-loss of the class scores (``pred`` holds logits or log-probabilities)."""
        pred = np.asarray(pred, dtype=np.float64)
        z = pred - pred.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(pred)), np.asarray(y, dtype=np.int64)]

    def score(self, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
              weight: np.ndarray | None = None) -> float:
        """Accuracy of class scores (N, classes) or labels (N,)."""
        pred = np.asarray(pred)
        labels = pred.argmax(axis=1) if pred.ndim == 2 else pred
        return float(np.mean(labels == np.asarray(y)))

    def search_value(self, score: float, loss: float | None, n_rows: int) -> float:
        """The accuracy less ``TIE_WEIGHT / n_rows`` times the out-of-fold log-loss — the order in
        which the front ranks trials (score, then loss) as one number.

        Why: on a few dozen sequences many trials classify every out-of-fold sequence right. Seeing
        them all at 1.0, a two-objective search has only cost left to improve and cannot tell a sure
        model from one that barely scrapes through; with the loss in the value, a model that is
        right and sure stays on the search's front beside the cheaper ones, and the sampler keeps
        exploring there. Trials' recorded scores (``val_score``) are unchanged."""
        if loss is None or not math.isfinite(loss) or n_rows < 1:
            return score
        return score - TIE_WEIGHT / n_rows * loss

    def n_outputs(self, prep: Any) -> int:
        return len(prep.classes)

    def to_average(self, out: np.ndarray) -> np.ndarray:
        """Probabilities (outputs are logits or log-probabilities)."""
        return softmax(np.asarray(out, dtype=np.float64))

    def from_average(self, avg: np.ndarray) -> np.ndarray:
        return np.log(np.clip(avg, 1e-30, None))

    def average_torch(self, outs: list[Any], weights: list[float]) -> Any:
        import torch

        p = sum(w * torch.softmax(o, dim=1) for w, o in zip(weights, outs))
        return torch.log(p.clamp_min(1e-30))

    def to_units(self, out: np.ndarray, prep: Any, scale: tuple[Any, Any] | None = None) -> np.ndarray:
        """Class probabilities."""
        return softmax(out)

    def predictions(self, keys: np.ndarray, values: np.ndarray, prep: Any, key_name: str) -> pd.DataFrame:
        """The predicted class and one ``prob_CLASS`` column per class."""
        classes = prep.classes
        res = pd.DataFrame({key_name: keys, "prediction": [classes[i] for i in values.argmax(axis=1)]})
        for j, c in enumerate(classes):
            res[f"prob_{c}"] = values[:, j]
        return res

    def truth(self, y: Any, prep: Any) -> Any:
        return prep.classes[int(y)]

    def onnx_head(self, g: Any, output: str) -> list[tuple[str, str]]:
        return [(g.node("Softmax", [output], axis=1), "probabilities")]

    def onnx_average(self, g: Any, terms: list[tuple[str, float]]) -> list[tuple[str, str]]:
        """The average of the members' probabilities, and its log as ``output``."""
        total = weighted_sum(g, terms)
        return [(g.node("Log", [g.node("Max", [total, g.const("ens_tiny", [1e-30], "float32")])]), "output"),
                (total, "probabilities")]

    def member_output(self) -> str:
        return "probabilities"
