"""``TrialRecord``: everything one trial leaves in its study, as one typed record.

The objective writes it (``write``: Optuna user attributes, JSON values, so that every process and
machine sharing the study reads them), and the Pareto front, the pruning rules, export and refit
read it back by attribute (``TrialRecord.of(trial)``) — never by string key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

#: How a trial's training ended.
StoppedBy = Literal["early_stopping", "max_steps", "time_limit", ""]


@dataclass(kw_only=True)
class TrialRecord:
    """One trial's record. Fields left at their defaults were not (or not yet) recorded: a trial
    writes its architecture and costs when it starts, its scores and files when it completes, and
    its curve, fold scores and ``reason`` when it is pruned or fails.

    Args:
        arch: the architecture tag (``gru64-lstm32/p8``); spec: the ``ModelSpec`` as a dict.
        train_cfg: the ``TrainOptions`` as a dict; folds: the number of folds it trains.
        costs: its measured costs by attribute name (``cellsearch.costs.COSTS``: ``macs``, ``params``,
            ``latency_ms``) — of all its fold models; stored as attributes of their own.
        curve: the validation score at each check of fold 1 (the dashboard's learning curve).
        rungs: the best smoothed validation loss of fold 1 at each step rung it reached, and race:
            the mean of that over its first 1, 2, ... folds (``cellsearch.pruning`` compares these).
        val_score, val_spread: mean and spread of the folds' best scores; fold_scores: each fold's.
        oof_loss, fold_losses: the continuous out-of-fold loss that breaks ties, over all rows and
            fold by fold.
        best_epoch, epochs, steps, best_steps, fold_sizes, batch_size, train_seconds, stopped_by:
            how training went (``best_steps`` and ``fold_sizes`` size a refit); together: its folds
            trained together as one batched model (``cellsearch.foldbatch``).
        checkpoint, oof: its fold models and out-of-fold outputs, relative to the run directory;
            checkpoint_uri, oof_uri: the same as MLflow artifacts (another machine exports from them).
        reason: why it was pruned or failed.
    """

    arch: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    train_cfg: dict[str, Any] = field(default_factory=dict)
    folds: int = 1
    costs: dict[str, float] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)
    rungs: list[float] = field(default_factory=list)
    race: list[float] = field(default_factory=list)
    val_score: float | None = None
    val_spread: float | None = None
    fold_scores: list[float] = field(default_factory=list)
    oof_loss: float | None = None
    fold_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    epochs: int | None = None
    steps: int | None = None
    best_steps: list[int] = field(default_factory=list)
    fold_sizes: list[int] = field(default_factory=list)
    batch_size: int | None = None
    train_seconds: float | None = None
    stopped_by: StoppedBy = ""
    together: bool = False
    checkpoint: str | None = None
    oof: str | None = None
    checkpoint_uri: str | None = None
    oof_uri: str | None = None
    reason: str | None = None

    #: What a complete trial adds to what its start recorded (``arch``, ``spec``, ``train_cfg``,
    #: ``folds``, the costs it measured then).
    RESULTS: ClassVar[tuple[str, ...]] = (
        "costs", "curve", "val_score", "val_spread", "fold_scores", "oof_loss", "fold_losses", "best_epoch", "epochs",
        "steps", "best_steps", "fold_sizes", "batch_size", "train_seconds", "stopped_by", "checkpoint", "oof",
        "checkpoint_uri", "oof_uri")

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record a trial (``optuna.trial.FrozenTrial`` or a live ``Trial``) holds; attributes
        that are not the record's (written by other versions) are ignored."""
        from cellsearch.costs import COSTS

        attrs = trial.user_attrs
        known = {f.name for f in fields(cls)} - {"costs"}
        costs = {c.attr: attrs[c.attr] for c in COSTS.values() if attrs.get(c.attr) is not None}
        return cls(**{k: v for k, v in attrs.items() if k in known}, costs=costs)

    @property
    def complete(self) -> bool:
        """Whether the trial finished training every fold and recorded its score."""
        return self.val_score is not None

    def write(self, trial: Any, *names: str) -> None:
        """Store the named fields (all fields when none are named) as the trial's user attributes."""
        values = asdict(self)
        for name in names or tuple(values):
            if name == "costs":
                for attr, v in self.costs.items():
                    trial.set_user_attr(attr, v)
            else:
                trial.set_user_attr(name, values[name])
