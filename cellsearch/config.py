"""``TuneConfig``: every option of a search in one frozen, keyword-only object.

The CLI and ``cellsearch.tune(...)`` build it; the search, the objective, the tracker and every
worker process read it whole (workers get it as JSON). Adding an option means a field here, a flag
in ``cli.py`` and the code that uses it — nothing else forwards it.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from cellsearch.data.options import DataOptions
from cellsearch.errors import UserError

Objective = Literal["pareto", "score"]
Pick = Literal["knee", "best", "smallest"]
Device = Literal["cpu", "cuda", "auto"]
FoldBatching = Literal["auto", "on", "off"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
#: A study name: letters, digits, ``-``, ``_`` and ``.``, not starting with a dot (it names a folder
#: under the run directory and must never leave it).
#: Finished trials a search holds when neither ``trials`` nor ``timeout`` is given ...
DEFAULT_TRIALS = 20
#: ... and the count that stands for "until the clock runs out" when only ``timeout`` is.
UNBOUNDED_TRIALS = 10 ** 9
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
PICKS: tuple[Pick, ...] = get_args(Pick)
DEVICES: tuple[Device, ...] = get_args(Device)
FOLD_BATCHING: tuple[FoldBatching, ...] = get_args(FoldBatching)


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """One search.

    Args:
        data: the CSV file.
        data_options: how to read it (layout, columns, task, window, horizon, fill, seed).
        space: a shipped search space by name or a YAML path.
        trials: finished (complete or pruned) trials the study should hold; resumes count. ``None``:
            ``DEFAULT_TRIALS``, or as many as ``timeout`` allows when it is given (``trial_target``).
        timeout: seconds for the whole search counted from ``started_at``, final steps included.
        objective: ``pareto`` (score and cost) or ``score`` (score alone).
        cost: the compute cost to minimise, a key of ``cellsearch.costs.COSTS``.
        pick: which Pareto-front member is chosen: knee, best or smallest.
        study: the study name (default: the file's stem).
        run_dir: where the study, checkpoints and the MLflow store live.
        storage: an Optuna storage URL instead of the run directory's own.
        tracking_uri: an MLflow tracking URI instead of the run directory's own.
        track: record in MLflow.
        references: also fit and score the simple reference models (``cellsearch.references``).
        max_epochs: overrides the space's; trial_timeout: seconds per trial at most.
        prune: stop hopeless trials early.
        networks_only: keep the references out of the ensembles (``cellsearch.refmembers``).
        cv: folds per trial (``cellsearch.folds``): a number, or ``auto`` (5 for at most 2,000
            sequences or windows, else 1: one validation split).
        fold_batching: how a trial's folds train: ``auto`` (together as one batched model where a
            quick measurement says it is faster, ``cellsearch.foldbatch``; on the CPU), ``on``
            (together on the CPU wherever the model can run batched) or ``off`` (one by one).
        ensemble: also select ensembles of trials on their out-of-fold predictions (``cellsearch.ensemble``).
        workers: processes on this machine sharing the study: a number, or ``auto`` (one per CPU
            core, at most ``cellsearch.workers.AUTO_MAX``; the CLI's default). The models searched
            are small: one trial gains little from a second core, a second trial all of it.
        verbose: Lightning's own output; progress: the live progress display.
        device: cpu, cuda or auto.
        started_at: when the search started (``time.time()``); the CLI passes its own start so
            that imports and loading count against ``timeout``.
    """

    data: Path
    data_options: DataOptions = field(default_factory=DataOptions)
    space: str = "default"
    trials: int | None = None
    timeout: float | None = None
    objective: Objective = "pareto"
    cost: str = "macs"
    pick: Pick = "knee"
    study: str | None = None
    run_dir: Path = Path("cellsearch-runs")
    storage: str | None = None
    tracking_uri: str | None = None
    track: bool = True
    references: bool = True
    max_epochs: int | None = None
    trial_timeout: float | None = None
    prune: bool = True
    networks_only: bool = False
    cv: str | int = "auto"
    fold_batching: FoldBatching = "auto"
    ensemble: bool = True
    workers: int | str = 1
    verbose: bool = False
    progress: bool = True
    device: Device = "cpu"
    started_at: float = field(default_factory=time.time)

    @classmethod
    def create(cls, data: str | Path, **options: Any) -> TuneConfig:
        """A config from keyword options: fields of ``TuneConfig`` and of ``DataOptions`` alike
        (``None`` leaves a field at its default). An unknown option is a ``UserError``."""
        own = {f.name for f in fields(cls)} - {"data", "data_options"}
        data_fields = {f.name for f in fields(DataOptions)}
        unknown = set(options) - own - data_fields
        if unknown:
            raise UserError(f"unknown tune option(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in options.items() if v is not None}
        data_opts = DataOptions(**{k: v for k, v in given.items() if k in data_fields})
        mine = {k: v for k, v in given.items() if k in own}
        for k in ("run_dir",):
            if k in mine:
                mine[k] = Path(mine[k])
        if "space" in mine:
            mine["space"] = str(mine["space"])
        return cls(data=Path(data), data_options=data_opts, **mine)

    @property
    def trial_target(self) -> int:
        """Finished trials the study should hold: ``trials``; when not given, ``DEFAULT_TRIALS``, or
        no limit but the clock when ``timeout`` is (``--timeout 600`` spends ten minutes)."""
        if self.trials is not None:
            return self.trials
        return DEFAULT_TRIALS if self.timeout is None else UNBOUNDED_TRIALS

    @property
    def seed(self) -> int:
        """One seed for splits, sampling and training (``--seed``)."""
        return self.data_options.seed

    @property
    def study_name(self) -> str:
        """``--study``, else the file's name made safe (other characters become ``_``)."""
        if self.study:
            return self.study
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.data.stem).lstrip(".")[:200] or "study"

    @property
    def deadline(self) -> float | None:
        """When trials must stop: the timeout less a reserve (a tenth, at most 30 s) for what comes
        after the last trial — its checkpoint and costs, ensemble selection, test scoring, reporting
        (a fixed 15 s was too little on a loaded 2-core machine)."""
        if self.timeout is None:
            return None
        return self.started_at + self.timeout - min(30.0, 0.1 * self.timeout)

    def validate(self) -> None:
        """Raise ``UserError`` naming the first bad option."""
        from cellsearch.costs import COSTS

        self.data_options.validate()
        for name, value, allowed in (("objective", self.objective, OBJECTIVES), ("cost", self.cost, tuple(COSTS)),
                                     ("pick", self.pick, PICKS), ("device", self.device, DEVICES),
                                     ("fold-batching", self.fold_batching, FOLD_BATCHING)):
            if value not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name, what in (("cv", "folds"), ("workers", "processes")):
            value = getattr(self, name)
            if value != "auto" and not (str(value).isdigit() and int(value) >= 1):
                raise UserError(f"--{name} must be a number of {what} (at least 1) or 'auto', got {value!r}")
        if self.trials is not None and self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise UserError(f"--max-epochs must be at least 1, got {self.max_epochs}")
        for name in ("timeout", "trial_timeout"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v}")
        if self.study is not None and not STUDY_NAME.fullmatch(self.study):
            raise UserError(f"--study must be letters, digits, '-', '_' or '.' (not starting with a dot, no "
                            f"path separators), got {self.study!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (for worker processes)."""
        d = asdict(self)
        d["data"], d["run_dir"] = str(self.data), str(self.run_dir)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneConfig:
        d = dict(d)
        return cls(**{**d, "data": Path(d["data"]), "run_dir": Path(d["run_dir"]),
                      "data_options": DataOptions(**d["data_options"])})

    def replace(self, **changes: Any) -> TuneConfig:
        return replace(self, **changes)
