"""The Pareto front of a study on (score, cost), the pick rules, and the points they work on.

Points are the complete trials and the ensembles selected from them (``cellsearch.ensemble``,
``kind`` says which). Scores are compared with the out-of-fold loss as a tie-break (``rank``): of
two trials with the same accuracy, the one more confident on the right answers ranks higher.

The chosen model is the *knee* of the front, the point where giving up compute starts to cost real
accuracy. Cross-validated, "real" is measured: the cheapest front member whose score (paired by
fold) and out-of-fold loss (paired by example) are within one standard error of the best one's.
With one validation split: with score and log-cost each scaled to [0, 1] over the front, the front
point farthest above the straight line between the front's two ends. ``pick="best"`` takes the best score and
``pick="smallest"`` the cheapest front member.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cellsearch.costs import COSTS, cost_value


def trial_points(study: Any, cost: str, ensembles: bool = True, root: Any = None) -> list[dict[str, Any]]:
    """One point per complete trial — its score (mean over folds) and spread, out-of-fold loss,
    ``cost`` and what tables and plots show of it (``choices`` are its searched parameters, as Optuna
    names them) — and, with ``ensembles``, one per ensemble the study holds. ``root``: the run
    directory the stored checkpoint and out-of-fold paths are relative to."""
    import optuna

    from cellsearch.files import in_run_dir

    pts = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "val_score" not in a:
            continue
        pts.append({"trial": t.number, "name": str(t.number), "kind": "trial", "arch": a.get("arch", ""),
                    "score": float(a["val_score"]), "spread": a.get("val_spread"), "oof_loss": a.get("oof_loss"),
                    "folds": a.get("folds", 1), "fold_scores": a.get("fold_scores"),
                    "fold_losses": a.get("fold_losses"), "cost": cost_value(cost, a),
                    **{c.attr: a.get(c.attr) for c in COSTS.values()},
                    "epochs": a.get("epochs"), "train_seconds": a.get("train_seconds"),
                    "checkpoint": in_run_dir(root, a.get("checkpoint")), "oof": in_run_dir(root, a.get("oof")),
                    "choices": dict(t.params)})
    if ensembles:
        k = max((p["folds"] or 1 for p in pts), default=1)
        for e in study.user_attrs.get("ensembles", []):
            pts.append({**e, "trial": None, "kind": "ensemble", "cost": cost_value(cost, e), "folds": k,
                        "members": {int(k): v for k, v in e["members"].items()}})
    return pts


def rank(point: dict[str, Any], direction: str) -> tuple[float, float]:
    """A point's score as a sortable key (higher is better): the score, then the out-of-fold loss."""
    loss = point.get("oof_loss")
    loss = loss if loss is not None and math.isfinite(loss) else 0.0
    return (1.0 if direction == "maximize" else -1.0) * point["score"], -loss


def pareto_front(points: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """Non-dominated points on (score, cost), cheapest first; ``cost`` is always minimised and equal
    scores are told apart by the out-of-fold loss (``rank``)."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        sa, sb = rank(a, direction), rank(b, direction)
        return sa >= sb and a["cost"] <= b["cost"] and (sa > sb or a["cost"] < b["cost"])

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: p["cost"])


def _paired_within_one_se(best: Any, other: Any, sign: float) -> bool:
    """Whether ``other`` is within one standard error of ``best``, paired (by fold or by example):
    the mean of the paired differences (``sign`` makes larger better) against their own standard
    error."""
    d = [sign * (float(x) - float(y)) for x, y in zip(best, other)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1))
    return mean <= sd / math.sqrt(len(d)) + 1e-12


def _within_one_se(best: dict[str, Any], p: dict[str, Any], sign: float, se: float,
                   losses: Callable[[dict[str, Any]], Any] | None = None) -> bool:
    """Whether ``p`` is as good as ``best`` within one standard error. Paired by fold where both have
    every fold's score: the mean of the per-fold differences against their own standard error. The
    folds differ in difficulty (rolling-origin windows above all), and that variation, shared by
    every model, is not uncertainty about which is better; the paired error leaves it out, so a
    cheaper model is taken only where it is as good fold by fold. Else the best score's own error.

    ``p`` must also be within one paired standard error of ``best`` on the out-of-fold loss. On
    small data the score saturates (many trials classify every validation sequence right) and a
    coarse score cannot tell them apart; the continuous loss can: a model that is right but barely
    sure is not taken in place of one that is right and sure. The loss is paired by example where
    ``losses`` gives each example's (N − 1 degrees of freedom instead of K − 1: with five folds
    the error of the error is itself large), else by fold."""
    a, b = best.get("fold_scores"), p.get("fold_scores")
    if not (a and b and len(a) == len(b) > 1):
        return sign * (best["score"] - p["score"]) <= se + 1e-12
    if not _paired_within_one_se(a, b, sign):
        return False
    ea, eb = (losses(best), losses(p)) if losses is not None else (None, None)
    if ea is not None and eb is not None and len(ea) == len(eb) > 1:
        return _paired_within_one_se(ea, eb, -1.0)
    la, lb = best.get("fold_losses"), p.get("fold_losses")
    if la and lb and len(la) == len(lb) == len(a) and all(map(math.isfinite, [*la, *lb])):
        return _paired_within_one_se(la, lb, -1.0)
    return True


def pick_trial(front: list[dict[str, Any]], direction: str, rule: str = "knee",
               losses: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any] | None:
    """Choose from the front by ``rule``: knee (default), best or smallest. See the module doc.
    ``losses`` gives a point's out-of-fold loss example by example (``ensemble.loss_reader``), which
    the cross-validated knee pairs; without it the knee pairs the fold losses."""
    if not front:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(front, key=lambda p: (*rank(p, direction), -p["cost"]))
    if rule == "best":
        return best
    if rule == "smallest":
        return min(front, key=lambda p: (p["cost"], *(-v for v in rank(p, direction))))
    folds = best.get("folds") or 1
    if best.get("spread") is not None and folds > 1:
        # Cross-validated: the cheapest member within one standard error of the best score (the
        # one-standard-error rule): compute is given up only where the folds cannot tell the scores apart.
        se = best["spread"] / math.sqrt(folds - 1)
        return min((p for p in front if _within_one_se(best, p, sign, se, losses)), key=lambda p: p["cost"])
    if len(front) <= 2:
        return best
    s = [sign * p["score"] for p in front]
    c = [math.log10(max(p["cost"], 1e-12)) for p in front]
    s_lo, s_hi, c_lo, c_hi = min(s), max(s), min(c), max(c)
    if s_hi - s_lo < 1e-12 or c_hi - c_lo < 1e-12:
        return best
    xs = [(ci - c_lo) / (c_hi - c_lo) for ci in c]  # 0 = cheapest
    ys = [(si - s_lo) / (s_hi - s_lo) for si in s]  # 1 = best score
    # Distance above the chord from the cheapest front point to the best-scoring one.
    x0, y0, x1, y1 = xs[0], ys[0], xs[-1], ys[-1]
    norm = math.hypot(x1 - x0, y1 - y0) or 1.0
    dist = [((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / norm for x, y in zip(xs, ys)]
    k = max(range(len(front)), key=lambda i: dist[i])
    return front[k] if dist[k] > 1e-9 else best
