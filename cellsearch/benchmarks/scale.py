"""Scale-out figures (``python -m cellsearch.benchmarks.scale``).

1. Throughput: trials per hour of the same search with 1 and with 2 workers on this machine.
2. Storage overhead per trial: the Optuna storage calls one trial makes (create, suggest the
   parameters, report per-epoch values, set the user attributes, finish, plus heartbeats) timed
   against SQLite and, when ``--postgres URL`` is given, PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def storage_overhead(url: str, trials: int = 20, epochs: int = 12) -> dict:
    import optuna

    from cellsearch.cells import CELLS
    from cellsearch.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    name = f"bench-{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = study.ask()
        trial.suggest_int("n_layers", 1, 3)
        for k in range(2):
            trial.suggest_categorical(f"l{k}_cell", list(CELLS))
            trial.suggest_int(f"l{k}_hidden", 16, 256, log=True)
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_float("dropout", 0.0, 0.4)
        for key in ("arch", "spec", "macs", "params"):
            trial.set_user_attr(key, 1)
        for _ in range(epochs):
            storage.record_heartbeat(trial._trial_id)
        for key in ("curve", "val_score", "best_epoch", "epochs", "train_seconds", "stopped_by", "latency_ms",
                    "checkpoint", "checkpoint_uri"):
            trial.set_user_attr(key, [0.5] * epochs if key == "curve" else 1)
        study.tell(trial, [0.9, 1000.0])
        times.append(time.perf_counter() - t0)
    return {"url": url.split("@")[-1], "median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}


def throughput(data: str, space: str, trials: int) -> dict:
    from cellsearch.search import tune

    out = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = tune(data, space=space, trials=trials, workers=workers, run_dir=Path(tmp), progress=False, seed=0)
            seconds = time.perf_counter() - t0
            out[f"{workers}_workers"] = {"seconds": seconds, "trials_per_hour": trials / seconds * 3600,
                                         "counts": r.counts}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="examples/digits.csv")
    ap.add_argument("--space", default="quick")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--postgres", help="postgresql://user:password@host/db for the storage figure")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        res["storage_sqlite"] = storage_overhead(f"sqlite:///{Path(tmp) / 'b.db'}")
    if args.postgres:
        res["storage_postgres"] = storage_overhead(args.postgres)
    if not args.skip_throughput:
        res["throughput"] = throughput(args.data, args.space, args.trials)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
