"""Train/validation/test splits of whole sequences, and the per-split tensors (``SplitTensors``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellsearch.data.options import SPLITS, DataOptions
from cellsearch.errors import UserError


@dataclass
class SplitTensors:
    """One split: padded inputs (N, T, F) float32, lengths (N,), targets, sequence keys; where the task
    needs them (forecasting), a score weight per example (MASE), each example's ``origin`` (N, 2):
    the offset and scale that map its outputs back to the target's units, and its ``position``: the
    row of its series where its forecast starts (what rolling-origin folds order windows by)."""

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    keys: np.ndarray
    weight: np.ndarray | None = None
    origin: np.ndarray | None = None
    position: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, index: np.ndarray | None) -> SplitTensors:
        """The examples at ``index`` (a copy), or ``self`` when ``index`` is ``None``."""
        if index is None:
            return self
        return SplitTensors(*(None if a is None else a[index] for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray | None, ...]:
        """Every per-example array, in field order (``None`` where the task has none)."""
        return self.x, self.lengths, self.y, self.keys, self.weight, self.origin, self.position


def concat_splits(parts: list[SplitTensors]) -> SplitTensors:
    """Examples of several splits in one (a copy; inputs padded to the longest)."""
    parts = [p for p in parts if len(p)] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    steps = max(p.x.shape[1] for p in parts)
    xs = [np.pad(p.x, ((0, 0), (0, steps - p.x.shape[1]), (0, 0))) for p in parts]
    cols = list(zip(*(p.arrays()[1:] for p in parts)))
    rest = [None if any(a is None for a in col) else np.concatenate(col) for col in cols]
    return SplitTensors(np.concatenate(xs), *rest)


def split_from_column(df: pd.DataFrame, split_col: str, path: Path) -> np.ndarray:
    s = df[split_col].astype("string").str.strip().str.lower()
    s = s.replace({"validation": "val", "valid": "val", "dev": "val"})
    bad = ~s.isin(SPLITS) | s.isna()
    if bad.any():
        values = sorted(set(df[split_col][bad].astype(str).unique()))[:5]
        raise UserError(f"{path}: column {split_col!r} has values other than train/val/test: "
                        f"{', '.join(values)} (line {int(np.flatnonzero(bad.to_numpy())[0]) + 2})")
    return s.to_numpy(dtype=object)


def _assign_sequences(n: int, labels: np.ndarray | None, opts: DataOptions) -> np.ndarray:
    """Random (stratified where possible) train/val/test assignment of whole sequences."""
    from cellsearch.data.options import AUTO_TEST_SHARE

    rng = np.random.default_rng(opts.seed)
    out = np.empty(n, dtype=object)
    share = opts.test_share(round(n * AUTO_TEST_SHARE))
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = int(round(len(idx) * share))
        n_val = int(round(len(idx) * opts.val_size))
        if len(idx) >= 3:
            n_test = max(n_test, 1 if share > 0 else 0)
            n_val = max(n_val, 1 if opts.val_size > 0 else 0)
        out[idx[:n_test]] = "test"
        out[idx[n_test:n_test + n_val]] = "val"
        out[idx[n_test + n_val:]] = "train"
    return out


def sequence_splits(given: np.ndarray | None, first: pd.Series, task: str, opts: DataOptions,
                     path: Path) -> np.ndarray:
    """One set per sequence: as the split column gives it, else random (stratified by class for
    classification); the training set must not be empty."""
    if given is None:
        from cellsearch.tasks import get_task

        strat = first.astype(str).to_numpy() if get_task(task).labels else None
        given = _assign_sequences(len(first), strat, opts)
    if not (given == "train").any():
        raise UserError(f"{path}: the training split is empty")
    return given


def split_order(assign: np.ndarray) -> np.ndarray:
    """Sequences renumbered split by split (train, val, test; file order within each), so that each
    split is a contiguous view of one array."""
    return np.concatenate([np.flatnonzero(assign == s) for s in SPLITS])


def split_views(x: np.ndarray, seq_order: np.ndarray, assign: np.ndarray, lengths: np.ndarray, y: np.ndarray,
                 keys: np.ndarray) -> dict[str, SplitTensors]:
    """Each split as views of ``x`` (already in ``seq_order``), with its lengths, targets and keys."""
    bounds = np.cumsum([0] + [int((assign == s).sum()) for s in SPLITS])
    lengths, y, keys = lengths[seq_order], y[seq_order], keys[seq_order]
    return {s: SplitTensors(x[a:b], lengths[a:b], y[a:b], keys[a:b])
            for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}
