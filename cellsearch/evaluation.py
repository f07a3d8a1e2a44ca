"""A model's outputs and scores on a split: what export, the search's test scores and the members
read, without the training machinery (``cellsearch.train`` imports PyTorch Lightning, seconds on a
small machine; ``cellsearch export`` of fold models trains nothing and no longer pays for it)."""

from __future__ import annotations

import numpy as np
import torch

from cellsearch.data import SplitTensors
from cellsearch.metrics import score, test_scores
from cellsearch.model import SequenceModel
from cellsearch.tasks import get_task


class Batches(torch.utils.data.Dataset):
    """Rows ``index`` of a split (all of it when ``None``), indexed by whole batches (a list of
    positions), each batch trimmed to its longest sequence. The split's arrays are shared, not copied:
    every fold of a search reads the same tensors."""

    def __init__(self, split: SplitTensors, task: str, index: np.ndarray | None = None) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(split.x))
        self.lengths = torch.from_numpy(split.lengths.astype(np.int64))
        y = torch.from_numpy(np.asarray(split.y))
        self.y = get_task(task).target_tensor(y, len(split))
        w = np.ones(len(split)) if split.weight is None else split.weight
        self.weight = torch.from_numpy(np.asarray(w, dtype=np.float32))
        self.index = None if index is None else torch.from_numpy(np.asarray(index, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths) if self.index is None else len(self.index)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx_t = torch.as_tensor(idx) if self.index is None else self.index[torch.as_tensor(idx)]
        lengths = self.lengths[idx_t]
        return self.x[idx_t, : int(lengths.max())], lengths, self.y[idx_t], self.weight[idx_t]


@torch.no_grad()
def outputs(model: torch.nn.Module, split: SplitTensors, task: str, batch_size: int = 512,
            index: np.ndarray | None = None) -> np.ndarray:
    """The model's outputs on one split, or on its rows ``index`` (eval mode, batched)."""
    model.eval()
    part = Batches(split, task, index)
    outs = []
    for k in range(0, len(part), batch_size):
        x, lengths, _, _ = part[list(range(k, min(k + batch_size, len(part))))]
        outs.append(model(x, lengths))
    return torch.cat(outs).numpy()


def evaluate(model: SequenceModel, split: SplitTensors, task: str, target_std: float = 1.0) -> float:
    """Score a model on one split with the task's metric."""
    return score(task, outputs(model, split, task), split.y, target_std, split.weight)


def evaluate_test(model: SequenceModel, split: SplitTensors, task: str, target_std: float = 1.0
                  ) -> dict[str, float]:
    """``{"test_score": ..., "test_smape": ...}`` of a model on a test split (``metrics.test_scores``)."""
    return test_scores(task, outputs(model, split, task), split, target_std)
