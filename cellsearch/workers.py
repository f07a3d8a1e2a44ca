"""Parallel workers on one machine: N processes share one study through its storage.

The parent process (``tune --workers N``) prepares the study and the MLflow parent run, starts N
workers (``python -m cellsearch.workers CONFIG INDEX``), each with ``cores // N`` torch threads so
that together they do not oversubscribe the CPU, and shows one progress display by polling the
study. Each worker runs trials until the study holds the requested number of finished trials, so a
worker that dies leaves its share to the others; its running trial is failed through its heartbeat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _jsonable(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}


def run_workers(data: Any, opts: dict[str, Any], n: int, deadline: float | None, parent_run_id: str | None,
                on_trial: Any, ctx: Any) -> None:
    """Start ``n`` workers over ``ctx.study`` and wait for them, refreshing the display."""
    from cellsearch.search import _finished

    threads = max(1, (os.cpu_count() or 1) // n)
    wdir = ctx.sdir / "workers"
    wdir.mkdir(parents=True, exist_ok=True)
    cfg_path = wdir / f"config-{os.getpid()}.json"
    cfg = {"data": str(data), "opts": _jsonable(opts), "deadline": deadline, "parent_run_id": parent_run_id,
           "threads": threads}
    cfg_path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = []
    for i in range(n):
        log = (wdir / f"worker-{i}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "cellsearch.workers", str(cfg_path), str(i)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    seen = -1
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            try:
                done = _finished(ctx.study)
            except Exception:  # storage briefly unavailable: the workers retry, the display waits
                continue
            if done != seen:
                seen = done
                on_trial(ctx.study)
        on_trial(ctx.study)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        cfg_path.unlink(missing_ok=True)


def worker_main(cfg_path: str, index: int) -> int:
    """One worker: the same preparation as ``tune``, then trials until the study is full."""
    import torch

    from cellsearch.search import Objective, _prepare, run_trials
    from cellsearch.tracking import MLflowTracker, NullTracker, default_tracking_uri

    cfg = json.loads(Path(cfg_path).read_text())
    torch.set_num_threads(int(cfg["threads"]))
    opts = dict(cfg["opts"])
    opts["worker_index"] = index + 1
    ctx = _prepare(cfg["data"], opts, create=False)
    if opts["track"] and cfg["parent_run_id"]:
        run_dir = Path(opts["run_dir"])
        tracker: Any = MLflowTracker(tracking_uri=opts["tracking_uri"] or default_tracking_uri(run_dir),
                                     run_dir=run_dir, study_name=ctx.study.study_name, data=cfg["data"],
                                     meta=ctx.meta, argv=sys.argv, parent_id=cfg["parent_run_id"])
    else:
        tracker = NullTracker()
    obj = Objective(dataset=ctx.dataset, space=ctx.space, objective=opts["objective"], cost=opts["cost"],
                    seed=opts["seed"] + 100_003 * (index + 1), sdir=ctx.sdir, max_epochs=opts["max_epochs"],
                    trial_timeout=opts["trial_timeout"], deadline=cfg["deadline"], tracker=tracker, verbose=False,
                    accelerator=ctx.accelerator, prune_multi=opts["prune"])
    try:
        run_trials(ctx, obj, int(opts["trials"]), cfg["deadline"])
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], int(sys.argv[2])))
