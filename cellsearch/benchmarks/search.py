"""What stopping hopeless trials saves (``python -m cellsearch.benchmarks.search``).

Runs the same search (same data, space, seed and trial count) with and without early stopping of
trials, for both modes: ``--objective score`` (Optuna's median pruner via our Lightning callback)
and the default Pareto search (cellsearch's own median-stopping rule). Reports the total epochs
trained and the best validation score of each run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cellsearch.records import TrialRecord


def _epochs(study) -> int:
    return sum(len(TrialRecord.of(t).curve) for t in study.trials)


def run(data: str, space: str, trials: int, seed: int, objectives: tuple[str, ...] = ("score", "pareto")) -> list[dict]:
    from cellsearch.search import tune

    rows = []
    for objective in objectives:
        for prune in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                r = tune(data, space=space, trials=trials, seed=seed, objective=objective, prune=prune,
                         run_dir=Path(tmp), track=False, progress=False)
                best = max if r.direction == "maximize" else min
                scores = [rec.val_score for rec in map(TrialRecord.of, r.study.trials) if rec.complete]
                rows.append({"objective": objective, "prune": prune, "epochs": _epochs(r.study),
                             "best_score": best(scores) if scores else None, "seconds": time.perf_counter() - t0,
                             "pruned": r.counts.get("pruned", 0), "metric": r.metric})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="examples/digits.csv")
    ap.add_argument("--space", default="quick")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objective", choices=["score", "pareto", "both"], default="both")
    args = ap.parse_args()
    objectives = ("score", "pareto") if args.objective == "both" else (args.objective,)
    rows = run(args.data, args.space, args.trials, args.seed, objectives)
    print(json.dumps(rows, indent=2))
    for objective in objectives:
        off, on = (r for r in rows if r["objective"] == objective)
        cut = 1 - on["epochs"] / max(off["epochs"], 1)
        print(f"{objective}: epochs {off['epochs']} -> {on['epochs']} ({cut:.0%} fewer), best {on['metric']} "
              f"{off['best_score']:.4f} -> {on['best_score']:.4f}, {on['pruned']} trials pruned, "
              f"{off['seconds']:.0f} s -> {on['seconds']:.0f} s")


if __name__ == "__main__":
    main()
