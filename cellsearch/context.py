"""The context of a search: what ``tune`` and every worker process prepare the same way
(``prepare``): the validated config, the data and its folds, the search space, and the study —
created or resumed in the run directory's storage, with the study's metadata and preprocessing
stored so that another machine can export."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellsearch.config import TuneConfig
from cellsearch.errors import UserError
from cellsearch.files import write_json
from cellsearch.rundir import check_writable, locked
from cellsearch.searchdata import data_shape, fingerprint, read_folds
from cellsearch.study import default_storage, make_sampler, open_storage, study_dir

if TYPE_CHECKING:
    import optuna

    from cellsearch.data import Dataset
    from cellsearch.folds import Folds
    from cellsearch.space import SearchSpace
    from cellsearch.tasks.base import Direction


@dataclass
class SearchContext:
    """Everything a search process needs, built the same way by ``tune`` and by its workers."""

    config: TuneConfig
    dataset: Dataset
    space: SearchSpace
    study: optuna.Study
    storage_url: str
    sdir: Path
    meta: dict[str, Any]
    metric: str
    direction: Direction
    accelerator: str
    folds: Folds | None = None


def _accelerator(device: str) -> str:
    import torch

    accelerator = "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    return accelerator


def prepare(config: TuneConfig, *, create: bool) -> SearchContext:
    """Validate the config, read the data, open (``create``: create or resume) the study.

    The process that creates also fails trials left running by a killed process and stores the
    study's metadata and preprocessing (so that another machine can export). Every process's sampler
    draws trial N from (``--seed``, N) (``study.make_sampler``): workers, resumes and separate ``tune``
    commands on one study never repeat each other's points.
    """
    import optuna

    from cellsearch.metrics import metric_of
    from cellsearch.progress import quiet_lightning
    from cellsearch.space import load_space

    config.validate()
    spc = load_space(config.space)
    _reuse_study_preprocessing(config)
    dataset, folds = read_folds(config)
    if create:  # what reading the data found worth saying (a guessed target, short or flat series, ...)
        for notice in dataset.info.get("warnings", []):
            print(f"cellsearch: notice: {notice}", file=sys.stderr)
    accelerator = _accelerator(config.device)
    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.INFO if config.verbose else optuna.logging.ERROR)
    metric, direction = metric_of(dataset.task)
    check_writable(config.run_dir)
    url = config.storage or default_storage(config.run_dir)
    with locked(config.run_dir):
        return _open_study(config, dataset, folds, spc, url, create, metric, direction, accelerator)


def _reuse_study_preprocessing(config: TuneConfig) -> None:
    """A study that exists (workers, a resumed search) reads its data with the encoders it was fitted
    with (``encoders.reuse_fitted``): a tokenizer trained again could number its pieces otherwise."""
    from cellsearch.data import Preprocessing
    from cellsearch.data.encoders import reuse_fitted

    saved = study_dir(config.run_dir, config.study_name) / "preprocessing.json"
    if saved.exists():
        try:
            reuse_fitted(Preprocessing.load(saved))
        except Exception:  # unreadable: read and fit as a new study would; the fingerprint check decides
            return


def _open_study(config: TuneConfig, dataset: Any, folds: Any, spc: Any, url: str, create: bool,
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
    pruner = optuna.pruners.NopPruner()  # pruning is ours in both modes (cellsearch.pruning)
    sampler = make_sampler(spc.sampler, config.seed)  # each trial's draw: (seed, its number)
    st = optuna.create_study(study_name=config.study_name, storage=storage, directions=directions, sampler=sampler,
                             pruner=pruner, load_if_exists=True)
    meta = {"data": str(config.data.resolve()), "task": dataset.task, "metric": metric, "direction": direction,
            "objective": config.objective, "cost": config.cost, "space": spc.name, "cv": folds.describe()}
    sdir = study_dir(config.run_dir, config.study_name)
    if create:
        optuna.storages.fail_stale_trials(st)
        if n_before == 0:  # a fresh study begins with the space's portfolio of robust settings
            for params in spc.starts(data_shape(dataset))[:config.trial_target]:
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
