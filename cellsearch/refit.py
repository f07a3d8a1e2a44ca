"""``--weights refit``: a front point's member trials retrained on all non-test rows.

Each member trial is retrained once, without validation, for its cross-validated number of optimiser
steps (the mean of its folds' best steps, scaled from a fold's training size to all rows), with the
training options it was searched with (``TrainOptions``, stored with the trial), and weighted as in
the point. Cheaper to run than keeping every fold model, not validated itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def refit(point: dict[str, Any], trials: dict[int, Any], dataset: Any,
          references: list[dict[str, Any]] | None = None, report: Callable[[str], None] | None = None) -> Any:
    """The model of ``point`` (a trial or an ensemble of trials) retrained on ``dataset``'s training
    and validation splits: a ``SequenceModel``, or an ``EnsembleModel`` of the retrained members.

    Args:
        point: a Pareto-front point (``cellsearch.pareto``): ``trial`` or ``members`` with weights.
        trials: the study's trials by number (their stored spec, training options and best steps).
        dataset: the training file read as the search read it.
        references: the study's reference members (``cellsearch.refmembers``): one in ``members``
            (a negative key) is refit on the same rows, at the fold members' temperature.
        report: called with a line after each network is retrained (progress: an ensemble of a
            search on thousands of documents retrains for minutes).
    """
    import time

    import torch

    from cellsearch.data.splits import concat_splits
    from cellsearch.folds import Fold, Part
    from cellsearch.model import EnsembleModel, ModelSpec, build
    from cellsearch.records import TrialRecord
    from cellsearch.train import TrainOptions, fit

    pool = concat_splits([dataset.splits["train"], dataset.splits["val"]])
    members = point.get("members") or {point["trial"]: 1.0}
    models, weights = [], []
    nets, done, start = sum(int(k) >= 0 for k in members), 0, time.perf_counter()
    for n, w in sorted(members.items(), key=lambda kv: int(kv[0]) < 0):  # networks first, as assembled
        if int(n) < 0:
            models.append(_refit_reference(int(n), references or [], pool, dataset))
            weights.append(float(w))
            continue
        rec = TrialRecord.of(trials[int(n)])
        sizes = rec.fold_sizes or [len(pool)]
        steps = int(round(sum(rec.best_steps) / len(rec.best_steps) * len(pool) / (sum(sizes) / len(sizes))))
        options = TrainOptions.from_dict({**rec.train_cfg, "max_epochs": 1, "patience": 1})
        torch.manual_seed(int(n))
        res = fit(build(ModelSpec.from_dict(rec.spec)), dataset, options, fold=Fold(Part(pool), Part(pool, None)),
                  seed=int(n), fixed_steps=max(1, steps))
        models.append(res.model)
        weights.append(float(w))
        done += 1
        if report is not None:
            report(f"retrained {done}/{nets}: trial {n}, {max(1, steps):,} steps "
                   f"({time.perf_counter() - start:.0f} s so far)")
    if len(models) == 1:
        return models[0]
    order = sorted(members, key=lambda n: int(n) < 0)
    return EnsembleModel(models, weights, [{"trial": int(n), "refit": True} for n in order])


def _refit_reference(key: int, references: list[dict[str, Any]], pool: Any, dataset: Any) -> Any:
    """A reference member fitted on all of ``pool``, at the temperature its fold members were given."""
    from cellsearch.model import load_checkpoint
    from cellsearch.refmembers import refit_member

    point = next((p for p in references if p["trial"] == key), None)
    if point is None:
        raise ValueError(f"member {key} is no reference member of this study")
    folds_model, _ = load_checkpoint(point["checkpoint"])
    return refit_member(folds_model.members[0], pool, dataset)
