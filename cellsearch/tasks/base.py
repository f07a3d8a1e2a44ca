"""The ``Task`` interface: everything that differs between kinds of target, in one object.

A task owns its metric and direction, the target's encoding, the training loss and the continuous
tie-break loss, the output size, how outputs are averaged by ensembles and turned into the target's
units, whether splits are stratified, which references apply, its wording, and its ONNX outputs.
Code outside ``cellsearch.tasks`` asks the task object (``get_task(name)``) and never compares the
task's name. A new task is one module with one subclass, registered in ``cellsearch.tasks.TASKS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

Direction = Literal["maximize", "minimize"]


class Task:
    """Base of all tasks; subclasses set the class attributes and override what differs.

    The defaults describe a regression-like task on whole sequences: one standardised value per
    sequence, mean squared error, RMSE in the target's units.
    """

    #: The registry name (``--task``, ``Preprocessing.task``, ``ModelSpec.task``).
    name: ClassVar[str]
    #: The score trials are judged by, and whether higher or lower is better.
    metric: ClassVar[str] = "rmse"
    direction: ClassVar[Direction] = "minimize"
    #: True: one target per whole sequence (the long and wide layouts); False: forecast windows cut
    #: from series (the series layout).
    whole_sequences: ClassVar[bool] = True
    #: The target is class labels: outputs are class scores (logits), ensembles average their
    #: probabilities, splits and folds are stratified by class, references are classifiers.
    labels: ClassVar[bool] = False
    #: What one example is called in tables and messages.
    unit: ClassVar[str] = "sequences"
    #: Keys of ``cellsearch.references.REFERENCES`` that apply.
    references: ClassVar[tuple[str, ...]] = ("1nn", "ridge", "rocket")
    #: Names of the ONNX graph's outputs (``output`` first).
    onnx_outputs: ClassVar[tuple[str, ...]] = ("output",)
    #: A note on the metric for model cards (empty: none).
    metric_note: ClassVar[str] = ""

    # -- the target -------------------------------------------------------------------------------
    def encode_target(self, first: pd.Series, train: np.ndarray, path: Path, target: str
                      ) -> tuple[np.ndarray, dict[str, Any]]:
        """One encoded target per sequence (``train`` marks the training sequences) and the
        ``Preprocessing`` fields that undo the encoding. Default: standardised by the training
        sequences' mean and standard deviation."""
        from cellsearch.errors import UserError

        v = first.to_numpy(dtype=np.float64)
        if not np.isfinite(v).all():
            raise UserError(f"{path}: target {target!r} has non-finite values")
        mean, std = float(v[train].mean()), float(v[train].std())
        if std < 1e-12:
            raise UserError(f"{path}: target {target!r} is constant; nothing to learn")
        return ((v - mean) / std).astype(np.float32), {"target_mean": mean, "target_std": std}

    def needs_numeric_target(self) -> bool:
        """Whether a text target column is refused."""
        return not self.labels

    def target_tensor(self, y: Any, n: int) -> Any:
        """The encoded targets as training reads them: (n, outputs) float by default."""
        return y.float().reshape(n, -1)

    # -- training and scoring ---------------------------------------------------------------------
    def loss(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        """The training loss of a batch (torch). Default: mean squared error."""
        import torch.nn.functional as F  # noqa: N812

        return F.mse_loss(out, y)

    def loss_rows(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        """Each row's training loss (torch, (B,)): ``loss`` is their mean. Folds trained together
        (``cellsearch.foldbatch``) average them over each fold's real rows."""
        import torch.nn.functional as F  # noqa: N812

        return F.mse_loss(out, y, reduction="none").reshape(len(out), -1).mean(1)

    def row_losses(self, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each example's continuous loss, the tie-break between equal scores: mean squared error
        of the model's (scaled) outputs by default."""
        pred = np.asarray(pred, dtype=np.float64)
        err = pred.reshape(len(pred), -1) - np.asarray(y, dtype=np.float64).reshape(len(pred), -1)
        return np.mean(err ** 2, axis=1)

    def score(self, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
              weight: np.ndarray | None = None) -> float:
        """The task's score of outputs ``pred`` against encoded targets ``y``. Default: RMSE in the
        target's units (``target_scale`` undoes the standardisation)."""
        err = np.asarray(pred).reshape(len(y), -1).astype(np.float64) - np.asarray(y).reshape(len(y), -1)
        return float(np.sqrt(np.mean(err ** 2)) * target_scale)

    def secondary(self, pred: np.ndarray, y: np.ndarray, origin: np.ndarray | None) -> dict[str, float]:
        """Scores reported beside the main one (none by default)."""
        return {}

    def search_value(self, score: float, loss: float | None, n_rows: int) -> float:
        """The value Optuna sees for a trial's score (the score itself by default)."""
        return score

    # -- outputs ----------------------------------------------------------------------------------
    def n_outputs(self, prep: Any) -> int:
        """Outputs of the model's head."""
        return 1

    def to_average(self, out: np.ndarray) -> np.ndarray:
        """Outputs in the space ensembles average in (the outputs themselves by default)."""
        return out

    def from_average(self, avg: np.ndarray) -> np.ndarray:
        """An average (``to_average``'s space) back into outputs."""
        return avg

    def average_torch(self, outs: list[Any], weights: list[float]) -> Any:
        """The weighted average of members' outputs (torch), as ``EnsembleModel`` returns it."""
        return sum(w * o for w, o in zip(weights, outs))

    def to_units(self, out: np.ndarray, prep: Any, scale: tuple[Any, Any] | None = None) -> np.ndarray:
        """Outputs (N, O) in the target's terms: through the training standardisation, or with
        ``scale`` (per-row mean and std) through that."""
        if scale is None:
            return out * prep.target_std + prep.target_mean
        mean, std = (np.reshape(v, (-1, 1)) for v in scale)
        return out * std + mean

    def predictions(self, keys: np.ndarray, values: np.ndarray, prep: Any, key_name: str) -> pd.DataFrame:
        """The predictions file: one row per key (``values`` from ``to_units``)."""
        return pd.DataFrame({key_name: keys, "prediction": values[:, 0]})

    def truth(self, y: Any, prep: Any) -> Any:
        """One encoded target in the target's terms (explain's "truth"); None where it has none."""
        return round(float(np.ravel(y)[0]) * prep.target_std + prep.target_mean, 6)

    def onnx_head(self, g: Any, output: str) -> list[tuple[str, str]]:
        """Nodes after the head's ``output`` in the ONNX graph builder ``g``: (node output, graph
        output name) pairs for the outputs beyond ``output`` (none by default)."""
        return []

    def onnx_average(self, g: Any, terms: list[tuple[str, float]]) -> list[tuple[str, str]]:
        """An ensemble graph's outputs from its members' (output name, weight): the weighted
        average of their outputs by default. Returns (node output, graph output name) pairs."""
        return [(weighted_sum(g, terms), "output")]

    def member_output(self) -> str:
        """Which member graph output an ensemble graph averages."""
        return "output"


def weighted_sum(g: Any, terms: list[tuple[str, float]]) -> str:
    """ONNX nodes summing ``terms`` (output name, weight); returns the sum's name."""
    total = ""
    for k, (name, w) in enumerate(terms):
        term = g.node("Mul", [name, g.const(f"ens_w{k}", [w], "float32")])
        total = term if not total else g.node("Add", [total, term])
    return total

