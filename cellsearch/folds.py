"""Cross-validation: the folds a trial trains on, made once per process over the non-test examples.

* ``K = 1``: one validation split: the dataset's own (a ``split`` column's), else a share of the
  training examples set aside by the folds themselves (``tune`` reads the file without a validation
  split, once, whatever K turns out to be).
* ``K > 1`` over whole sequences: each example in exactly one validation fold, stratified by class
  for classification; reproducible from the seed.
* ``K > 1`` over forecast windows (examples with a ``position``): rolling origin. Fold ``j``
  validates each series' window whose forecast starts ``(K - j) x horizon`` rows before the end of
  its non-test part, and trains only on windows whose forecast ends by then; folds run from the
  earliest origin to the latest.

A fold is index views into one pool of examples (``Part``): the tensors are built once, never per
fold. The out-of-fold rows (``Folds.oof``) are the folds' validation rows in fold order; every
complete trial's predictions on them are what the ensemble selection (``cellsearch.ensemble``)
combines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellsearch.data import Dataset, SplitTensors
from cellsearch.data.splits import concat_splits
from cellsearch.errors import UserError
from cellsearch.tasks import get_task

#: ``--cv auto`` cross-validates data with at most this many sequences (forecasting: windows).
AUTO_MAX_EXAMPLES = 2000
#: ``--cv auto`` validates forecasts on rolling origins up to this many windows: a window is a few
#: horizons of steps (a sequence may be thousands), and one holdout is one stretch of time — a yearly
#: panel of 2,522 windows whose final stretch held a recession scored test MASE 3.71 on one holdout
#: (the networks won it, 2.48 against naive's 2.84) and 2.70 on five origins (naive 2.95).
AUTO_MAX_WINDOWS = 10_000
#: ``--cv auto``'s number of folds.
AUTO_K = 5


def resolve_cv(cv: str | int, n_examples: int, limit: int = AUTO_MAX_EXAMPLES) -> int:
    """The number of folds of ``--cv``: a number, or ``auto`` (``AUTO_K`` for at most ``limit``
    examples, else 1)."""
    if cv == "auto":
        return AUTO_K if n_examples <= limit else 1
    try:
        k = int(cv)
    except (TypeError, ValueError):
        raise UserError(f"--cv must be a number of folds or 'auto', got {cv!r}") from None
    if k < 1:
        raise UserError(f"--cv must be at least 1, got {k}")
    return k


@dataclass
class Part:
    """Rows ``index`` of ``split`` (all of it when ``index`` is ``None``)."""

    split: SplitTensors
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.split) if self.index is None else len(self.index)

    def tensors(self) -> SplitTensors:
        """The rows as a split of their own (a copy unless the part is a whole split)."""
        return self.split.take(self.index)


@dataclass
class Fold:
    """One training part and the validation part it is scored on."""

    train: Part
    val: Part


@dataclass
class Folds:
    """The folds of a search and their out-of-fold rows (``oof``: the validation rows in fold order,
    ``oof_fold``: each one's fold)."""

    folds: list[Fold]
    kind: str
    oof: SplitTensors
    oof_fold: np.ndarray
    validated: bool = True

    @property
    def k(self) -> int:
        return len(self.folds)

    def describe(self) -> str:
        """In words, for the summary and MLflow (``5 folds, stratified``); ``is_holdout`` reads it back."""
        return HOLDOUT if self.kind == "holdout" else f"{self.k} folds, {self.kind}"


#: How ``Folds.describe`` says a search validated on one split.
HOLDOUT = "holdout (one validation split)"


def is_holdout(description: str) -> bool:
    """Whether a study's ``cv`` (``Folds.describe``) says it validated on one split."""
    return description == HOLDOUT


def holdout_fold(dataset: Dataset) -> Fold:
    """The dataset's own train/validation split as a fold; an empty validation split scores on the
    training split (the loader warned)."""
    train, val = dataset.splits["train"], dataset.splits["val"]
    return Fold(Part(train), Part(val if len(val) else train))


def _shuffled(n: int, k: int, labels: np.ndarray | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, val) indices of ``k`` folds of ``n`` examples, stratified by ``labels`` when given."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    offset = 0
    for idx in groups:  # deal each class round the folds, continuing where the last class stopped
        idx = rng.permutation(idx)
        fold_of[idx] = (offset + np.arange(len(idx))) % k
        offset += len(idx)
    return [(np.flatnonzero(fold_of != j), np.flatnonzero(fold_of == j)) for j in range(k)]


def _rolling(pool: SplitTensors, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, val) indices of ``k`` rolling-origin folds of forecast windows (see the module doc)."""
    horizon = int(np.asarray(pool.y).reshape(len(pool), -1).shape[1])
    _, series = np.unique(pool.keys.astype(str), return_inverse=True)
    end = np.zeros(series.max() + 1, dtype=np.int64)
    np.maximum.at(end, series, pool.position + horizon)
    out = []
    for j in range(k):
        origin = (end - (k - j) * horizon)[series]
        val = np.flatnonzero(pool.position == origin)
        train = np.flatnonzero(pool.position + horizon <= origin)
        if len(val) and len(train):
            out.append((train, val))
    return out


def _time_holdout(pool: SplitTensors, val_size: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """One split of forecast windows by time: each series' windows forecasting its last ``val_size``
    (at least one horizon) validate, those whose forecast ends before train; a series too short to
    have both only trains."""
    horizon = int(np.asarray(pool.y).reshape(len(pool), -1).shape[1])
    _, series = np.unique(pool.keys.astype(str), return_inverse=True)
    end = np.zeros(series.max() + 1, dtype=np.int64)
    np.maximum.at(end, series, pool.position + horizon)
    origin = end - np.maximum(horizon, np.round(end * val_size).astype(np.int64))
    origin = np.where(origin >= horizon + 1, origin, end + 1)  # too short: no validation window
    val = np.flatnonzero(pool.position >= origin[series])
    train = np.flatnonzero(pool.position + horizon <= origin[series])
    return [(train, val)] if len(train) and len(val) else []


def make_folds(dataset: Dataset, k: int, seed: int = 0, val_size: float = 0.15) -> Folds:
    """The folds of a search (see the module doc). ``k`` is reduced where the data cannot fill it; with
    fewer than two usable folds the search uses one validation split: the dataset's own, or — read
    without one, as ``tune`` reads — a ``val_size`` share carved from the training examples
    (stratified sequences; each series' last part). With nothing to validate on, the one fold scores
    on the training data and ``Folds.validated`` is false."""
    train, val = dataset.splits["train"], dataset.splits["val"]
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    kind = "holdout"
    pool = train
    if k > 1:
        pool = concat_splits([train, val]) if len(val) else train
        if pool.position is not None:
            pairs, kind = _rolling(pool, k), "rolling origin"
        else:
            classify = get_task(dataset.task).labels
            n = len(pool)
            pairs = _shuffled(n, min(k, n // 2), np.asarray(pool.y) if classify else None, seed) if n >= 4 else []
            kind = "stratified" if classify else "shuffled"
        pairs = [(tr, va) for tr, va in pairs if len(tr) and len(va)]
        if len(pairs) < 2:
            pairs, kind, pool = [], "holdout", train
    if not pairs and not len(val) and val_size > 0 and len(train) >= 4:
        if train.position is not None:
            pairs = _time_holdout(train, val_size)
        else:
            labels = np.asarray(train.y) if get_task(dataset.task).labels else None
            pairs = _shuffled(len(train), max(2, round(1 / val_size)), labels, seed)[:1]
    if pairs:
        folds = [Fold(Part(pool, tr), Part(pool, va)) for tr, va in pairs]
    else:
        folds = [holdout_fold(dataset)]
    oof = concat_splits([f.val.tensors() for f in folds])
    oof_fold = np.concatenate([np.full(len(f.val), j, dtype=np.int64) for j, f in enumerate(folds)])
    return Folds(folds, kind, oof, oof_fold, validated=bool(pairs) or len(val) > 0)


def row_losses(task: str, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each example's continuous loss (``Task.row_losses``): log-loss of the class scores for
    classification, mean squared error of the model's (scaled) outputs otherwise."""
    return get_task(task).row_losses(pred, y)


def oof_loss(task: str, pred: np.ndarray, split: SplitTensors) -> float:
    """The continuous out-of-fold loss that breaks ties between equal scores: the mean of
    ``row_losses`` (log-loss for classification, mean squared error of the scaled outputs otherwise)."""
    if not len(pred):
        return float("nan")
    return float(np.mean(row_losses(task, pred, split.y)))


def fold_losses(task: str, pred: np.ndarray, folds: Folds) -> list[float]:
    """The out-of-fold loss (``oof_loss``), fold by fold: what the knee pairs by fold."""
    losses = row_losses(task, pred, np.asarray(folds.oof.y))
    return [float(np.mean(losses[folds.oof_fold == j])) for j in range(folds.k)]


def fold_scores(task: str, pred: np.ndarray, folds: Folds, target_scale: float = 1.0) -> list[float]:
    """The task's score of out-of-fold predictions, fold by fold."""
    from cellsearch.metrics import score

    out = []
    y, w = np.asarray(folds.oof.y), folds.oof.weight
    for j in range(folds.k):
        m = folds.oof_fold == j
        out.append(score(task, pred[m], y[m], target_scale, None if w is None else w[m]))
    return out
