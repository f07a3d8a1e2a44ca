"""Pruning that waits for evidence: asynchronous successive halving (ASHA) on the smoothed
validation loss, by optimiser steps within a trial's first fold and by folds across them.

Why not "worse than the median at this check": on a few dozen sequences the accuracy of one
validation check is noise (a fold of 12 sequences scores 0.5 at one check and 0.92 at the next),
and a check 100 steps in says little of where a model ends. Deciding there killed nine trials in ten
before they had trained. Here:

* **No decision before the trial's ``min_steps``** optimiser steps: its first rung. Rungs follow at
  ``min_steps x ETA^k`` steps (with no step floor, at three validation checks x ``ETA^k``).
* **The signal is the validation loss**, continuous (each row counts by how sure the model was, not
  only whether it was right), smoothed over checks (an exponential average, weight ``SMOOTH`` on the
  newest), and the best smoothed value so far is what a rung compares.
* **Promotion by rank, ASHA's rule** (Li et al. 2020): at a rung, a trial goes on when it is among the
  best ``ceil(n / ETA)`` of the ``n`` trials that reached that rung (itself included, complete, pruned
  or still running), and never before ``PEERS`` others have reached it.
* **Folds are rungs too**: after fold j of K, the mean of its folds' best smoothed validation losses
  against the trials that finished j folds, with ``FOLD_ETA`` (a trial that trained a whole fold has
  paid most of what pruning could save, and every complete trial is one more ensemble member).

* **Time is evidence too**: after fold j of K, a trial whose pace (its mean seconds per fold so far)
  cannot train the folds it has left before the search's deadline stops there (``cannot_finish``).
  Its folds would be cut at the deadline anyway, and a trial short of its last fold gives the
  ensemble nothing; the worker starts a trial that can finish instead. On a yearly panel of 148
  series (5 folds, 300 s) one 3-layer trial took 4 folds' 230 s, 42% of the search's worker time,
  and was then cut at the deadline.

Every trial records what it reached (``TrialRecord.rungs`` and ``race``) as it reaches it, so the
workers of a study, on one machine or many, decide against the same evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: Rungs grow by this factor; a trial goes on at a rung when in the best 1/ETA of those there.
ETA = 3
#: Across folds: the best 1/FOLD_ETA of the trials that finished as many folds go on.
FOLD_ETA = 2
#: Others that must have reached a rung before it decides anything.
PEERS = 4
#: Weight of the newest check in the smoothed validation loss.
SMOOTH = 0.5
#: With no step floor, the first rung falls at this many validation checks.
FIRST_CHECKS = 3


def smoothed_best(losses: Sequence[float]) -> float:
    """The best (lowest) exponentially smoothed loss over a sequence of checks; non-finite checks
    count as no improvement. ``inf`` for no finite check."""
    avg, best = math.nan, math.inf
    for v in losses:
        if not math.isfinite(v):
            continue
        avg = v if math.isnan(avg) else SMOOTH * v + (1 - SMOOTH) * avg
        best = min(best, avg)
    return best


def promoted(mine: float, peers: Sequence[float], eta: int, min_peers: int = PEERS) -> bool:
    """ASHA's rule: whether ``mine`` (lower is better) is among the best ``ceil(n / eta)`` of the
    ``n`` values at a rung (``peers`` and itself); always true with fewer than ``min_peers`` peers."""
    if len(peers) < min_peers:
        return True
    return sum(p < mine for p in peers) < math.ceil((len(peers) + 1) / eta)


def rung_steps(min_steps: int, first_check_step: int, rung: int, eta: int = ETA) -> int:
    """Optimiser steps at which rung ``rung`` falls (0: the trial's step floor)."""
    base = min_steps if min_steps > 0 else FIRST_CHECKS * max(1, first_check_step)
    return base * eta ** rung


@dataclass
class StepRungs:
    """The rungs of one trial's first fold. ``peers(k)`` gives the values other trials recorded at
    rung ``k``; ``record(values)`` stores this trial's (so peers see it while it runs)."""

    min_steps: int
    peers: Callable[[int], list[float]]
    record: Callable[[list[float]], None]
    eta: int = ETA
    losses: list[float] = field(default_factory=list)
    reached: list[float] = field(default_factory=list)
    first_step: int = 0

    def should_stop(self, step: int, loss: float) -> bool:
        """After a validation check at optimiser step ``step`` with loss ``loss``: record every
        rung the trial has now reached and say whether it falls out at one of them."""
        self.losses.append(loss)
        self.first_step = self.first_step or step
        stop = False
        while step >= rung_steps(self.min_steps, self.first_step, len(self.reached), self.eta):
            k = len(self.reached)
            mine = smoothed_best(self.losses)
            self.reached.append(mine)
            self.record(list(self.reached))
            if not promoted(mine, self.peers(k), self.eta):
                stop = True
                break
        return stop


def fold_value(fold_losses: Sequence[Sequence[float]]) -> float:
    """A trial's value after some folds: the mean of each fold's best smoothed validation loss."""
    values = [smoothed_best(f) for f in fold_losses]
    return float(sum(values) / len(values)) if values else math.inf


def cannot_finish(elapsed: float, done: int, total: int, left: float) -> bool:
    """Whether a trial that took ``elapsed`` seconds for its first ``done`` folds of ``total`` would,
    at that pace, still be training its last when the ``left`` seconds before the deadline run out."""
    if done <= 0 or done >= total:
        return False
    return (total - done) * elapsed / done > left
