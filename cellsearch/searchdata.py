"""The data of a search: the file read once (without a validation split) and its folds, what the
search space needs of it (``data_shape``), and what a study must keep to be continued
(``fingerprint``)."""

from __future__ import annotations

from typing import Any

from cellsearch.config import TuneConfig
from cellsearch.errors import UserError


def data_shape(dataset: Any) -> Any:
    """What the search space needs of the data (``space.DataShape``): median length, task, season, the
    keys its encoders search, a text input's character budget."""
    from cellsearch.data import get_layout
    from cellsearch.data.encoders import searched_keys
    from cellsearch.space import DataShape

    prep = dataset.preprocessing
    return DataShape(length=int(dataset.info["length"]["median"]), task=dataset.task,
                     season=get_layout(prep.layout).seasonality(prep)[0], searched=searched_keys(prep),
                     chars=max((int(s.get("max_chars", 0)) for s in prep.encoders.values()), default=0))


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
    from cellsearch.folds import AUTO_MAX_EXAMPLES, AUTO_MAX_WINDOWS, make_folds, resolve_cv
    from cellsearch.tasks import get_task

    opts = config.data_options
    dataset = read_dataset(config.data, replace(opts, val_size=0.0))
    n = len(dataset.splits["train"]) + len(dataset.splits["val"])
    windows = dataset.splits["train"].position is not None  # forecast windows (rolling origin)
    asked = resolve_cv(config.cv, n, AUTO_MAX_WINDOWS if windows else AUTO_MAX_EXAMPLES)
    folds = make_folds(dataset, asked, config.seed, opts.val_size)
    if config.cv != "auto" and folds.k < asked:
        dataset.info["warnings"].append(f"--cv {asked}: the {n} {get_task(dataset.task).unit} outside the test "
                                        f"split fill only {folds.describe()}; the search uses those")
    if not folds.validated:
        raise UserError(f"{config.data}: {n} {get_task(dataset.task).unit} "
                        "outside the test split are too few to validate on (at least 4 are needed); "
                        "add data or lower --test-fraction")
    if not len(dataset.splits["test"]) and opts.test_size != "auto" and opts.test_size > 0 \
            and not dataset.preprocessing.split_col:
        raise UserError(f"{config.data}: too few sequences for a test split; pass --test-fraction 0 to keep "
                        "none (and test elsewhere)")
    dataset.info["cv"] = folds.describe()
    return dataset, folds
