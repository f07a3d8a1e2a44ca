"""References as ensemble members: the ridge reference as a model the ensemble can hold.

The search shows simple references beside its networks (``cellsearch.references``). On a few dozen
sequences a reference may beat every network, or help them: a linear model on the whole sequence
sees what a recurrent network reads step by step differently, and their errors differ. So the ridge
reference also enters the ensemble library as a candidate: fitted on each fold's training rows as
the networks are, its out-of-fold outputs next to theirs, and a Caruana ensemble may mix them
(``cellsearch.ensemble``). Exported, it is one more member of the bundle's ``EnsembleModel``:
``predict``, ``cellsearch.load``, the MLflow pyfunc, serving and the ONNX graph
(``cellsearch.onnx_export.reference_onnx``) run it like the networks.

``RidgeMember`` is a ``torch.nn.Module`` with the networks' interface (``forward(x, lengths)``,
outputs in their units): the sequence resampled to a fixed length (linear interpolation over its
real steps, as the reference does), flattened, one linear map. For classification it is made
probabilistic: ridge's one-vs-rest decision values times a temperature fitted on the out-of-fold rows
(lowest log-loss), through a softmax; its outputs are log-probabilities, which the ensemble averages
as probabilities like the networks' logits. 1-NN stays a reference only: its "probabilities" are
0 or 1, and it stores the whole training set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cellsearch.tasks import get_task

#: Ridge penalties tried (leave-one-out picks one), for the reference and the member alike.
ALPHAS = np.logspace(-3, 3, 13)
#: Temperatures tried for ridge's decision values (classification).
TEMPERATURES = np.logspace(-1, 2, 31)
#: The key a reference member takes among trial numbers (members of an ensemble are keyed by trial).
MEMBER_KEYS = {"ridge": -1}


def resample(x: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Each padded sequence's real steps linearly resampled to ``length`` steps: (N, length, F)."""
    n, _, f = x.shape
    pos = np.linspace(0.0, 1.0, length)[None, :] * (np.maximum(lengths, 1) - 1)[:, None]  # (N, L)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(lengths, 1)[:, None] - 1)
    w = (pos - lo)[:, :, None]
    rows = np.arange(n)[:, None]
    return (x[rows, lo] * (1 - w) + x[rows, hi] * w).astype(np.float32)


def resample_torch(x: torch.Tensor, lengths: torch.Tensor, length: int) -> torch.Tensor:
    """``resample`` in torch: each sequence's real steps linearly resampled to
    ``length`` steps, (N, length, F)."""
    n = lengths.clamp(min=1).to(x.dtype)
    pos = torch.linspace(0.0, 1.0, length, dtype=x.dtype, device=x.device)[None, :] * (n - 1)[:, None]
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (lengths.clamp(min=1) - 1)[:, None].long())
    w = (pos - lo.to(x.dtype))[:, :, None]
    idx_lo = lo[:, :, None].expand(-1, -1, x.shape[2])
    idx_hi = hi[:, :, None].expand(-1, -1, x.shape[2])
    return x.gather(1, idx_lo) * (1 - w) + x.gather(1, idx_hi) * w


