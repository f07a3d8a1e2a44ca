"""Where a small model's training step goes, and what training the folds together buys
(``python -m cellsearch.benchmarks.steps``, also ``cellsearch bench --steps``; issue 31).

The shape of a trial on a small real set: 67 sequences of 12 steps, a GRU of 64 units, batches of
11, five folds. In one process, one after another, on the same thread count:

* ``bare``: a plain PyTorch loop training one model — forward, backward, ``Adam.step`` on one batch
  after another (no Lightning, no validation), timed by part: the model's forward and backward, and
  the optimiser;
* ``lightning``: ``cellsearch.train.fit`` with ``fixed_steps`` (the trainer, the data module and
  loader, the deadline callback; no validation);
* ``alone``: ``fit`` as a trial ran each fold before (validation at the schedule's interval, early
  stopping, the history callback, the kept best weights), per fold;
* ``together``: ``cellsearch.foldbatch.fit_folds``, the five folds as one batched model, validation
  and early stopping per fold, in milliseconds per fold-step (optimiser steps x folds advanced);
* ``search``: the real thing — ``tune`` on a one-point space (that GRU, the same steps in every
  trial, ``--no-prune``, five folds), with ``--fold-batching off`` and ``on``: fold-steps per second of
  the trials' training (``train_seconds``), and each trial's whole wall time.

The goal's ratio: the search's fold-steps per second of training over the bare loop's steps per
second (goal: at least 1.0).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _data(path: Path, n: int = 67, steps: int = 12, seed: int = 0) -> Path:
    """A small two-class long-layout file of the issue's shape."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        x = np.cumsum(rng.normal(0.3 * (label - 0.5), 1.0, size=(steps, 3)), axis=0)
        rows.append(pd.DataFrame({"id": i, "t": np.arange(steps), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                                  "label": f"c{label}"}))
    pd.concat(rows).to_csv(path, index=False)
    return path


