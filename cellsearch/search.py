"""The search: Optuna over per-layer cells, depth and width; every trial trained with Lightning.

``tune`` is the library entry point behind ``cellsearch tune``: it prepares the study
(``cellsearch.context``), runs trials in this process or in worker processes (``cellsearch.runner``,
``cellsearch.workers``; one trial is ``cellsearch.objective``), records them (``cellsearch.tracking``)
and ends with the Pareto front and the chosen trial (``cellsearch.pareto``), scored on the test split.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsearch.config import TuneConfig
from cellsearch.context import prepare
from cellsearch.files import write_json
from cellsearch.pareto import member_points, pareto_front, pick_trial, trial_points
from cellsearch.study import counts, finished


@dataclass
class TuneResult:
    """What ``tune`` returns: the Optuna study and a summary of the front and the chosen trial."""

    study: Any
    metric: str
    direction: str
    cost: str
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    references: list[dict[str, Any]] = field(default_factory=list)
    pick: str = "knee"
    cv: str = ""
    #: What the test column holds: ``test`` (the test split) or ``out-of-fold`` (no test split: each
    #: front entry's ``oof_score``, its out-of-fold outputs over every row, in ``test_score``'s place).
    held_out: str = "test"

    def held_out_score(self, entry: dict[str, Any] | None) -> float | None:
        """An entry's score in the test column: its test score, or its out-of-fold score."""
        if not entry:
            return None
        return entry.get("test_score") if self.held_out == "test" else entry.get("oof_score")

    @property
    def failure(self) -> str | None:
        """When no trial completed and some failed: why, in one line — the first recorded reason of
        the failed trials (a trial whose process was killed has none: optuna failed it when the search
        resumed) and of the pruned ones, which ended before any score (else ``None``)."""
        import optuna

        from cellsearch.records import TrialRecord

        if self.counts.get("complete", 0) or not self.counts.get("fail", 0):
            return None
        states = optuna.trial.TrialState

        def first(state: Any, missing: str) -> tuple[int, str]:
            trials = self.study.get_trials(deepcopy=False, states=(state,))
            return len(trials), next((r for r in (TrialRecord.of(t).reason for t in trials) if r), missing)

        n_failed, failed = first(states.FAIL, "none recorded: its process ended without finishing it (killed?)")
        n_pruned, pruned = first(states.PRUNED, "none recorded")
        if not n_pruned:
            return f"every trial failed; the first: {failed}"
        return (f"no trial completed: {n_failed} failed (the first: {failed}), {n_pruned} pruned before a score "
                f"(the first: {pruned})")

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study.study_name, "metric": self.metric, "direction": self.direction,
                "cost": self.cost, "front": self.front, "chosen": self.chosen, "counts": self.counts,
                "references": self.references, "run_dir": str(self.run_dir), "interrupted": self.interrupted,
                "pick": self.pick, "cv": self.cv, "held_out": self.held_out}


def _score_out_of_fold(dataset: Any, folds: Any, points: list[dict[str, Any]], entries: list[dict[str, Any]]
                       ) -> None:
    """With no test split (``--test-fraction auto`` on small data, or 0): each entry's score of its
    out-of-fold outputs over every row (``oof_score``), what the tables, the card and MLflow then
    report in the test score's place, labelled out-of-fold."""
    from cellsearch.ensemble import output_reader
    from cellsearch.metrics import score

    outputs = output_reader(points, dataset.task)
    for e in entries:
        e["test_score"] = None
        out = outputs(e)
        if out is not None:
            e["oof_score"] = round(score(dataset.task, out, folds.oof.y, dataset.preprocessing.target_scale,
                                         folds.oof.weight), 4)


def _score_test(dataset: Any, folds: Any, study: Any, points: list[dict[str, Any]], entries: list[dict[str, Any]],
                root: Path, until: float | None = None) -> None:
    """Test scores for the finalists only (selection never sees the test split); those whose turn
    comes after ``until`` (the end of ``--timeout``) get none. With no test split, their
    out-of-fold scores (``_score_out_of_fold``)."""
    import time

    from cellsearch.ensemble import assemble
    from cellsearch.evaluation import evaluate_test

    test = dataset.splits["test"]
    if not len(test):
        _score_out_of_fold(dataset, folds, points, entries)
        return
    checkpoints = {p["trial"]: p.get("checkpoint") for p in trial_points(study, "macs", False, root)
                   + member_points(study, root)}
    for e in entries:
        needed = list(e["members"]) if e.get("members") else [e["trial"]]
        if until is not None and time.time() >= until:
            e["test_score"] = None
        elif len(test) and all(checkpoints.get(t) and Path(checkpoints[t]).exists() for t in needed):
            model = assemble(e, checkpoints.__getitem__)
            e.update(evaluate_test(model, test, dataset.task, dataset.preprocessing.target_scale))
        else:
            e["test_score"] = None


