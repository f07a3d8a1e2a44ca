"""One trial: suggest → build → train → score → record (Optuna's define-by-run objective).

In multi-objective studies, where Optuna's pruners do not apply, a median-stopping rule of our own
ends hopeless trials (``MedianStopper``): after ``warmup`` epochs, a trial whose best score so far is
worse than the median of the finished trials' best-so-far at the same epoch is pruned. With
``objective="score"`` Optuna's own pruner decides from the reported epochs.

Cross-validated trials race over their folds: after each fold but the last, a trial whose mean score
so far is worse than the median of the finished trials' mean over the same first folds stops there
(``behind_after_folds``; with ``objective="score"``, Optuna's pruner sees that mean after each
fold). The K-fold cost is paid only by trials that stay in the running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cellsearch.context import SearchContext
from cellsearch.records import TrialRecord
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
        curve = TrialRecord.of(t).curve
        if curve:
            out.append(curve)
    return out


def behind_after_folds(study: Any, n_folds: int, mean: float, direction: str, min_trials: int = 3) -> bool:
    """Racing over folds: whether a trial's mean score over its first ``n_folds`` folds is worse than
    the median of the same mean over the finished trials that got that far (complete, or pruned
    later; at least ``min_trials`` of them). Most trials then stop after one or two folds; the
    promising ones earn all K."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    means = sorted(float(sum(f[:n_folds]) / n_folds) for t in study.get_trials(deepcopy=False, states=states)
                   if len(f := TrialRecord.of(t).fold_scores) >= n_folds)
    if len(means) < min_trials:
        return False
    mid = len(means) // 2
    median = means[mid] if len(means) % 2 else 0.5 * (means[mid - 1] + means[mid])
    return mean < median if direction == "maximize" else mean > median


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
    _started: float = field(default=0.0, init=False, repr=False)

    def __call__(self, trial: Any) -> Any:
        from cellsearch.costs import measure_costs
        from cellsearch.searchdata import data_shape

        ctx = self.ctx
        if self.target_count is not None and not _claims_slot(trial, self.target_count):
            TrialRecord(reason="surplus: the study was already full").write(trial, "reason")
            raise SurplusTrialError("the study already holds the requested number of trials")
        seed = self.seed + trial.number
        try:
            cfg = ctx.space.suggest(trial, data_shape(ctx.dataset))
            model = self._build(cfg, seed)
            costs = measure_costs(model, self._length)
            options = self._options(cfg)
        except Exception as exc:  # a model that cannot be built: the trial fails, saying why
            TrialRecord(reason=f"{type(exc).__name__}: {exc}").write(trial, "reason")
            raise
        TrialRecord(arch=model.spec.arch, spec=model.spec.to_dict(), train_cfg=options.to_dict(), folds=ctx.folds.k,
                    costs=costs).write(trial, "arch", "spec", "train_cfg", "folds", "costs")
        run = self.tracker.start_trial(trial.number, model.spec, cfg)
        curve: list[float] = []
        results: list[Any] = []
        try:
            self._train_folds(trial, run, cfg, options, model, seed, curve, results)
        except (Exception, KeyboardInterrupt) as exc:
            state, reason, error = _outcome(exc)
            # the folds it finished
            TrialRecord(curve=curve, fold_scores=[float(r.best_score) for r in results], reason=reason).write(
                trial, "curve", "fold_scores", "reason")
            run.finish(state, reason=reason)
            if error is exc:
                raise
            raise error from None
        return self._record(trial, run, results, curve)

    def _options(self, cfg: dict[str, Any]) -> Any:
        """The trial's ``TrainOptions``: what it drew, with ``--max-epochs`` in place of the space's
        (and then no step cap beyond it)."""
        from cellsearch.train import TrainOptions

        override = self.ctx.config.max_epochs
        return TrainOptions.from_dict({**cfg, "max_epochs": override or cfg["max_epochs"],
                                       "max_steps": 0 if override else cfg["max_steps"]})

    def _train_folds(self, trial: Any, run: Any, cfg: dict[str, Any], options: Any, model: Any, seed: int,
                     curve: list[float], results: list[Any]) -> None:
        """Train one model per fold (``cellsearch.folds``); after each fold, single-objective studies
        report the mean score so far to Optuna's pruner."""
        import numpy as np
        import optuna

        from cellsearch.train import fit

        ctx, config = self.ctx, self.ctx.config
        self._started = time.time()
        for k, fold in enumerate(ctx.folds.folds):
            if k:
                model = self._build(cfg, seed)
            results.append(fit(
                model, ctx.dataset, options, fold=fold, seed=seed + 1009 * k, max_seconds=self._budget(),
                on_epoch=self._epoch_hook(trial, run, curve, k), verbose=config.verbose,
                accelerator=ctx.accelerator))
            if ctx.folds.k == 1 or not config.prune:
                continue
            mean = float(np.mean([r.best_score for r in results]))
            last = k + 1 == ctx.folds.k
            if config.objective == "score":
                trial.report(mean, k)
                if not last and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned by Optuna's pruner after fold {k + 1} of {ctx.folds.k}")
            elif not last and behind_after_folds(trial.study, k + 1, mean, ctx.direction):
                raise optuna.TrialPruned(f"pruned after fold {k + 1} of {ctx.folds.k}: its mean {ctx.metric} so "
                                         "far is worse than the median of finished trials' first folds")

    @property
    def _season(self) -> tuple[int, int]:
        """(season, target channel) of the data, for a seasonal naive base."""
        from cellsearch.data import get_layout

        prep = self.ctx.dataset.preprocessing
        return get_layout(prep.layout).seasonality(prep)

    @property
    def _length(self) -> int:
        """The sequence length costs are measured at: the data's median."""
        from cellsearch.searchdata import data_shape

        return data_shape(self.ctx.dataset).length

    def _build(self, cfg: dict[str, Any], seed: int) -> Any:
        """The trial's model, from the drawn configuration, initialised from ``seed``."""
        import torch

        from cellsearch.data.encoders import input_groups
        from cellsearch.model import InputSpec, ModelSpec, build
        from cellsearch.stack import LayerSpec

        ds = self.ctx.dataset
        inputs = tuple(InputSpec(*group) for group in input_groups(ds.preprocessing))
        spec = ModelSpec(input_size=ds.n_features, inputs=inputs,
                         layers=tuple(LayerSpec(*layer) for layer in cfg["layers"]), n_outputs=ds.n_outputs,
                         task=ds.task, dropout=float(cfg["dropout"]), patch=cfg["patch"],
                         pooling=cfg["pooling"], normalize=cfg["normalize"],
                         season=self._season[0] if cfg["seasonal_base"] else 0, target_index=self._season[1])
        torch.manual_seed(seed)
        return build(spec)

    def _budget(self) -> float | None:
        """Seconds this trial's next fold may train: what is left of ``--trial-timeout`` and of
        ``--timeout``."""
        import optuna

        config = self.ctx.config
        budget = None if config.trial_timeout is None else config.trial_timeout - (time.time() - self._started)
        if config.deadline is not None:
            left = config.deadline - time.time()
            budget = left if budget is None else min(budget, left)
            if budget <= 1:
                raise optuna.TrialPruned("no time left in --timeout")
        return budget

    def _epoch_hook(self, trial: Any, run: Any, curve: list[float], fold: int) -> Any:
        """After each validation of fold ``fold``: record it (fold 0 as ``val_score``..., the others as
        ``fold2_val_score``...), and prune: Optuna's pruner on each check of a holdout search, the
        median rule on the first fold (compared with the first folds of finished trials)."""
        import optuna

        ctx, config = self.ctx, self.ctx.config
        stopper = (MedianStopper(_finished_curves(trial.study), ctx.direction)
                   if config.objective == "pareto" and config.prune and fold == 0 else None)
        per_check = config.objective == "score" and config.prune and ctx.folds.k == 1

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            if fold == 0:
                curve.append(m["val_score"])
            run.log_epoch(epoch, m if fold == 0 else {f"fold{fold + 1}_{k}": v for k, v in m.items()})
            if per_check:
                trial.report(m["val_score"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned by Optuna's pruner at epoch {epoch}")
            elif stopper is not None and stopper.should_stop(epoch, m["val_score"]):
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: best {ctx.metric} so far is worse than the "
                                         "median of finished trials at this epoch")

        return on_epoch

    def _record(self, trial: Any, run: Any, results: list[Any], curve: list[float]) -> Any:
        """Save the fold models and their out-of-fold predictions, record the finished trial, return
        the objective values: the mean of the folds' scores with the out-of-fold loss as its
        tie-break (``Task.search_value``), and the cost of what is exported (all fold models)."""
        import numpy as np

        from cellsearch.costs import COSTS, cost_value, measure_costs
        from cellsearch.ensemble import TRUTH_FILE
        from cellsearch.folds import fold_losses, oof_loss
        from cellsearch.model import EnsembleModel, save_checkpoint
        from cellsearch.train import outputs

        ctx, config = self.ctx, self.ctx.config
        task = ctx.dataset.task
        oof = np.concatenate([outputs(r.model, f.val.split, task, index=f.val.index)
                              for r, f in zip(results, ctx.folds.folds)]).astype(np.float32)
        scores = [float(r.best_score) for r in results]
        model = (results[0].model if len(results) == 1 else
                 EnsembleModel([r.model for r in results], [1.0] * len(results),
                               [{"trial": trial.number, "fold": k} for k in range(len(results))]))
        costs = measure_costs(model, self._length, tuple(COSTS))  # latency too: a few batch-1 passes
        costs["latency_ms"] = round(costs["latency_ms"], 4)
        ckpt = ctx.sdir / "trials" / f"{trial.number}.pt"
        save_checkpoint(ckpt, model, trial=trial.number, val_score=float(np.mean(scores)))
        oof_file = ctx.sdir / "oof" / f"{trial.number}.npy"
        oof_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(oof_file, oof)
        truth = oof_file.parent / TRUTH_FILE  # the same in every process of the study
        if not truth.exists():
            np.save(truth, np.asarray(ctx.folds.oof.y))
        seconds = float(sum(r.train_seconds for r in results))
        rec = TrialRecord(
            costs=costs, curve=curve, val_score=float(np.mean(scores)), val_spread=float(np.std(scores)),
            fold_scores=scores, oof_loss=oof_loss(task, oof, ctx.folds.oof),
            fold_losses=fold_losses(task, oof, ctx.folds),
            checkpoint_uri=run.log_file(ckpt, "checkpoint"), oof_uri=run.log_file(oof_file, "oof"),
            best_epoch=results[0].best_epoch, epochs=int(sum(r.epochs for r in results)),
            steps=int(sum(r.steps for r in results)), best_steps=[r.best_step for r in results],
            fold_sizes=[len(f.train) for f in ctx.folds.folds], batch_size=results[0].batch_size,
            train_seconds=seconds, stopped_by=results[-1].stopped_by,
            # relative to the run directory, which may be moved or copied
            checkpoint=str(ckpt.relative_to(config.run_dir)), oof=str(oof_file.relative_to(config.run_dir)))
        rec.write(trial, *TrialRecord.RESULTS)  # what the trial's start recorded stays as it was
        fold_metrics = {f"fold{k + 1}_score": v for k, v in enumerate(scores)} if len(scores) > 1 else {}
        run.finish("FINISHED", metrics={"score": rec.val_score, "score_spread": round(rec.val_spread, 4),
                                        "oof_loss": rec.oof_loss, **fold_metrics, **costs,
                                        "train_seconds": seconds, "epochs": rec.epochs, "steps": rec.steps})
        from cellsearch.tasks import get_task

        value = get_task(task).search_value(rec.val_score, rec.oof_loss, len(oof))
        if config.objective == "score":
            return value
        return value, cost_value(config.cost, rec.costs)
