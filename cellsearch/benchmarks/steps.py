"""Where a small model's training step goes (``python -m cellsearch.benchmarks.steps``; issue 31).

The shape of a trial on a small real set: 67 sequences of 12 steps, a GRU of 64 units, batches of
11. The same model trains for the same number of optimiser steps four ways, in one process, one
after another, on the same thread count:

* ``bare``: a plain PyTorch loop — forward, backward, ``Adam.step`` on one batch after another (no
  Lightning, no validation), timed by part: the model's forward and backward, and the optimiser;
* ``lightning``: ``cellsearch.train.fit`` with ``fixed_steps`` (the trainer, the data module and
  loader, the deadline callback; no validation);
* ``search``: ``fit`` as a trial runs it (validation at the schedule's interval, early stopping, the
  history callback, the kept best weights);
* per part: the Lightning loop's own cost is ``lightning - bare``, validation and its callbacks
  ``search - lightning``.

Reports milliseconds per step, and the throughput ratio the issue's goal is stated in: optimiser
steps per second of the search's training over the bare loop's (goal: at least 1.0, with the folds
advanced together; today a fraction).
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
    """Milliseconds per optimiser step of each way of training (module doc).

    Example:
        >>> r = run_steps(steps=20, hidden=8, val_every=10)
        >>> r["bare_ms"] > 0 and r["ratio"] > 0
        True
    """
    import torch

    from cellsearch.data import read_dataset
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
    timed = (("bare_ms", bare, steps), ("lightning_ms", plain.train_seconds, plain.steps),
             ("search_ms", searched.train_seconds, searched.steps))
    per = {name: 1000 * seconds / max(1, n) for name, seconds, n in timed}
    return {**{k: round(v, 3) for k, v in per.items()},
            "parts_ms": {"model forward+backward": round(1000 * fwd_bwd / steps, 3),
                         "optimiser": round(1000 * step_opt / steps, 3),
                         "Lightning loop, data module, callbacks": round(per["lightning_ms"] - per["bare_ms"], 3),
                         f"validation every {val_every} steps, early stopping, history":
                             round(per["search_ms"] - per["lightning_ms"], 3)},
            "steps": {"bare": steps, "lightning": plain.steps, "search": searched.steps},
            "ratio": round(per["bare_ms"] / per["search_ms"], 3), "threads": threads, "hidden": hidden,
            "batch": batch}


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