def _reference_members(ctx: Any, tracker: Any) -> list[dict[str, Any]]:
    """The references that join the ensemble library (``cellsearch.refmembers``: ridge, 1-NN where its
    training sequences are few enough to store): fitted fold by fold,
    saved like a trial (fold models, out-of-fold outputs), recorded in the study
    (``reference_members``: points keyed by a negative trial number) — none with ``--networks-only``,
    without validation rows (nothing to select on), or where a reference does not serve the data
    (``Layout.references``). With one validation split, the saved model (what the test split, the
    ensembles and the export use) is the member fitted again on the training and validation rows
    (``refmembers.final_member``); the out-of-fold file keeps the training-split fit's outputs."""
    import numpy as np

    from cellsearch.costs import COSTS, cost_value, measure_costs
    from cellsearch.folds import fold_scores, oof_loss
    from cellsearch.model import EnsembleModel, save_checkpoint
    from cellsearch.refmembers import MEMBER_KEYS, MEMBERS, final_member, fold_members
    from cellsearch.searchdata import data_shape

    config = ctx.config
    if config.networks_only or not ctx.folds.validated:
        return []
    found = []
    for kind in MEMBERS:
        fitted = fold_members(ctx.dataset, ctx.folds, kind)
        if fitted is None:
            continue
        members, oof = fitted
        key = MEMBER_KEYS[kind]
        if not list(members[0].state_dict()) and all(m.describe() == members[0].describe() for m in members):
            members = members[:1]  # nothing fitted (the naive forecasts, theta): one copy, run and counted once
        final = final_member(ctx.dataset, ctx.folds, members)
        model = (EnsembleModel([final], [1.0], [{"trial": key, "refit": True}]) if final is not None else
                 EnsembleModel(members, [1.0] * len(members), [{"trial": key, "fold": k} for k in range(len(members))]))
        ckpt, oof_file = ctx.sdir / "trials" / f"{kind}.pt", ctx.sdir / "oof" / f"{kind}.npy"
        save_checkpoint(ckpt, model, trial=key)
        oof_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(oof_file, oof)
        scores = fold_scores(ctx.dataset.task, oof, ctx.folds, ctx.dataset.preprocessing.target_scale)
        costs = measure_costs(model, data_shape(ctx.dataset).length, tuple(COSTS))
        found.append({
            "trial": key, "name": kind, "kind": "reference", "arch": members[0].arch,
            "score": float(np.mean(scores)), "spread": float(np.std(scores)),
            "oof_loss": oof_loss(ctx.dataset.task, oof, ctx.folds.oof), "folds": ctx.folds.k,
            "cost": cost_value(config.cost, costs), **{c.attr: costs.get(c.attr) for c in COSTS.values()},
            "fitted_on": "training and validation rows" if final is not None else "each fold's training rows",
            "checkpoint": str(ckpt.relative_to(config.run_dir)), "oof": str(oof_file.relative_to(config.run_dir)),
            "checkpoint_uri": tracker.log_search_file(ckpt, "references")})
    if found:
        ctx.study.set_user_attr("reference_members", found)
    return [{**p, "checkpoint": str(config.run_dir / p["checkpoint"]), "oof": str(config.run_dir / p["oof"])}
            for p in found]


