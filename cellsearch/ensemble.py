"""Ensembles of trials: greedy selection on out-of-fold predictions, and the models they export.

Selection is Caruana et al. (2004), as auto-sklearn and AutoGluon do it: start from nothing; at each
round add (with replacement) the complete trial whose addition gives the best out-of-fold score
(ties broken by the out-of-fold loss); a member's weight is the share of rounds that picked it.
The candidates are the ``CANDIDATES`` best complete trials. Every distinct set of members met
along the way is one candidate ensemble (its best weighting), entered into the Pareto front beside
the single trials with cost = the inference cost of all its members: so the front shows what each
extra member buys.

Classification averages the members' probabilities, the other tasks their values (in the models'
scaled units, which every member shares) — ``cellsearch.model.EnsembleModel`` does the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellsearch.costs import COSTS, cost_value

#: The best complete trials selection draws from.
CANDIDATES = 30
#: Rounds of greedy selection (members with replacement).
ROUNDS = 25


def _probabilities(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _evaluate(task: str, pred: np.ndarray, folds: Any, target_scale: float
              ) -> tuple[float, float, float, list[float]]:
    """(mean fold score, spread over folds, out-of-fold loss, each fold's score) of out-of-fold outputs."""
    from cellsearch.folds import fold_scores, oof_loss

    scores = fold_scores(task, pred, folds, target_scale)
    return float(np.mean(scores)), float(np.std(scores)), oof_loss(task, pred, folds.oof), [float(v) for v in scores]


def _members_output(task: str, preds: dict[int, np.ndarray], counts: dict[int, int]) -> np.ndarray:
    """The out-of-fold output of members weighted by ``counts``: log of the averaged probabilities
    for classification, the averaged values otherwise."""
    avg = sum(preds[n] * c for n, c in counts.items()) / sum(counts.values())
    return np.log(np.clip(avg, 1e-30, None)) if task == "classification" else avg


def select_ensembles(trials: list[dict[str, Any]], folds: Any, task: str, direction: str, target_scale: float,
                     cost: str) -> list[dict[str, Any]]:
    """Candidate ensembles of ``trials`` (dicts with ``trial``, ``score``, ``oof_loss``, ``oof`` (the
    file of its out-of-fold outputs) and its costs), by greedy forward selection (module doc).

    Returns one dict per distinct member set of two or more trials: ``members`` (trial → weight),
    ``score``, ``spread``, ``oof_loss``, ``fold_scores``, ``fold_losses``, the summed costs and ``cost``.
    """
    sign = 1.0 if direction == "maximize" else -1.0

    def rank(t: dict[str, Any]) -> tuple[float, float]:
        loss = t.get("oof_loss")
        return sign * t["score"], -(loss if loss is not None and math.isfinite(loss) else math.inf)

    pool = sorted((t for t in trials if t.get("oof") and Path(t["oof"]).exists()), key=rank, reverse=True)
    pool = pool[:CANDIDATES]
    preds = {}
    for t in pool:
        p = np.load(t["oof"]).astype(np.float64)
        if p.shape[0] == len(folds.oof_fold) and np.isfinite(p).all():
            preds[t["trial"]] = _probabilities(p) if task == "classification" else p
    if len(preds) < 2:
        return []
    by_trial = {t["trial"]: t for t in pool}
    total = None
    counts: dict[int, int] = {}
    best_by_set: dict[frozenset[int], dict[str, Any]] = {}
    for r in range(1, ROUNDS + 1):
        best = None
        for n, p in preds.items():
            avg = p if total is None else (total + p) / r
            out = np.log(np.clip(avg, 1e-30, None)) if task == "classification" else avg
            s, spread, loss, per_fold = _evaluate(task, out, folds, target_scale)
            key = (sign * s, -loss)
            if best is None or key > best[0]:
                best = (key, n, s, spread, loss, per_fold)
        _, n, s, spread, loss, per_fold = best
        total = preds[n] if total is None else total + preds[n]
        counts[n] = counts.get(n, 0) + 1
        members = frozenset(counts)
        if len(members) < 2:
            continue
        entry = {"members": {int(k): v / r for k, v in sorted(counts.items())}, "score": s, "spread": spread,
                 "oof_loss": loss, "rounds": r, "fold_scores": per_fold, "counts": dict(counts)}
        old = best_by_set.get(members)
        if old is None or (sign * s, -loss) > (sign * old["score"], -old["oof_loss"]):
            best_by_set[members] = entry
    from cellsearch.folds import fold_losses

    out = []
    for k, (members, e) in enumerate(sorted(best_by_set.items(), key=lambda kv: kv[1]["rounds"])):
        e["fold_losses"] = fold_losses(task, _members_output(task, preds, e.pop("counts")), folds)
        for c in COSTS.values():
            vals = [by_trial[m].get(c.attr) for m in members]
            e[c.attr] = None if any(v is None for v in vals) else float(sum(vals))
        e["cost"] = cost_value(cost, e)
        e["name"] = f"E{k + 1}"
        e["arch"] = f"ensemble of {len(members)}: " + "+".join(
            f"#{m}" for m in sorted(members, key=lambda m: -e["members"][m]))
        out.append(e)
    return out


#: The true values of the out-of-fold rows, saved beside the trials' out-of-fold outputs.
TRUTH_FILE = "truth.npy"


def loss_reader(points: list[dict[str, Any]], task: str) -> Callable[[dict[str, Any]], np.ndarray | None]:
    """A function giving each example's out-of-fold loss (``cellsearch.folds.row_losses``) of a point
    of ``points``: a trial's from its saved outputs, an ensemble's from its members' weighted average.
    It gives ``None`` where a file is missing (a study from before, or exported on another machine)."""
    from cellsearch.folds import row_losses

    files = {p["trial"]: p.get("oof") for p in points if p.get("kind", "trial") == "trial"}
    some = next((Path(f) for f in files.values() if f), None)
    truth = None if some is None or not (some.parent / TRUTH_FILE).exists() else np.load(some.parent / TRUTH_FILE)
    cache: dict[int, np.ndarray | None] = {}

    def outputs(trial: int) -> np.ndarray | None:
        if trial not in cache:
            f = files.get(trial)
            p = np.load(f).astype(np.float64) if f and Path(f).exists() else None
            ok = p is not None and truth is not None and len(p) == len(truth) and np.isfinite(p).all()
            cache[trial] = (_probabilities(p) if task == "classification" else p) if ok else None
        return cache[trial]

    def losses(point: dict[str, Any]) -> np.ndarray | None:
        members = point.get("members") or {point.get("trial"): 1.0}
        preds = {int(m): outputs(int(m)) for m in members if m is not None}
        if truth is None or not preds or any(v is None for v in preds.values()):
            return None
        return row_losses(task, _members_output(task, preds, {int(m): w for m, w in members.items()}), truth)

    return losses


def assemble(point: dict[str, Any], checkpoint: Any) -> Any:
    """The model of a front point: a trial's checkpoint (one model, or its fold models), or an
    ensemble's members' models weighted as selected. ``checkpoint(trial)`` is the path of a trial's
    checkpoint file."""
    from cellsearch.model import EnsembleModel, load_checkpoint

    if not point.get("members"):
        return load_checkpoint(checkpoint(point["trial"]))[0]
    models, weights, sources = [], [], []
    for trial, w in point["members"].items():
        m, _ = load_checkpoint(checkpoint(int(trial)))
        parts = list(m.members) if isinstance(m, EnsembleModel) else [m]
        inner = m.weights if isinstance(m, EnsembleModel) else [1.0]
        src = m.sources if isinstance(m, EnsembleModel) else [{"trial": int(trial)}]
        models += parts
        weights += [w * v for v in inner]
        sources += src
    return EnsembleModel(models, weights, sources)
