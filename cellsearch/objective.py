"""One trial: suggest → build → train → score → record (Optuna's define-by-run objective).

In multi-objective studies, where Optuna's pruners do not apply, a median-stopping rule of our own
ends hopeless trials (``MedianStopper``): after ``warmup`` epochs, a trial whose best score so far is
worse than the median of the finished trials' best-so-far at the same epoch is pruned. With
``objective="score"`` Optuna's own pruner decides from the reported epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cellsearch.study import SearchContext
from cellsearch.tracking import Tracker


class MedianStopper:
    """Prune a trial whose best-so-far score at epoch k is worse than the median of the finished
    trials' best-so-far at k (after ``warmup`` epochs, once ``min_trials`` curves reach k)."""

    def __init__(self, curves: list[list[float]], direction: str, warmup: int = 2, min_trials: int = 4) -> None:
        self.direction = direction
        self.warmup = warmup
        self.min_trials = min_trials
        better = max if direction == "maximize" else min
        self.best_so_far = []
        for curve in curves:
            acc, run = [], None
            for v in curve:
                run = v if run is None else better(run, v)
                acc.append(run)
            self.best_so_far.append(acc)
        self.mine: float | None = None

    def should_stop(self, epoch: int, score: float) -> bool:
        better = max if self.direction == "maximize" else min
        self.mine = score if self.mine is None else better(self.mine, score)
        if epoch < self.warmup:
            return False
        at_k = [c[epoch] for c in self.best_so_far if len(c) > epoch]
        if len(at_k) < self.min_trials:
            return False
        at_k.sort()
        median = at_k[len(at_k) // 2] if len(at_k) % 2 else 0.5 * (at_k[len(at_k) // 2 - 1] + at_k[len(at_k) // 2])
        return self.mine < median if self.direction == "maximize" else self.mine > median


def _finished_curves(study: Any) -> list[list[float]]:
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        curve = t.user_attrs.get("curve")
        if curve:
            out.append(curve)
    return out


class SurplusTrialError(RuntimeError):
    """Another process took the study's last slot at the same moment; this trial does not run."""


def _claims_slot(trial: Any, target_count: int) -> bool:
    """True when fewer than ``target_count`` earlier trials are finished or running: trial numbers
    are handed out atomically by the storage, so concurrent processes never overshoot the count."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
    return len(earlier) < target_count


def _outcome(exc: BaseException) -> tuple[str, str, BaseException]:
    """How a trial that raised ends: (state, reason, the exception to raise to Optuna).

    Pruning and a non-finite loss end the trial pruned (the search goes on); Ctrl-C and any other
    error end it failed and propagate.
    """
    import optuna

    from cellsearch.train import NonFiniteLossError

    if isinstance(exc, optuna.TrialPruned):
        return "PRUNED", str(exc), exc
    if isinstance(exc, NonFiniteLossError):
        return "PRUNED", str(exc), optuna.TrialPruned(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return "FAILED", "interrupted (Ctrl-C)", exc
    return "FAILED", f"{type(exc).__name__}: {exc}", exc


@dataclass(kw_only=True, eq=False)
class Objective:
    """Define-by-run objective: reads the space, builds a model, trains it, records everything.

    Args:
        ctx: the search context (config, data, space, study, run directory).
        tracker: where the trial's run is recorded.
        seed: this process's base seed (a trial's seed is ``seed + trial.number``).
        target_count: the study's trial count; a trial beyond it is refused (``SurplusTrialError``).
    """

    ctx: SearchContext
    tracker: Tracker
    seed: int
    target_count: int | None = field(default=None)

    def __call__(self, trial: Any) -> Any:
        from cellsearch.costs import measure_costs
        from cellsearch.space import DataShape
        from cellsearch.train import fit

        ctx, config = self.ctx, self.ctx.config
        if self.target_count is not None and not _claims_slot(trial, self.target_count):
            trial.set_user_attr("reason", "surplus: the study was already full")
            raise SurplusTrialError("the study already holds the requested number of trials")
        cfg = ctx.space.suggest(trial, DataShape(length=self._length, task=ctx.dataset.task, season=self._season[0]))
        seed = self.seed + trial.number
        model = self._build(cfg, seed)
        costs = measure_costs(model, self._length)
        for k, v in {"arch": model.spec.arch, "spec": model.spec.to_dict(), **costs}.items():
            trial.set_user_attr(k, v)
        run = self.tracker.start_trial(trial.number, model.spec, cfg)
        curve: list[float] = []
        try:
            res = fit(model, ctx.dataset, lr=float(cfg["lr"]), batch_size=cfg["batch_size"],
                      max_epochs=config.max_epochs or cfg["max_epochs"], patience=cfg["patience"],
                      min_steps=cfg["min_steps"], forecast_loss=cfg["forecast_loss"],
                      weight_decay=float(cfg["weight_decay"]), seed=seed, max_seconds=self._budget(),
                      on_epoch=self._epoch_hook(trial, run, curve), verbose=config.verbose,
                      accelerator=ctx.accelerator)
        except (Exception, KeyboardInterrupt) as exc:
            state, reason, error = _outcome(exc)
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("reason", reason)
            run.finish(state, reason=reason)
            if error is exc:
                raise
            raise error from None
        return self._record(trial, run, res, costs, curve)

    @property
    def _season(self) -> tuple[int, int]:
        """(season, target channel) of the data, for a seasonal naive base."""
        from cellsearch.data import get_layout

        prep = self.ctx.dataset.preprocessing
        return get_layout(prep.layout).seasonality(prep)

    @property
    def _length(self) -> int:
        """The sequence length costs are measured at: the data's median."""
        return int(self.ctx.dataset.info["length"]["median"])

    def _build(self, cfg: dict[str, Any], seed: int) -> Any:
        """The trial's model, from the drawn configuration, initialised from ``seed``."""
        import torch

        from cellsearch.model import ModelSpec, build
        from cellsearch.stack import LayerSpec

        ds = self.ctx.dataset
        spec = ModelSpec(input_size=ds.n_features, layers=tuple(LayerSpec(*layer) for layer in cfg["layers"]),
                         n_outputs=ds.n_outputs, task=ds.task, dropout=float(cfg["dropout"]), patch=cfg["patch"],
                         pooling=cfg["pooling"], normalize=cfg["normalize"],
                         season=self._season[0] if cfg["seasonal_base"] else 0, target_index=self._season[1])
        torch.manual_seed(seed)
        return build(spec)

    def _budget(self) -> float | None:
        """Seconds this trial may train: ``--trial-timeout``, and what is left of ``--timeout``."""
        import optuna

        config = self.ctx.config
        budget = config.trial_timeout
        if config.deadline is not None:
            left = config.deadline - time.time()
            budget = left if budget is None else min(budget, left)
            if budget <= 1:
                raise optuna.TrialPruned("no time left in --timeout")
        return budget

    def _epoch_hook(self, trial: Any, run: Any, curve: list[float]) -> Any:
        """After each validation: record the epoch, and prune (Optuna's pruner or the median rule)."""
        import optuna

        ctx, config = self.ctx, self.ctx.config
        stopper = (MedianStopper(_finished_curves(trial.study), ctx.direction)
                   if config.objective == "pareto" and config.prune else None)

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            curve.append(m["val_score"])
            run.log_epoch(epoch, m)
            if config.objective == "score":
                trial.report(m["val_score"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned by Optuna's pruner at epoch {epoch}")
            elif stopper is not None and stopper.should_stop(epoch, m["val_score"]):
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: best {ctx.metric} so far is worse than the "
                                         "median of finished trials at this epoch")

        return on_epoch

    def _record(self, trial: Any, run: Any, res: Any, costs: dict[str, float], curve: list[float]) -> Any:
        """Save the checkpoint, record the finished trial, return the objective values."""
        from cellsearch.costs import ALWAYS, cost_value, measure_costs
        from cellsearch.model import save_checkpoint

        ctx, config = self.ctx, self.ctx.config
        # Costs that need the trained model (latency) are measured on it, once.
        if config.cost not in ALWAYS:
            costs = {**costs, **measure_costs(res.model, self._length, [config.cost])}
        ckpt = ctx.sdir / "trials" / f"{trial.number}.pt"
        save_checkpoint(ckpt, res.model, trial=trial.number, val_score=res.best_score, epoch=res.best_epoch)
        attrs = {"curve": curve, "val_score": res.best_score, "checkpoint_uri": run.log_file(ckpt, "checkpoint"),
                 "best_epoch": res.best_epoch, "epochs": res.epochs, "steps": res.steps,
                 "batch_size": res.batch_size, "train_seconds": res.train_seconds,
                 "stopped_by": res.stopped_by, "checkpoint": str(ckpt), **costs}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        run.finish("FINISHED", metrics={"val_score_best": res.best_score, **costs, "train_seconds": res.train_seconds,
                                        "epochs": res.epochs, "steps": res.steps})
        if config.objective == "score":
            return res.best_score
        return res.best_score, cost_value(config.cost, attrs)
