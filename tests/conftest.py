"""Shared fixtures: tiny data sets and one small search reused by several test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def free_port() -> int:
    """A free TCP port on the loopback interface, for servers started by tests."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 10) -> dict:
    """GET (or POST ``body`` as JSON) and decode the JSON answer."""
    import json
    import urllib.request

    data = None if body is None else json.dumps(body, default=float).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_for_server(call, proc, timeout: float = 120):
    """Retry ``call()`` until a server started as ``proc`` answers; fail if it exits or times out."""
    import time

    deadline = time.time() + timeout
    while True:
        try:
            return call()
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(1)


def start_server(cmd: list[str]):
    """Start a server in its own session, so that ``stop_process`` can end it with all its children
    (MLflow's servers fork uvicorn workers and job consumers that outlive their parent otherwise)."""
    import os
    import subprocess
    import sys

    # The interpreter's bin folder first on PATH: MLflow starts ``uvicorn`` by name, which must be this
    # environment's even when its virtualenv is not activated.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)


def serve_bundle(bundle: Path):
    """``mlflow models serve`` on a bundle (this environment, loopback, a free port): (process, the
    invocations URL). End it with ``stop_process``."""
    import sys

    port = free_port()
    proc = start_server([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(bundle),
                         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)])
    return proc, f"http://127.0.0.1:{port}/invocations"


def stop_process(proc) -> None:
    """End a process started by ``start_server`` and every process of its session."""
    import os
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, signal.SIGKILL)  # children left in the group
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            continue
        return


def make_classification_csv(path: Path, n_seq: int = 90, seed: int = 0) -> Path:
    """Sequences whose class is the sign pattern of a drifting signal: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_seq):
        label = i % 3
        n = int(rng.integers(4, 9))
        drift = (label - 1) * 0.8
        x = np.cumsum(rng.normal(drift, 0.3, size=n))
        rows.append(pd.DataFrame({"id": i, "t": np.arange(n), "x": x.round(4),
                                  "z": rng.normal(size=n).round(4), "label": f"c{label}"}))
    pd.concat(rows).to_csv(path, index=False)
    return path


def make_sales_csv(path: Path, series: list[tuple[float, int]]) -> Path:
    """Weekly-seasonal series ``shop s0, s1, ...`` of (scale, length) each: a forecasting panel."""
    rows = []
    for k, (scale, n) in enumerate(series):
        t = np.arange(n)
        rows.append(pd.DataFrame({"shop": f"s{k}", "day": t, "sales": scale * (2 + np.sin(2 * np.pi * t / 7))}))
    pd.concat(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return make_classification_csv(tmp_path_factory.mktemp("data") / "tiny.csv")


@pytest.fixture(scope="session")
def tiny_space(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("space") / "tiny.yaml"
    p.write_text(
        "sampler: tpe\n"
        "layers:\n"
        "  depth: {type: int, low: 1, high: 2}\n"
        "  cell: {type: categorical, choices: [lstm, peephole, cifg, gru]}\n"
        "  hidden: {type: int, low: 4, high: 12}\n"
        "lr: {type: float, low: 0.005, high: 0.03, log: true}\n"
        "batch_size: 32\n"
        "max_epochs: 4\n"
        "patience: 2\n"
        "min_steps: 60\n"  # the default step floor (300) would make every tiny trial train 300 steps
    )
    return p


@pytest.fixture(scope="session")
def tuned(tiny_csv, tiny_space, tmp_path_factory):
    """One tracked search of 4 trials, shared by the search and tracking tests."""
    from cellsearch.search import tune

    run_dir = tmp_path_factory.mktemp("runs")
    result = tune(tiny_csv, space=str(tiny_space), trials=4, run_dir=run_dir, progress=False, seed=1)
    return result
