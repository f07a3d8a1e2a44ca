"""Parallel workers on one machine: N processes share one study through its storage.

The parent process (``tune --workers N``) prepares the study and the MLflow parent run, starts N
workers (``python -m cellsearch.workers CONFIG INDEX``; CONFIG is the ``TuneConfig`` as JSON), each
with ``cores // N`` torch threads so that together they do not oversubscribe the CPU, and shows one
progress display by polling the study. Each worker runs trials until the study holds the requested
number of finished trials, so a worker that dies leaves its share to the others; its running trial
is failed through its heartbeat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellsearch.config import TuneConfig
from cellsearch.context import SearchContext
from cellsearch.interrupts import check, deferred_interrupts
from cellsearch.study import finished

#: ``--workers auto`` starts at most this many processes: each one reads the data and holds it, and
#: the sampler proposes that many trials without the others' results.
AUTO_MAX = 4


def cpu_cores() -> int:
    """The CPU cores this process may use: its affinity mask, within a container's CPU quota
    (cgroup v2 ``cpu.max``) where one is set — ``os.cpu_count()`` counts the host's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def worker_count(asked: int | str, cores: int, trials_left: int, device: str = "cpu") -> int:
    """``--workers`` clamped to the cores and the trials left (at least 1), with a warning when cut.
    ``auto``: one per core, at most ``AUTO_MAX``, without a warning; 1 when training on a GPU (the
    processes would share it)."""
    if asked == "auto":
        return 1 if device == "cuda" else max(1, min(cores, AUTO_MAX, trials_left))
    asked = int(asked)
    n = max(1, min(asked, cores, trials_left))
    if n < asked:
        why = f"{cores} CPU cores" if n == cores else f"{trials_left} trial(s) left to run"
        print(f"cellsearch: warning: --workers {asked} reduced to {n} ({why})", file=sys.stderr, flush=True)
    return n


def run_workers(ctx: SearchContext, parent_run_id: str | None, on_trial: Callable[[Any], None]) -> None:
    """Start ``ctx.config.workers`` workers (a number ``worker_count`` made) over ``ctx.study`` and
    wait for them, refreshing the display."""
    n = int(ctx.config.workers)
    threads = max(1, cpu_cores() // n)
    wdir = ctx.sdir / "workers"
    wdir.mkdir(parents=True, exist_ok=True)
    cfg_path = wdir / f"config-{os.getpid()}.json"
    cfg_path.write_text(json.dumps({"config": ctx.config.to_dict(), "parent_run_id": parent_run_id,
                                    "threads": threads, "parent_pid": os.getpid()}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs, logs = [], []
    for i in range(n):
        path = wdir / f"worker-{i}.log"
        with path.open("w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "cellsearch.workers", str(cfg_path), str(i)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        logs.append(NoticeForwarder(path, f"worker {i + 1}"))
    seen = -1
    try:
        with deferred_interrupts():  # Ctrl-C lands between two looks at the study, never inside one
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                check()
                for log in logs:
                    log.forward()
                try:
                    done = finished(ctx.study)
                except Exception:  # storage briefly unavailable: the workers retry, the display waits
                    continue
                if done != seen:
                    seen = done
                    on_trial(ctx.study)
            for log in logs:
                log.forward()
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


class NoticeForwarder:
    """Copies a worker's own notices (its lines starting ``cellsearch:``: warnings, storage retries,
    errors) from its log file to this process's stderr, naming the worker, so a search with workers
    tells the terminal what a search without them does; the rest of the log (Lightning's output with
    ``--verbose``) stays in the file. ``forward`` prints the complete lines written since its last call."""

    PREFIX = "cellsearch:"

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.offset = 0

    def forward(self) -> int:
        """Print the new notices; returns how many."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return 0
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        count = 0
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            if line.startswith(self.PREFIX):
                print(f"{self.PREFIX} {self.name}:{line[len(self.PREFIX):]}", file=sys.stderr, flush=True)
                count += 1
        return count


def _die_with_parent(parent_pid: int | None) -> None:
    """End this worker when the ``tune`` process that started it ends, however it ends (``kill -9``
    included): nobody would wait for its trials, and it would go on taking the CPU. Linux delivers
    SIGTERM then (``PR_SET_PDEATHSIG``); a parent already gone before that was set is seen by the
    worker's new parent id."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own Ctrl-C handling still applies
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        sys.exit(1)


def worker_main(cfg_path: str, index: int) -> int:
    """One worker: the same preparation as ``tune``, then trials until the study is full."""
    blob = json.loads(Path(cfg_path).read_text())
    _die_with_parent(blob.get("parent_pid"))
    import torch

    from cellsearch.context import prepare
    from cellsearch.objective import Objective
    from cellsearch.runner import run_trials
    from cellsearch.tracking import NullTracker, make_tracker

    torch.set_num_threads(int(blob["threads"]))
    config = TuneConfig.from_dict(blob["config"])
    ctx = prepare(config, create=False)
    parent = blob["parent_run_id"]
    tracker = make_tracker(config, meta=ctx.meta, argv=sys.argv, parent_id=parent) if parent else NullTracker()
    obj = Objective(ctx=ctx, tracker=tracker, seed=config.seed + 100_003 * (index + 1))
    try:
        run_trials(ctx, obj, config.trial_target)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], int(sys.argv[2])))