def _select_ensembles(ctx: Any, tracker: Any, members: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The ensemble of the study's complete trials and the reference members (``cellsearch.ensemble``;
    ``members``, fitted before the search so that their time counts in ``--timeout``, else fitted
    here), stored with the study."""
    from cellsearch.ensemble import select_ensembles

    trials = trial_points(ctx.study, ctx.config.cost, ensembles=False, root=ctx.config.run_dir)
    trials += _reference_members(ctx, tracker) if members is None else members
    found = select_ensembles(trials, ctx.folds, ctx.dataset.task, ctx.direction,
                             ctx.dataset.preprocessing.target_scale, ctx.config.cost, seed=ctx.config.seed or 0)
    ctx.study.set_user_attr("ensembles", found)
    return found


def tune(data: str | Path | TuneConfig, **options: Any) -> TuneResult:
    """Search architectures for a sequence CSV; returns the study with its Pareto front and choice.

    Args:
        data: the CSV file, or a complete ``TuneConfig``.
        **options: fields of ``TuneConfig`` (``space``, ``trials``, ``timeout``, ``objective``,
            ``cost``, ``pick``, ``study``, ``run_dir``, ``workers``, ...) and of ``DataOptions``
            (``target``, ``layout``, ``window``, ``horizon``, ``seed``, ...): the CLI's options.

    ``trials`` is the number of finished (complete or pruned) trials the study should hold: running
    ``tune`` again on the same study continues it up to that count. ``workers`` > 1 runs that many
    worker processes on this machine over the same study, each with its share of the CPU threads;
    ``workers="auto"`` (the CLI's default) one per core (``cellsearch.workers.worker_count``).

    Example:
        >>> result = tune("examples/digits.csv", space="quick", trials=6)   # doctest: +SKIP
        >>> result.chosen["arch"], result.chosen["test_score"]              # doctest: +SKIP
        ('peephole48', 0.96)
    """
    from cellsearch.config import UNBOUNDED_TRIALS
    from cellsearch.ensemble import loss_reader
    from cellsearch.objective import Objective
    from cellsearch.progress import SearchProgress
    from cellsearch.runner import run_trials
    from cellsearch.tracking import make_tracker

    config = data.replace(**options) if isinstance(data, TuneConfig) else TuneConfig.create(data, **options)
    ctx = prepare(config, create=True)
    from cellsearch.workers import cpu_cores, worker_count

    n_workers = worker_count(config.workers, cpu_cores(), config.trial_target - finished(ctx.study),
                             "cuda" if ctx.accelerator == "gpu" else "cpu")
    ctx.config = config = config.replace(workers=n_workers)
    dataset, direction, cost = ctx.dataset, ctx.direction, config.cost
    tracker = make_tracker(config, meta=ctx.meta, argv=sys.argv)
    tracker.close_stale(ctx.study)  # records a killed process left running end failed
    references = []
    if config.references:
        from cellsearch.references import fit_references

        references = fit_references(dataset, cost, config.deadline, folds=ctx.folds)
        ctx.study.set_user_attr("references", references)
        tracker.record_references(references)
    # the reference members need no trial: fitted now, their time (ROCKET's seconds on long
    # sequences) comes out of the search's budget rather than running past it. The workers start
    # after them: started before, they overlapped the references' fit by a few seconds, and a
    # database outage during their trials then met this process's own unretried study writes.
    members = _reference_members(ctx, tracker) if config.ensemble else []
    interrupted = False
    target = None if config.trial_target == UNBOUNDED_TRIALS else config.trial_target  # the clock's
    with SearchProgress(total=target, done=finished(ctx.study), metric=ctx.metric,
                        enabled=config.progress and not config.verbose) as bar:

        def on_trial(study_: Any) -> None:
            pts = trial_points(study_, cost, root=config.run_dir)
            front = pareto_front(pts, direction)
            best = pick_trial(front, direction, "best")
            bar.update(finished(study_), best["score"] if best else None, len(front))
            tracker.update_study(study_, pts, front, dataset)

        try:
            if config.workers > 1:
                from cellsearch.workers import run_workers

                run_workers(ctx, tracker.parent_id, on_trial)
            else:
                run_trials(ctx, Objective(ctx=ctx, tracker=tracker, seed=config.seed), config.trial_target, on_trial)
        except KeyboardInterrupt:
            interrupted = True
    st = ctx.study
    if config.ensemble:
        _select_ensembles(ctx, tracker, members)
    else:
        st.set_user_attr("ensembles", [])
    points = trial_points(st, cost, ensembles=config.ensemble, root=config.run_dir)
    front = pareto_front(points, direction)
    points_and_members = points + member_points(st, config.run_dir)
    from cellsearch.references import best_reference

    floor = best_reference(references, direction)
    chosen = pick_trial(front, direction, config.pick, losses=loss_reader(points_and_members, dataset.task),
                        floor=floor["score"] if floor else None)
    _score_test(dataset, ctx.folds, st, points_and_members, front, config.run_dir,
                None if config.timeout is None else config.started_at + config.timeout)
    result = TuneResult(study=st, metric=ctx.metric, direction=direction, cost=cost, front=front,
                        chosen=chosen, run_dir=config.run_dir, counts=counts(st), interrupted=interrupted,
                        references=references, pick=config.pick, cv=ctx.folds.describe(),
                        held_out="test" if len(dataset.splits["test"]) else "out-of-fold" if ctx.folds.k > 1
                        else "validation")
    st.set_user_attr("held_out", {p["name"]: p.get("oof_score") for p in front if p.get("oof_score") is not None})
    write_json(ctx.sdir / "result.json", result.to_dict())
    tracker.finish(st, result, dataset)
    return result
