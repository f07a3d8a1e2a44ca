"""The study and its storage: opening Optuna's storage, creating or resuming the study, and the
context that ``tune`` and every worker process prepare the same way (``prepare``).

A running trial beats every ``HEARTBEAT_S`` seconds; one silent for ``GRACE_S`` is failed (its
process died), so a crash never leaves a trial counted as running.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsearch.config import TuneConfig
from cellsearch.errors import UserError
from cellsearch.files import locked, write_json

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


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and prove it writable, or raise ``UserError`` in one line. The
    probe file has a name of its own: with a fixed name, a search starting beside another could
    find the other's probe already removed and take the run directory for unwritable."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"--run-dir {run_dir}: cannot write there ({exc.strerror or exc})") from None


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


@dataclass
class SearchContext:
    """Everything a search process needs, built the same way by ``tune`` and by its workers."""

    config: TuneConfig
    dataset: Any
    space: Any
    study: Any
    storage_url: str
    sdir: Path
    meta: dict[str, Any]
    metric: str
    direction: str
    accelerator: str
    folds: Any = None


def _accelerator(device: str) -> str:
    import torch

    accelerator = "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    return accelerator


def prepare(config: TuneConfig, *, create: bool, worker_index: int = 0) -> SearchContext:
    """Validate the config, read the data, open (``create``: create or resume) the study.

    The process that creates also fails trials left running by a killed process and stores the
    study's metadata and preprocessing (so that another machine can export). Each process's sampler
    is seeded differently (by the trials already there and ``worker_index``), so workers and resumes
    never repeat each other.
    """
    import optuna

    from cellsearch.metrics import metric_of
    from cellsearch.space import load_space
    from cellsearch.train import quiet_lightning

    config.validate()
    spc = load_space(config.space)
    dataset, folds = read_folds(config)
    accelerator = _accelerator(config.device)
    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.INFO if config.verbose else optuna.logging.ERROR)
    metric, direction = metric_of(dataset.task)
    check_writable(config.run_dir)
    url = config.storage or default_storage(config.run_dir)
    with locked(config.run_dir):
        return _open_study(config, dataset, folds, spc, url, create, worker_index, metric, direction, accelerator)


def _open_study(config: TuneConfig, dataset: Any, folds: Any, spc: Any, url: str, create: bool, worker_index: int,
                metric: str, direction: str, accelerator: str) -> SearchContext:
    """``prepare``'s second half, run holding the run directory's lock."""
    import optuna

    storage = open_storage(url)
    directions = [direction] if config.objective == "score" else [direction, "minimize"]
    n_before = 0
    print_ = fingerprint(dataset)
    try:
        existing = optuna.load_study(study_name=config.study_name, storage=storage)
        n_before = len(existing.trials)
        if [d.name.lower() for d in existing.directions] != directions:
            raise UserError(f"study {config.study_name!r} exists with other objectives; use another --study name")
        theirs = existing.user_attrs.get("fingerprint")
        if theirs is not None and theirs != print_:
            differ = ", ".join(k for k in print_ if print_[k] != theirs.get(k))
            raise UserError(f"study {config.study_name!r} in {config.run_dir} was made for other data (its "
                            f"{differ} differ from this file's); give this file its own --study name")
    except KeyError:
        pass
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
              if config.objective == "score" and config.prune else optuna.pruners.NopPruner())
    sampler = make_sampler(spc.sampler, config.seed + n_before + 7919 * worker_index)
    st = optuna.create_study(study_name=config.study_name, storage=storage, directions=directions, sampler=sampler,
                             pruner=pruner, load_if_exists=True)
    meta = {"data": str(config.data.resolve()), "task": dataset.task, "metric": metric, "direction": direction,
            "objective": config.objective, "cost": config.cost, "space": spc.name, "cv": folds.describe()}
    sdir = study_dir(config.run_dir, config.study_name)
    if create:
        optuna.storages.fail_stale_trials(st)
        if n_before == 0:  # a fresh study begins with the space's portfolio of robust settings
            for params in spc.starts(data_shape(dataset))[:config.trials]:
                st.enqueue_trial(params, skip_if_exists=True)
        for k, v in meta.items():
            st.set_user_attr(k, v)
        st.set_user_attr("fingerprint", print_)
        prep = dataset.preprocessing.to_dict()
        st.set_user_attr("preprocessing", prep)
        st.set_user_attr("dataset_info", {k: v for k, v in dataset.info.items() if k != "warnings"})
        write_json(sdir / "preprocessing.json", prep)
        write_json(sdir / "dataset.json", dataset.info)
    return SearchContext(config, dataset, spc, st, url, sdir, meta, metric, direction, accelerator, folds)


def data_shape(dataset: Any) -> Any:
    """What the search space needs of the data (``space.DataShape``): median length, task, season."""
    from cellsearch.data import get_layout
    from cellsearch.space import DataShape

    prep = dataset.preprocessing
    return DataShape(length=int(dataset.info["length"]["median"]), task=dataset.task,
                     season=get_layout(prep.layout).seasonality(prep)[0])


def fingerprint(dataset: Any) -> dict[str, Any]:
    """What a study's data must keep to be continued: its layout, task, columns with their roles and
    encodings — not its rows (a grown file may continue a study deliberately)."""
    prep = dataset.preprocessing
    return {"layout": prep.layout, "task": prep.task, "target": prep.target, "id column": prep.id_col,
            "time column": prep.time_col, "features": list(prep.features), "inputs": list(prep.inputs),
            "classes": [str(c) for c in prep.classes] if prep.classes is not None else None}


def read_folds(config: TuneConfig) -> tuple[Any, Any]:
    """The dataset and its folds (``cellsearch.folds``). The file is read once, without a validation
    split (a ``split`` column's is kept): the folds are made over everything but the test split, and
    with one fold the validation share is set aside from it (so forecast windows may also span the
    place where a fixed validation split would have cut each series)."""
    from dataclasses import replace

    from cellsearch.data import read_dataset
    from cellsearch.folds import make_folds, resolve_cv
    from cellsearch.tasks import get_task

    opts = config.data_options
    dataset = read_dataset(config.data, replace(opts, val_size=0.0))
    n = len(dataset.splits["train"]) + len(dataset.splits["val"])
    folds = make_folds(dataset, resolve_cv(config.cv, n), config.seed, opts.val_size)
    if not folds.validated:
        raise UserError(f"{config.data}: {n} {get_task(dataset.task).unit} "
                        "outside the test split are too few to validate on (at least 4 are needed); "
                        "add data or lower --test-fraction")
    if not len(dataset.splits["test"]) and opts.test_size > 0 and not dataset.preprocessing.split_col:
        raise UserError(f"{config.data}: too few sequences for a test split; pass --test-fraction 0 to keep "
                        "none (and test elsewhere)")
    dataset.info["cv"] = folds.describe()
    return dataset, folds
