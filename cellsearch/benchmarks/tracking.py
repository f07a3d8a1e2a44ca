"""Tracking overhead (``python -m cellsearch.benchmarks.tracking``).

1. Per trial: the MLflow calls one trial makes (create the nested run with its parameters, one
   batched metric call per epoch, the final metrics and state), timed against the run directory's
   SQLite store, for a trial of ``--epochs`` epochs.
2. End to end: the same small search with and without tracking, wall time per trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cellsearch.records import TrialRecord


def per_trial(epochs: int, repeats: int) -> dict:
    from cellsearch.model import ModelSpec
    from cellsearch.stack import LayerSpec
    from cellsearch.tracking import MLflowTracker, default_tracking_uri

    spec = ModelSpec(8, (LayerSpec("peephole", 32), LayerSpec("gru", 16)), 10, "classification")
    cfg = {"dropout": 0.1, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "max_epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        tr = MLflowTracker(tracking_uri=default_tracking_uri(run_dir), run_dir=run_dir, study_name="bench",
                           data="x.csv", meta={}, argv=sys.argv)
        times = []
        for n in range(repeats):
            t0 = time.perf_counter()
            run = tr.start_trial(n, spec, cfg)
            for e in range(epochs):
                run.log_epoch(e, {"train_loss": 0.5, "val_loss": 0.4, "val_score": 0.9})
            run.finish("FINISHED", metrics={"score": 0.9, "macs": 1e5, "params": 1e4, "train_seconds": 3.0,
                                            "epochs": epochs})
            times.append(time.perf_counter() - t0)
    return {"epochs": epochs, "median_s": statistics.median(times), "max_s": max(times)}


def end_to_end(data: str, space: str, trials: int) -> dict:
    from cellsearch.search import tune

    out = {}
    for track in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = tune(data, space=space, trials=trials, run_dir=Path(tmp), track=track, progress=False, seed=0)
            total = time.perf_counter() - t0
            train = sum(TrialRecord.of(t).train_seconds or 0.0 for t in r.study.trials)
            out["tracked" if track else "untracked"] = {"total_s": total, "per_trial_s": total / trials,
                                                        "train_s_per_trial": train / trials}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--data", default="examples/digits.csv")
    ap.add_argument("--space", default="quick")
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    res = {"per_trial": per_trial(args.epochs, args.repeats)}
    if args.trials:
        res["end_to_end"] = end_to_end(args.data, args.space, args.trials)
    print(json.dumps(res, indent=2))
    p = res["per_trial"]
    print(f"MLflow calls of one {p['epochs']}-epoch trial: median {p['median_s'] * 1e3:.0f} ms "
          f"({p['median_s'] / 5.0:.1%} of a 5-second trial), max {p['max_s'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