def run_steps(steps: int = 500, hidden: int = 64, batch: int = 11, threads: int = 1,
              val_every: int = 50) -> dict[str, Any]:
    """Milliseconds per optimiser step (fold-step) of each way of training, the search's throughput with
    the folds one by one and together, and the goal's ratio (module doc).

    Example:
        >>> r = run_steps(steps=20, hidden=8, val_every=10)  # doctest: +SKIP
        >>> r["bare_ms"] > 0 and r["together_ms"] > 0 and r["search"]["on"]["together"] == 3
        True
    """
    import torch

    from cellsearch.data import read_dataset
    from cellsearch.foldbatch import fit_folds
    from cellsearch.folds import make_folds
    from cellsearch.model import ModelSpec, build
    from cellsearch.stack import LayerSpec
    from cellsearch.train import TrainOptions, fit

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ds = read_dataset(_data(Path(tmp) / "small.csv"), test_size=0.0, val_size=0.0)
    fold = make_folds(ds, 5).folds[0]
    spec = ModelSpec(input_size=ds.n_features, layers=(LayerSpec("gru", hidden, False),), n_outputs=ds.n_outputs,
                     task=ds.task)

    def model() -> Any:
        torch.manual_seed(0)
        return build(spec)

    # bare: the same batches a fold trains on, in a plain loop
    train = fold.train.tensors()
    x, lengths = torch.from_numpy(train.x), torch.from_numpy(train.lengths.astype("int64"))
    y = torch.from_numpy(train.y.astype("int64"))
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    for _ in range(20):  # warm-up, untimed: the first steps pay for caches, threads and lazy set-up
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x[order[:batch]], lengths[order[:batch]]), y[order[:batch]]).backward()
        opt.step()
    fwd_bwd = step_opt = 0.0
    t0 = time.perf_counter()
    for k in range(steps):
        idx = order[(k * batch) % len(y):(k * batch) % len(y) + batch]
        if len(idx) == 0:
            idx = order[:batch]
        a = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x[idx], lengths[idx]), y[idx]).backward()
        b = time.perf_counter()
        opt.step()
        fwd_bwd += b - a
        step_opt += time.perf_counter() - b
    bare = time.perf_counter() - t0

    options = TrainOptions(lr=3e-3, batch_size=batch, max_epochs=max(1, steps // val_every), patience=10 ** 6,
                           min_steps=steps, max_steps=steps)
    plain = fit(model(), ds, options, fold=fold, fixed_steps=steps)
    searched = fit(model(), ds, options, fold=fold)
    folds = make_folds(ds, 5).folds
    seeds = [1009 * k for k in range(len(folds))]
    t0 = time.perf_counter()
    together = fit_folds([model() for _ in folds], ds, options, folds, seeds=seeds)
    together_s = time.perf_counter() - t0
    k_parts = _batched_parts([model() for _ in folds], ds, folds, seeds, batch, steps)
    timed = (("bare_ms", bare, steps), ("lightning_ms", plain.train_seconds, plain.steps),
             ("alone_ms", searched.train_seconds, searched.steps),
             ("together_ms", together_s, sum(r.steps for r in together)))
    per = {name: 1000 * seconds / max(1, n) for name, seconds, n in timed}
    search = {mode: run_search(steps, hidden, batch, val_every, mode) for mode in ("off", "on")}
    return {**{k: round(v, 3) for k, v in per.items()},
            "parts_ms": {"model forward+backward": round(1000 * fwd_bwd / steps, 3),
                         "optimiser": round(1000 * step_opt / steps, 3),
                         "Lightning loop, data module, callbacks": round(per["lightning_ms"] - per["bare_ms"], 3),
                         f"validation every {val_every} steps, early stopping, history":
                             round(per["alone_ms"] - per["lightning_ms"], 3)},
            "together_parts_ms": {
                "batched forward+backward (vmap), per fold-step": k_parts["forward+backward"],
                "fused Adam, per fold-step": k_parts["optimiser"],
                "Lightning loop, data, validation, early stopping, per fold-step":
                    round(per["together_ms"] - k_parts["forward+backward"] - k_parts["optimiser"], 3)},
            "search": search,
            "ratio": round(search["on"]["fold_steps_per_s"] * per["bare_ms"] / 1000, 3),
            "ratio_before": round(search["off"]["fold_steps_per_s"] * per["bare_ms"] / 1000, 3),
            "threads": threads, "hidden": hidden, "batch": batch, "steps": steps}


def _batched_parts(models: list[Any], ds: Any, folds: list[Any], seeds: list[int], batch: int,
                   steps: int) -> dict[str, float]:
    """Milliseconds per fold-step of the batched models' forward and backward and of the fused Adam
    step, in a bare loop over the folds' own batches (what ``fit_folds`` adds is the rest)."""
    from cellsearch.foldbatch import FoldStream, StackedModels, fold_parts, mean_fold_losses
    from cellsearch.tasks import get_task
    from cellsearch.train import adam

    stacked = StackedModels(models).train()
    opt = adam(stacked.parameters(), 3e-3)
    task = get_task(ds.task)
    stream = iter(FoldStream(fold_parts(ds, folds)[0], [batch] * len(folds), seeds))
    fwd_bwd = step_opt = 0.0
    for _ in range(steps):
        x, lengths, y, _, real = next(stream)
        a = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        mean_fold_losses(task, stacked(x, lengths), y, real).sum().backward()
        b = time.perf_counter()
        opt.step()
        fwd_bwd += b - a
        step_opt += time.perf_counter() - b
    n = steps * len(models)
    return {"forward+backward": round(1000 * fwd_bwd / n, 3), "optimiser": round(1000 * step_opt / n, 3)}


#: The one-point space of the goal: one GRU, one learning rate and batch, the same steps in every trial.
ONE_POINT = """layers: {{depth: 1, cell: gru, hidden: {hidden}}}
dropout: 0.0
lr: 3.0e-3
batch_size: {batch}
patch: 1
pooling: last
normalize: false
crop: 0.0
max_epochs: {checks}
patience: 100000
min_steps: {steps}
max_steps: {steps}
"""


def run_search(steps: int, hidden: int, batch: int, val_every: int, fold_batching: str,
               trials: int = 3) -> dict[str, float]:
    """``tune`` on the one-point space (``--no-prune``, five folds, one worker): fold-steps per second
    of the trials' training, and seconds per trial of wall time (model building, costs and
    checkpoints included)."""
    import optuna

    from cellsearch.records import TrialRecord
    from cellsearch.search import tune

    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "one.yaml"
        space.write_text(ONE_POINT.format(hidden=hidden, batch=batch, steps=steps, checks=max(1, steps // val_every)))
        t0 = time.perf_counter()
        result = tune(_data(Path(tmp) / "small.csv"), space=str(space), trials=trials, cv=5, prune=False,
                      workers=1, references=False, ensemble=False, track=False, progress=False,
                      fold_batching=fold_batching, run_dir=Path(tmp) / "runs", test_size=0.0)
        wall = time.perf_counter() - t0
        recs = [TrialRecord.of(t) for t in result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    fold_steps = sum(r.steps or 0 for r in recs)
    seconds = sum(r.train_seconds or 0.0 for r in recs)
    return {"trials": len(recs), "fold_steps": fold_steps, "train_seconds": round(seconds, 3),
            "fold_steps_per_s": round(fold_steps / seconds, 1) if seconds else 0.0,
            "seconds_per_trial": round(wall / max(1, len(recs)), 3),
            "together": sum(bool(r.together) for r in recs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from cellsearch.kernels import cpu_model

    result = {"cpu": cpu_model(), **run_steps(steps=args.steps, hidden=args.hidden, threads=args.threads)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
