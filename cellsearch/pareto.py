"""The Pareto front of a study on (score, cost), the pick rules, and the points they work on.

Points are the complete trials and the ensembles selected from them (``cellsearch.ensemble``,
``kind`` says which). Scores are compared with the out-of-fold loss as a tie-break (``rank``): of
two trials with the same accuracy, the one more confident on the right answers ranks higher.

A single trial never dominates the ensemble: the trial at the top of a search was chosen as the best
of many on the same out-of-fold rows its score is read on, so that score is the most optimistic of
the study (the winner's curse); the bagged ensemble's weights were chosen on resamples of those rows
and its score is the less flattering of the two. On held-out folds of the development sets' kept
studies, letting such a trial win over the ensemble did worse every time it changed the choice.

The chosen model is the *knee* of the front, the point where giving up compute starts to cost real
accuracy. Cross-validated, that is measured: the cheapest front member shown to be as good as the
reference — the ensemble where the search built one, else the best-scoring member — within small
margins (``SCORE_MARGIN`` of its score, paired by fold, and ``LOSS_MARGIN`` of its out-of-fold loss,
paired by example: the upper one-standard-error bound of the shortfall within the margin).
With one validation split (large data) the same rule, the loss paired by the split's examples and
the score within its margin (``_equivalent_on_one_split``): the geometric knee used before (the
front point farthest above the chord between the front's two ends, score and log-cost scaled to
[0, 1]) took a single network whose 486-review validation score was 1.4 points below the ensemble's
and which lost 3.1 points to it on the 1,000 test reviews; it remains only where no out-of-fold
losses are at hand. ``pick="best"`` takes the best score and ``pick="smallest"`` the cheapest front
member.
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

    from cellsearch.records import TrialRecord
    from cellsearch.rundir import in_run_dir

    pts = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        if not r.complete:
            continue
        pts.append({"trial": t.number, "name": str(t.number), "kind": "trial", "arch": r.arch,
                    "score": float(r.val_score), "spread": r.val_spread, "oof_loss": r.oof_loss,
                    "folds": r.folds, "fold_scores": r.fold_scores or None,
                    "fold_losses": r.fold_losses or None, "cost": cost_value(cost, r.costs),
                    **{c.attr: r.costs.get(c.attr) for c in COSTS.values()},
                    "epochs": r.epochs, "train_seconds": r.train_seconds,
                    "checkpoint": in_run_dir(root, r.checkpoint), "oof": in_run_dir(root, r.oof),
                    "choices": dict(t.params)})
    if ensembles:
        k = max((p["folds"] or 1 for p in pts), default=1)
        for e in study.user_attrs.get("ensembles", []):
            pts.append({**e, "trial": None, "kind": "ensemble", "cost": cost_value(cost, e), "folds": k,
                        "members": {int(k): v for k, v in e["members"].items()}})
    return pts


def member_points(study: Any, root: Any = None) -> list[dict[str, Any]]:
    """The reference members the study's ensembles may hold (``cellsearch.refmembers``): points keyed
    by a negative trial number, with their checkpoint and out-of-fold files (relative to ``root``).
    They are not on the Pareto front: the front shows what the search found, references beside it."""
    from cellsearch.rundir import in_run_dir

    return [{**p, "checkpoint": in_run_dir(root, p.get("checkpoint")), "oof": in_run_dir(root, p.get("oof"))}
            for p in study.user_attrs.get("reference_members", [])]


def rank(point: dict[str, Any], direction: str) -> tuple[float, float]:
    """A point's score as a sortable key (higher is better): the score, then the out-of-fold loss.
    Scores equal to 12 significant digits are equal: the mean of the same fold scores added in
    another order differs in its last bits, and that must not decide which of two models dominates."""
    loss = point.get("oof_loss")
    loss = loss if loss is not None and math.isfinite(loss) else 0.0
    return (1.0 if direction == "maximize" else -1.0) * float(f"{point['score']:.12g}"), -loss


def pareto_front(points: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """Non-dominated points on (score, cost), cheapest first; ``cost`` is always minimised and equal
    scores are told apart by the out-of-fold loss (``rank``). A single trial never dominates an
    ensemble (module doc)."""

    ranks = {id(p): rank(p, direction) for p in points}  # once per point, not once per pair

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        if b.get("kind") == "ensemble" and a.get("kind") != "ensemble":
            return False
        sa, sb = ranks[id(a)], ranks[id(b)]
        return sa >= sb and a["cost"] <= b["cost"] and (sa > sb or a["cost"] < b["cost"])

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: p["cost"])


#: The cross-validated knee's equivalence margins: a cheaper model is taken in place of the best
#: only where it is shown to lose at most this share of the best's score (paired by fold) ...
SCORE_MARGIN = 0.01
#: ... and of its out-of-fold loss (paired by example).
LOSS_MARGIN = 0.05


def _shown_within(best: Any, other: Any, sign: float, margin: float) -> bool:
    """Whether ``other`` is shown to be at most ``margin`` worse than ``best``, paired (by fold or by
    example): the mean of the paired shortfalls (``sign`` makes larger better) plus their standard
    error, an upper bound of the shortfall, within the margin."""
    d = [sign * (float(x) - float(y)) for x, y in zip(best, other)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1))
    return mean + sd / math.sqrt(len(d)) <= margin + 1e-12


def _equivalent(best: dict[str, Any], p: dict[str, Any], sign: float, se: float,
                losses: Callable[[dict[str, Any]], Any] | None = None) -> bool:
    """Whether ``p`` is shown to be as good as ``best`` within the margins (``SCORE_MARGIN``,
    ``LOSS_MARGIN``): the upper one-standard-error bound of its shortfall within the margin, on the
    score paired by fold and on the out-of-fold loss paired by example (by fold where the examples'
    losses are not at hand; the score's own error where the folds' scores are not either).

    An equivalence test, not a difference test: "the folds cannot tell the two apart" is what a
    handful of validation sequences always says, and it chose cheap models that lost on new data;
    "the folds show the cheaper one loses little" needs enough data to show it. On small data the
    best (most often an ensemble) is kept; on large data the knee still trades compute away.
    Paired by fold, the folds' shared differences in difficulty (rolling-origin windows above all)
    are left out; the loss tells apart models that saturate the score (every validation sequence
    right) by how sure they are of it."""
    if p is best:
        return True
    a, b = best.get("fold_scores"), p.get("fold_scores")
    margin = SCORE_MARGIN * abs(best["score"])
    if not (a and b and len(a) == len(b) > 1):
        return sign * (best["score"] - p["score"]) + se <= margin + 1e-12
    if not _shown_within(a, b, sign, margin):
        return False
    ea, eb = (losses(best), losses(p)) if losses is not None else (None, None)
    if ea is not None and eb is not None and len(ea) == len(eb) > 1:
        return _shown_within(ea, eb, -1.0, LOSS_MARGIN * abs(sum(ea) / len(ea)))
    la, lb = best.get("fold_losses"), p.get("fold_losses")
    if la and lb and len(la) == len(lb) == len(a) and all(map(math.isfinite, [*la, *lb])):
        return _shown_within(la, lb, -1.0, LOSS_MARGIN * abs(sum(la) / len(la)))
    return True


def _equivalent_on_one_split(best: dict[str, Any], p: dict[str, Any], sign: float,
                             losses: Callable[[dict[str, Any]], Any]) -> bool:
    """``_equivalent`` where the search validated on one split: ``p``'s score within ``SCORE_MARGIN``
    of ``best``'s, and its loss shown within ``LOSS_MARGIN`` of ``best``'s, paired by the split's
    examples (no loss to pair: not shown, so not equivalent)."""
    if p is best:
        return True
    if sign * (best["score"] - p["score"]) > SCORE_MARGIN * abs(best["score"]) + 1e-12:
        return False
    ea, eb = losses(best), losses(p)
    if ea is None or eb is None or len(ea) != len(eb) or len(ea) < 2:
        return False
    return _shown_within(ea, eb, -1.0, LOSS_MARGIN * abs(sum(ea) / len(ea)))


def pick_trial(front: list[dict[str, Any]], direction: str, rule: str = "knee",
               losses: Callable[[dict[str, Any]], Any] | None = None, floor: float | None = None
               ) -> dict[str, Any] | None:
    """Choose from the front by ``rule``: knee (default), best or smallest. See the module doc.
    ``losses`` gives a point's out-of-fold loss example by example (``ensemble.loss_reader``), which
    the cross-validated knee pairs; without it the knee pairs the fold losses. ``floor``: the best
    reference's validation score; a knee below it gives way to the cheapest front member at or above
    it (the best where none is): the chosen model is not worse than what the table shows beside it."""
    chosen = _pick(front, direction, rule, losses)
    if chosen is None or floor is None or rule != "knee":
        return chosen
    sign = 1.0 if direction == "maximize" else -1.0
    if sign * chosen["score"] >= sign * floor:
        return chosen
    above = [p for p in front if sign * p["score"] >= sign * floor]
    return min(above, key=lambda p: p["cost"]) if above else _pick(front, direction, "best", losses)


def _pick(front: list[dict[str, Any]], direction: str, rule: str,
          losses: Callable[[dict[str, Any]], Any] | None) -> dict[str, Any] | None:
    """``pick_trial`` without the reference floor."""
    if not front:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(front, key=lambda p: (*rank(p, direction), -p["cost"]))
    if rule == "best":
        return best
    if rule == "smallest":
        return min(front, key=lambda p: (p["cost"], *(-v for v in rank(p, direction))))
    ensembles = [p for p in front if p.get("kind") == "ensemble"]
    ref = max(ensembles, key=lambda p: (*rank(p, direction), -p["cost"])) if ensembles else best
    folds = ref.get("folds") or 1
    if ref.get("spread") is not None and folds > 1:
        # Cross-validated: the cheapest member shown to be as good as the reference within the
        # margins: compute is given up only where the folds show that it costs little.
        se = ref["spread"] / math.sqrt(folds - 1)
        return min((p for p in front if p["cost"] <= ref["cost"] and _equivalent(ref, p, sign, se, losses)),
                   key=lambda p: p["cost"])
    if losses is not None and losses(ref) is not None:
        # One validation split: the same rule, the loss paired by the split's examples.
        return min((p for p in front if p["cost"] <= ref["cost"] and _equivalent_on_one_split(ref, p, sign, losses)),
                   key=lambda p: p["cost"])
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
