"""One trial: suggest → build → train → score → record (Optuna's define-by-run objective).

Pruning (``cellsearch.pruning``, both objectives): asynchronous successive halving on the smoothed
validation loss — by optimiser steps in a trial's first fold, from its step floor on, and by folds
across them. With ``objective="score"`` the checks and folds are also reported to Optuna
(``trial.report``) so its dashboards show them; the decision is ours in both modes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from cellsearch.context import SearchContext
from cellsearch.records import TrialRecord
from cellsearch.tracking import Tracker


def peer_values(study: Any, number: int, attr: str, k: int) -> list[float]:
    """What the study's other trials (complete, pruned or running) recorded at position ``k`` of
    ``rungs`` or ``race`` (``cellsearch.pruning``)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    out = []
    for t in study.get_trials(deepcopy=False, states=states):
        values = getattr(TrialRecord.of(t), attr) if t.number != number else []
        if len(values) > k:
            out.append(float(values[k]) if values[k] is not None else math.inf)
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
        try:
            return self._record(trial, run, results, curve)
        except Exception as exc:  # saving or scoring the trained models failed: the trial fails, saying why
            _, reason, _ = _outcome(exc)
            TrialRecord(reason=reason).write(trial, "reason")
            run.finish("FAILED", reason=reason)
            raise

    def _options(self, cfg: dict[str, Any]) -> Any:
        """The trial's ``TrainOptions``: what it drew, with ``--max-epochs`` in place of the space's
        (and then no step cap beyond it)."""
        from cellsearch.train import TrainOptions

        override = self.ctx.config.max_epochs
        return TrainOptions.from_dict({**cfg, "max_epochs": override or cfg["max_epochs"],
                                       "max_steps": 0 if override else cfg["max_steps"]})

    def _train_folds(self, trial: Any, run: Any, cfg: dict[str, Any], options: Any, model: Any, seed: int,
                     curve: list[float], results: list[Any]) -> None:
        """Train one model per fold (``cellsearch.folds``); after each fold but the last, the trial
        goes on only if it can finish its folds before the deadline at its pace so far, and its mean
        smoothed validation loss so far ranks in the best 1/``FOLD_ETA`` of the trials that finished
        as many folds (``cellsearch.pruning``)."""
        import numpy as np
        import optuna

        from cellsearch.pruning import FOLD_ETA, cannot_finish, fold_value, promoted
        from cellsearch.train import fit

        ctx, config = self.ctx, self.ctx.config
        self._started = time.time()
        models, together = self._fold_models(cfg, options, model, seed)
        if together:
            self._train_together(trial, run, options, models, seed, curve, results)
            return
        race: list[float] = []
        for k, fold in enumerate(ctx.folds.folds):
            model = models[k] if k < len(models) else self._build(cfg, seed)
            results.append(fit(
                model, ctx.dataset, options, fold=fold, seed=self._fold_seeds(seed)[k], max_seconds=self._budget(),
                on_epoch=self._epoch_hook(trial, run, curve, k, self._rungs(trial, options) if k == 0 else None),
                verbose=config.verbose,
                accelerator=ctx.accelerator))
            if ctx.folds.k == 1:
                continue
            race.append(fold_value([[h.get("val_loss", math.nan) for h in r.history] for r in results]))
            TrialRecord(race=race).write(trial, "race")
            if config.objective == "score":
                trial.report(float(np.mean([r.best_score for r in results])), k)
            last = k + 1 == ctx.folds.k
            now = time.time()
            if not last and config.deadline is not None and cannot_finish(
                    now - self._started, k + 1, ctx.folds.k, config.deadline - now):
                raise optuna.TrialPruned(f"stopped after fold {k + 1} of {ctx.folds.k}: at its pace "
                                         f"({(now - self._started) / (k + 1):.0f} s a fold) the folds left "
                                         f"would not finish before --timeout")
            if not last and config.prune and not promoted(race[-1], peer_values(trial.study, trial.number, "race", k),
                                                          FOLD_ETA):
                raise optuna.TrialPruned(f"pruned after fold {k + 1} of {ctx.folds.k}: its mean validation loss "
                                         f"so far is not in the best 1/{FOLD_ETA} of the trials that got that far")

    def _fold_models(self, cfg: dict[str, Any], options: Any, model: Any, seed: int) -> tuple[list[Any], bool]:
        """The fold models built so far (the first, or all K where batching was considered), and
        whether the folds train together as one batched model (``--fold-batching``: ``auto`` asks
        ``foldbatch.batching_pays``, ``on`` only whether the model can run batched); only on the CPU,
        only with several folds validated at one step interval."""
        from cellsearch.foldbatch import batching_pays, can_train_together

        ctx, mode = self.ctx, self.ctx.config.fold_batching
        if mode == "off" or ctx.accelerator != "cpu" or not can_train_together(options, ctx.folds.folds):
            return [model], False
        models = [model] + [self._build(cfg, seed) for _ in range(ctx.folds.k - 1)]
        return models, batching_pays(models, ctx.dataset, options, ctx.folds.folds, self._fold_seeds(seed),
                                     measure=mode == "auto")

    def _fold_seeds(self, seed: int) -> list[int]:
        """Each fold's training seed (its batches' order), the same whether folds train alone or together."""
        return [seed + 1009 * k for k in range(self.ctx.folds.k)]

    def _train_together(self, trial: Any, run: Any, options: Any, models: list[Any], seed: int,
                        curve: list[float], results: list[Any]) -> None:
        """All folds at once (``cellsearch.foldbatch``). The step rungs read, at each check, the mean
        of the folds' latest validation losses (one by one, only the first fold's: the same quantity,
        measured on K times the rows); the fold race is recorded (other trials' pruning reads it) but
        decides nothing, every fold having trained."""
        import numpy as np

        from cellsearch.foldbatch import fit_folds
        from cellsearch.pruning import fold_value

        ctx, config = self.ctx, self.ctx.config
        k = ctx.folds.k
        TrialRecord(together=True).write(trial, "together")
        hooks = [self._epoch_hook(trial, run, curve, j) for j in range(k)]
        rungs = self._rungs(trial, options)
        results.extend(fit_folds(models, ctx.dataset, options, ctx.folds.folds, seeds=self._fold_seeds(seed),
                                 max_seconds=self._budget(), on_epoch=hooks, verbose=config.verbose,
                                 on_check=lambda step, losses: self._prune_at(rungs, step, float(np.mean(losses)))))
        histories = [[h.get("val_loss", math.nan) for h in r.history] for r in results]
        TrialRecord(race=[fold_value(histories[:j + 1]) for j in range(k)]).write(trial, "race")
        if config.objective == "score":
            for j in range(k):
                trial.report(float(np.mean([r.best_score for r in results[:j + 1]])), j)

    @property
    def _season(self) -> tuple[int, int]:
        """(season, target channel) of the data, for a forecast base."""
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
        inputs = tuple(InputSpec(*group) for group in input_groups(ds.preprocessing, cfg))
        spec = ModelSpec(input_size=ds.n_features, inputs=inputs,
                         layers=tuple(LayerSpec(*layer) for layer in cfg["layers"]), n_outputs=ds.n_outputs,
                         task=ds.task, dropout=float(cfg["dropout"]), patch=cfg["patch"],
                         pooling=cfg["pooling"], normalize=cfg["normalize"],
                         season=self._season[0] if _base(cfg) else 0,
                         target_index=self._season[1], base=_base(cfg),
                         level_index=int(ds.preprocessing.layout_data.get("level_index", -1)))
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

    def _rungs(self, trial: Any, options: Any) -> Any:
        """The trial's step rungs (``cellsearch.pruning.StepRungs``), or ``None`` without pruning."""
        from cellsearch.pruning import StepRungs

        if not self.ctx.config.prune:
            return None
        return StepRungs(min_steps=options.min_steps,
                         peers=lambda k: peer_values(trial.study, trial.number, "rungs", k),
                         record=lambda values: TrialRecord(rungs=values).write(trial, "rungs"))

    @staticmethod
    def _prune_at(rungs: Any, step: int, loss: float) -> None:
        """Raise ``optuna.TrialPruned`` when the trial falls out at a rung it has now reached."""
        import optuna

        if rungs is not None and rungs.should_stop(step, loss):
            raise optuna.TrialPruned(f"pruned at step {step}: its smoothed validation loss is not in the best "
                                     f"1/{rungs.eta} of the trials that reached rung {len(rungs.reached)}")

    def _epoch_hook(self, trial: Any, run: Any, curve: list[float], fold: int, rungs: Any = None) -> Any:
        """After each validation of fold ``fold``: record it (fold 0 as ``val_score``..., the others as
        ``fold2_val_score``...), and prune at the step rungs ``rungs`` on its loss (fold 0 of folds
        trained one by one)."""
        from cellsearch.interrupts import protected

        ctx, config = self.ctx, self.ctx.config
        report = config.objective == "score" and ctx.folds.k == 1

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            step = int(m.pop("step", (epoch + 1)))
            if fold == 0:
                curve.append(m["val_score"])
            with protected():  # writes to the tracker and the study: Ctrl-C waits for them
                run.log_epoch(epoch, m if fold == 0 else {f"fold{fold + 1}_{k}": v for k, v in m.items()})
                if report:
                    trial.report(m["val_score"], epoch)
            self._prune_at(rungs, step, m.get("val_loss", math.nan))

        return on_epoch

    def _record(self, trial: Any, run: Any, results: list[Any], curve: list[float]) -> Any:
        """Save the fold models and their out-of-fold predictions, record the finished trial, return
        the objective values: the mean of the folds' scores with the out-of-fold loss as its
        tie-break (``Task.search_value``), and the cost of what is exported (all fold models)."""
        import numpy as np

        from cellsearch.costs import COSTS, cost_value, measure_costs
        from cellsearch.ensemble import TRUTH_FILE
        from cellsearch.evaluation import outputs
        from cellsearch.folds import fold_losses, oof_loss
        from cellsearch.model import EnsembleModel, save_checkpoint

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


def _base(cfg: dict[str, Any]) -> str:
    """The drawn ``base`` as ``ModelSpec.base`` names it (empty: none)."""
    base = str(cfg.get("base", "none"))
    return "" if base == "none" else base
