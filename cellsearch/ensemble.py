"""Ensembles of trials: bagged greedy selection on out-of-fold predictions, and the models they export.

Selection is Caruana et al. (2004), as auto-sklearn and AutoGluon do it — start from nothing; at each
round add (with replacement) the complete trial whose addition gives the best out-of-fold score
(ties broken by the out-of-fold loss); a member's weight is the share of rounds that picked it — run
on ``BAGS`` bootstrap resamples of the out-of-fold rows (drawn within each fold), whose weights are
averaged: the paper's remedy for a small hill-climbing set. On a few dozen sequences one greedy run
fits the rows it climbs on: it stops at two or three members that happen to cancel each other's
errors there. Averaged over resamples, members that help only on a few rows get little weight, and
the ensemble keeps the members that help throughout (the comparison with one greedy run is on the
documentation's benchmarks page).

The candidates are the ``CANDIDATES`` best complete trials. Averaging over resamples gives many
members a sliver of weight (on 50 sequences, 25 members, 17 of them under 4%), and each costs a
whole model at prediction time: so beside the bagged ensemble (``E1``) comes its trimmed twin
(``E2``), the members weighing at least ``TRIM`` (one round's share), reweighted. Both enter the
Pareto front beside the single trials with cost = the inference cost of all their members, and the
knee takes the twin only where the folds show it as good (``cellsearch.pareto``).

Classification averages the members' probabilities, the other tasks their values (in the models'
scaled units, which every member shares) — ``cellsearch.model.EnsembleModel`` does the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from cellsearch.costs import COSTS, cost_value
from cellsearch.tasks import get_task

#: The best complete trials selection draws from.
CANDIDATES = 30
#: Rounds of greedy selection (members with replacement).
ROUNDS = 25
#: Bootstrap resamples of the out-of-fold rows, one greedy selection on each (bagged selection) ...
BAGS = 16
#: ... fewer where the rows are many (bags x rows at most this): resampling matters on small data,
#: and the selection's time (about 3 s per 2,000 rows x 16 bags on one core) counts in ``--timeout``.
BAG_ROWS = 40_000
#: The trimmed twin keeps the members weighing at least this (one round's share of the picks).
TRIM = 1.0 / ROUNDS
#: The architecture tag names this many members, heaviest first (the tables stay readable; the
#: model card and the MLflow run list them all).
ARCH_MEMBERS = 6


def _evaluate(task: str, pred: np.ndarray, folds: Any, target_scale: float
              ) -> tuple[float, float, float, list[float]]:
    """(mean fold score, spread over folds, out-of-fold loss, each fold's score) of out-of-fold outputs."""
    from cellsearch.folds import fold_scores, oof_loss

    scores = fold_scores(task, pred, folds, target_scale)
    return float(np.mean(scores)), float(np.std(scores)), oof_loss(task, pred, folds.oof), [float(v) for v in scores]


def members_output(task: str, preds: dict[int, np.ndarray], counts: dict[int, int]) -> np.ndarray:
    """The out-of-fold output of members weighted by ``counts``: log of the averaged probabilities
    for classification, the averaged values otherwise."""
    avg = sum(preds[n] * c for n, c in counts.items()) / sum(counts.values())
    return get_task(task).from_average(avg)


def bootstrap(folds: Any, rng: np.random.Generator) -> Any:
    """A bootstrap resample of the out-of-fold rows, drawn within each fold (so every fold keeps
    its size): the ``folds``-like view (``k``, ``oof.y``, ``oof.weight``, ``oof_fold``) that
    ``_evaluate`` reads, and the rows drawn."""
    fold = np.asarray(folds.oof_fold)
    rows = np.concatenate([rng.choice(np.flatnonzero(fold == j), size=int(np.sum(fold == j)))
                           for j in range(folds.k) if np.any(fold == j)])
    w = folds.oof.weight
    view = SimpleNamespace(k=folds.k, oof_fold=fold[rows],
                           oof=SimpleNamespace(y=np.asarray(folds.oof.y)[rows], weight=None if w is None else w[rows]))
    return view, rows


def greedy(task: str, preds: dict[int, np.ndarray], folds: Any, sign: float, target_scale: float
            ) -> dict[int, int]:
    """One greedy forward selection with replacement (``ROUNDS`` rounds) on ``folds``' rows: how
    many rounds picked each trial."""
    total = None
    counts: dict[int, int] = {}
    for r in range(1, ROUNDS + 1):
        best = None
        for n, p in preds.items():
            avg = p if total is None else (total + p) / r
            out = get_task(task).from_average(avg)
            s, _, loss, _ = _evaluate(task, out, folds, target_scale)
            if best is None or (sign * s, -loss) > best[0]:
                best = ((sign * s, -loss), n)
        n = best[1]
        total = preds[n] if total is None else total + preds[n]
        counts[n] = counts.get(n, 0) + 1
    return counts


def select_ensembles(trials: list[dict[str, Any]], folds: Any, task: str, direction: str, target_scale: float,
                     cost: str, seed: int = 0) -> list[dict[str, Any]]:
    """The ensemble of ``trials`` (dicts with ``trial``, ``score``, ``oof_loss``, ``oof`` (the file
    of its out-of-fold outputs) and its costs) by bagged greedy selection (module doc), reproducible
    from ``seed``, and its trimmed twin (module doc).

    Returns ``[]`` when fewer than two trials have out-of-fold outputs or every resample chose the
    same one; else ``E1`` and, where trimming leaves two members or more and drops one, ``E2``; each
    a dict: ``members`` (trial → weight, summing to 1), ``score``, ``spread``, ``oof_loss``,
    ``fold_scores``, ``fold_losses`` (all on the full out-of-fold rows), ``bags`` (``BAGS``, fewer
    on many rows: ``BAG_ROWS``; one means one greedy run on all the rows), the summed costs and
    ``cost``.
    """
    from cellsearch.folds import fold_losses

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
            preds[t["trial"]] = get_task(task).to_average(p)
    if len(preds) < 2:
        return []
    rng = np.random.default_rng(seed)
    bags = max(1, min(BAGS, BAG_ROWS // max(1, len(folds.oof_fold))))
    weights: dict[int, float] = {}
    for _ in range(bags):
        view, rows = bootstrap(folds, rng) if bags > 1 else (folds, slice(None))
        counts = greedy(task, {n: p[rows] for n, p in preds.items()}, view, sign, target_scale)
        for n, c in counts.items():
            weights[n] = weights.get(n, 0.0) + c / ROUNDS / bags
    if len(weights) < 2:
        return []
    full = {int(n): w for n, w in sorted(weights.items(), key=lambda kv: -kv[1])}
    kept = {n: w for n, w in full.items() if w >= TRIM - 1e-12}
    sets = [full] + ([kept] if 2 <= len(kept) < len(full) else [])
    by_trial = {t["trial"]: t for t in pool}
    found = []
    for k, members in enumerate(sets):
        if all(int(n) < 0 for n in members):  # references alone: the bundle always holds a network
            continue
        total = sum(members.values())
        members = {n: w / total for n, w in members.items()}
        out = members_output(task, preds, members)
        s, spread, loss, per_fold = _evaluate(task, out, folds, target_scale)
        e = {"members": members, "score": s, "spread": spread, "oof_loss": loss, "fold_scores": per_fold,
             "fold_losses": fold_losses(task, out, folds), "bags": bags}
        for c in COSTS.values():
            vals = [by_trial[m].get(c.attr) for m in members]
            e[c.attr] = None if any(v is None for v in vals) else float(sum(vals))
        e["cost"] = cost_value(cost, e)
        e["name"] = f"E{k + 1}"
        shown = [f"#{m}" if m >= 0 else by_trial[m]["name"] for m in list(members)[:ARCH_MEMBERS]]  # heaviest first
        more = len(members) - len(shown)
        e["arch"] = f"ensemble of {len(members)}: " + "+".join(shown) + (f" +{more} more" if more else "")
        found.append(e)
    return found


#: The true values of the out-of-fold rows, saved beside the trials' out-of-fold outputs.
TRUTH_FILE = "truth.npy"


def output_reader(points: list[dict[str, Any]], task: str) -> Callable[[dict[str, Any]], np.ndarray | None]:
    """A function giving a point of ``points`` its out-of-fold outputs (the networks' units, a row per
    out-of-fold example): a trial's from its saved file, an ensemble's as its members' weighted
    average. It gives ``None`` where a file is missing (a study from before, or exported on another
    machine)."""
    files = {p["trial"]: p.get("oof") for p in points if p.get("kind", "trial") in ("trial", "reference")}
    some = next((Path(f) for f in files.values() if f), None)
    truth = None if some is None or not (some.parent / TRUTH_FILE).exists() else np.load(some.parent / TRUTH_FILE)
    cache: dict[int, np.ndarray | None] = {}

    def averaged(trial: int) -> np.ndarray | None:
        if trial not in cache:
            f = files.get(trial)
            p = np.load(f).astype(np.float64) if f and Path(f).exists() else None
            ok = p is not None and truth is not None and len(p) == len(truth) and np.isfinite(p).all()
            cache[trial] = get_task(task).to_average(p) if ok else None
        return cache[trial]

    def outputs(point: dict[str, Any]) -> np.ndarray | None:
        members = point.get("members") or {point.get("trial"): 1.0}
        preds = {int(m): averaged(int(m)) for m in members if m is not None}
        if truth is None or not preds or any(v is None for v in preds.values()):
            return None
        return members_output(task, preds, {int(m): w for m, w in members.items()})

    outputs.truth = truth  # type: ignore[attr-defined]
    return outputs


def loss_reader(points: list[dict[str, Any]], task: str) -> Callable[[dict[str, Any]], np.ndarray | None]:
    """A function giving each example's out-of-fold loss (``cellsearch.folds.row_losses``) of a point
    of ``points`` (``None`` where its outputs are missing: ``output_reader``)."""
    from cellsearch.folds import row_losses

    outputs = output_reader(points, task)

    def losses(point: dict[str, Any]) -> np.ndarray | None:
        out = outputs(point)
        return None if out is None else row_losses(task, out, outputs.truth)  # type: ignore[attr-defined]

    return losses


def assemble(point: dict[str, Any], checkpoint: Any) -> Any:
    """The model of a front point: a trial's checkpoint (one model, or its fold models), or an
    ensemble's members' models weighted as selected. ``checkpoint(trial)`` is the path of a trial's
    checkpoint file."""
    from cellsearch.model import EnsembleModel, load_checkpoint

    if not point.get("members"):
        return load_checkpoint(checkpoint(point["trial"]))[0]
    models, weights, sources = [], [], []
    # networks first (the heaviest network then leads: its spec is the ensemble's), reference members after
    for trial, w in sorted(point["members"].items(), key=lambda kv: int(kv[0]) < 0):
        m, _ = load_checkpoint(checkpoint(int(trial)))
        parts = list(m.members) if isinstance(m, EnsembleModel) else [m]
        inner = m.weights if isinstance(m, EnsembleModel) else [1.0]
        src = m.sources if isinstance(m, EnsembleModel) else [{"trial": int(trial)}]
        models += parts
        weights += [w * v for v in inner]
        sources += src
    return EnsembleModel(models, weights, sources)