class RidgeMember(nn.Module):
    """Ridge on the resampled, flattened sequence, in the networks' output units (module doc)."""

    kind = "ridge"

    def __init__(self, input_size: int, length: int, n_outputs: int, task: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.input_size, self.length, self.n_outputs, self.task = input_size, length, n_outputs, task
        self.temperature = float(temperature)
        self.linear = nn.Linear(input_size * length, n_outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        flat = resample_torch(x.float(), lengths.to(x.device), self.length).flatten(1)
        out = self.linear(flat)
        if get_task(self.task).labels:
            return torch.log_softmax(out * self.temperature, dim=1)
        return out

    @property
    def arch(self) -> str:
        return f"ridge/{self.length}"

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_sequence(self, length: int) -> int:
        """One multiply-add per weight (the resampling's few per step are not counted)."""
        return self.input_size * self.length * self.n_outputs

    def describe(self) -> dict[str, Any]:
        return {"reference": self.kind, "input_size": self.input_size, "length": self.length,
                "n_outputs": self.n_outputs, "task": self.task, "temperature": self.temperature}

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> RidgeMember:
        for key in ("input_size", "length", "n_outputs"):
            if not 1 <= int(d[key]) <= 10_000_000:
                raise ValueError(f"ridge member: {key} {d[key]} out of range")
        if int(d["input_size"]) * int(d["length"]) * int(d["n_outputs"]) > 200_000_000:
            raise ValueError("ridge member: too many weights")
        return cls(int(d["input_size"]), int(d["length"]), int(d["n_outputs"]), str(d["task"]),
                   float(d.get("temperature", 1.0)))


def fit_ridge(train: Any, task: str, length: int, n_outputs: int) -> RidgeMember:
    """A ``RidgeMember`` fitted on a split's rows (``RidgeClassifierCV`` / ``RidgeCV``, the penalty
    chosen by leave-one-out, as the reference), its temperature still 1."""
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    feats = resample(train.x, train.lengths, length).reshape(len(train.x), -1)
    member = RidgeMember(train.x.shape[2], length, n_outputs, task)
    labels = get_task(task).labels
    y = np.asarray(train.y)
    if labels:
        est = RidgeClassifierCV(alphas=ALPHAS).fit(feats, y)
        coef, icpt = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_)
        full_w = np.zeros((n_outputs, feats.shape[1]))
        full_b = np.zeros(n_outputs)
        classes = np.asarray(est.classes_, dtype=np.int64)
        if len(classes) == 2 and coef.shape[0] == 1:  # one decision value: +d/2 for the second class
            full_w[classes[1]], full_w[classes[0]] = coef[0] / 2, -coef[0] / 2
            full_b[classes[1]], full_b[classes[0]] = icpt[0] / 2, -icpt[0] / 2
        else:
            full_w[classes], full_b[classes] = coef, icpt
            missing = np.setdiff1d(np.arange(n_outputs), classes)  # a class no training row has
            full_b[missing] = -1e3
    else:
        est = RidgeCV(alphas=ALPHAS).fit(feats, y.reshape(len(y), -1))
        full_w, full_b = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_)
    with torch.no_grad():
        member.linear.weight.copy_(torch.as_tensor(full_w, dtype=torch.float32))
        member.linear.bias.copy_(torch.as_tensor(full_b, dtype=torch.float32))
    return member


def _outputs(model: nn.Module, split: Any) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(split.x), torch.from_numpy(split.lengths.astype(np.int64))).numpy()


def fold_members(dataset: Any, folds: Any) -> tuple[list[RidgeMember], np.ndarray] | None:
    """The ridge member of each fold (fitted on the fold's training rows) and their out-of-fold
    outputs in fold order; classification's temperature is chosen on those outputs (lowest
    log-loss) and set in every fold's member. ``None`` where ridge does not serve the task."""
    from cellsearch.folds import row_losses

    task = dataset.task
    if "ridge" not in get_task(task).references:
        return None
    pool = folds.folds[0].train.split
    length = max(1, int(np.median(pool.lengths)))
    members, parts = [], []
    for f in folds.folds:
        m = fit_ridge(f.train.tensors(), task, length, dataset.n_outputs)
        members.append(m)
        parts.append(f.val.tensors())
    if get_task(task).labels:
        best, best_loss = 1.0, np.inf
        for t in TEMPERATURES:
            for m in members:
                m.temperature = float(t)
            loss = float(np.mean(row_losses(task, np.concatenate([_outputs(m, p) for m, p in zip(members, parts)]),
                                            np.asarray(folds.oof.y))))
            if loss < best_loss:
                best, best_loss = float(t), loss
        for m in members:
            m.temperature = best
    oof = np.concatenate([_outputs(m, p) for m, p in zip(members, parts)]).astype(np.float32)
    return members, oof
