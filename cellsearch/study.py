"""The study's storage: where a run directory keeps its studies, opening Optuna's storage (SQLite or
a server), the sampler, and counting a study's trials. Preparing a search is ``cellsearch.context``;
reading its data and folds, ``cellsearch.searchdata``.

A running trial beats every ``HEARTBEAT_S`` seconds; one silent for ``GRACE_S`` is failed (its
process died), so a crash never leaves a trial counted as running.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

from cellsearch.errors import UserError

HEARTBEAT_S = 2
GRACE_S = 8


def study_dir(run_dir: Path, study_name: str) -> Path:
    """Per-study files: trial checkpoints, the fitted preprocessing, ``result.json``."""
    return run_dir / "studies" / study_name


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def _pg_driver(url: str) -> str:
    """``postgresql://`` with whichever driver is installed (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


@functools.cache
def _storage_class() -> type:
    """Optuna's RDB storage whose heartbeat outlives a database outage. Optuna beats from a thread
    of its own; one failed beat would end that thread with a traceback, the beats would stop, and
    the trial — still running — would later be failed as stale. Here a failed beat is one line on
    stderr and the next beat tries again (the search loop waits the outage out, ``runner``)."""
    import optuna

    class ResilientRDBStorage(optuna.storages.RDBStorage):
        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)
            except Exception as exc:  # the database is away: beat again at the next interval
                print(f"cellsearch: storage unavailable ({type(exc).__name__}) for trial {trial_id}'s "
                      "heartbeat; retrying at the next beat", file=sys.stderr, flush=True)

    return ResilientRDBStorage


def open_storage(url: str) -> Any:
    """Optuna's RDB storage with heartbeats, so a trial of a killed process ends failed."""
    url = _pg_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            return _storage_class()(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                    failed_trial_callback=None, **kwargs)
        except Exception as exc:  # unreachable server, bad URL, missing driver
            text = str(exc)
            # Several processes creating the schema of a fresh database at once: the losers retry.
            if attempt < 5 and ("already exists" in text or "duplicate key" in text or "UniqueViolation" in text):
                time.sleep(0.5 + attempt)
                continue
            raise UserError(f"cannot open the study storage {url.split('@')[-1]}: "
                            f"{text.strip().splitlines()[0]}") from None
    raise AssertionError("unreachable")


def make_sampler(kind: str, seed: int) -> Any:
    """The space's sampler, seeded (Optuna's TPE with multivariate, grouped, constant-liar settings)."""
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True,
                                      group=True, constant_liar=True)


def counts(study: Any) -> dict[str, int]:
    """Trials by state (``complete``, ``pruned``, ``fail``, ``running``)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def finished(study: Any) -> int:
    """Complete and pruned trials: what ``--trials`` counts."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))
