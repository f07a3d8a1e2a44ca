"""The study's storage: where a run directory keeps its studies, opening Optuna's storage (SQLite or
a server), the sampler, and counting a study's trials. Preparing a search is ``cellsearch.context``;
reading its data and folds, ``cellsearch.searchdata``.

A running trial beats every ``HEARTBEAT_S`` seconds; one silent for ``GRACE_S`` is failed (its
process died), so a crash never leaves a trial counted as running; one that never beat (created as
the database went away) is failed after ``NO_BEAT_S``.
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
#: A running trial with no heartbeat at all this long after it started is failed as stale.
NO_BEAT_S = 90


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

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            """Optuna's stale trials (a heartbeat older than the grace period), and running trials
            that never beat at all after ``NO_BEAT_S``: a trial created just as the database went
            away keeps no heartbeat row, and Optuna would wait for it forever."""
            import datetime

            stale = list(super()._get_stale_trial_ids(study_id))
            now = datetime.datetime.now()
            for t in self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t._trial_id in stale or t.datetime_start is None or \
                        (now - t.datetime_start).total_seconds() < NO_BEAT_S:
                    continue
                if self._never_beat(t._trial_id):
                    stale.append(t._trial_id)
            return stale

        def _never_beat(self, trial_id: int) -> bool:
            from optuna.storages._rdb import models

            session = self.scoped_session()
            try:
                return session.query(models.TrialHeartbeatModel).filter(
                    models.TrialHeartbeatModel.trial_id == trial_id).first() is None
            finally:
                session.close()

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
    """The space's sampler (Optuna's TPE with multivariate, grouped, constant-liar settings; random;
    NSGA-II), drawing each trial from a random state seeded by ``seed`` and the trial's number
    (``TrialSeeded``)."""
    import optuna

    if kind == "random":
        base = optuna.samplers.RandomSampler(seed=seed)
    elif kind == "nsga2":
        base = optuna.samplers.NSGAIISampler(seed=seed)
    else:
        base = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True, group=True,
                                          constant_liar=True)
    return _trial_seeded()(base, seed)


@functools.cache
def _trial_seeded() -> type:
    """``TrialSeeded``, defined on first use (Optuna is imported lazily)."""
    import numpy as np
    import optuna

    def reseed(obj: Any, seed: int, seen: set[int]) -> None:
        """Seed every random state of a sampler and of the samplers inside it."""
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for value in vars(obj).values():
            if isinstance(getattr(value, "rng", None), np.random.RandomState):
                value.rng.seed(seed)
            elif isinstance(value, optuna.samplers.BaseSampler):
                reseed(value, seed, seen)

    class TrialSeeded(optuna.samplers.BaseSampler):
        """A sampler whose randomness for trial N comes from (seed, N) alone.

        Every process sharing a study gets its own trial numbers from the storage, so processes —
        two ``tune`` commands started together, or workers — never draw the same point for two
        trials; what a trial's draw depends on is the seed, its number and the trials before it, never
        which process runs it.
        """

        def __init__(self, base: optuna.samplers.BaseSampler, seed: int) -> None:
            self._base, self._seed = base, seed

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._base.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._base.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            return self._base.sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            state = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            reseed(self._base, int(state), set())
            self._base.before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._base.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._base.reseed_rng()

    return TrialSeeded


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
