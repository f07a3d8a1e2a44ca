"""Reference models beside every search: does the recurrent network beat the simple answer?

Each reference is scored on the same validation and test splits as the networks, with the same
metric: on validation after fitting on the training rows, on the test split after fitting on all the
non-test rows. They are shown beside the networks (Pareto table and
plot, MLflow runs tagged ``reference``, the model card). Alone a reference is never exported (the
bundle always holds a network); ridge also joins the ensemble library as a member
(``cellsearch.refmembers``). The registry ``REFERENCES`` maps a name to a ``Reference``; each task lists the references
that apply to it (``Task.references``).

* ``1nn``: 1-nearest-neighbour, Euclidean distance, on sequences z-normalised one by one (each
  channel over its real steps: the UCR convention) and resampled to one common length.
* ``ridge``: ridge regression (``RidgeClassifierCV``/``RidgeCV``, the penalty chosen by leave-one-out)
  on the flattened sequences (the loader's scaling, resampled to the common length).
* forecasting: ``naive`` (repeat the last value), ``seasonal_naive`` (repeat the value one
  season earlier), ``theta`` (the theta method: exponential smoothing with drift), ``damped``
  (exponential smoothing with a damped trend) and ``drift`` (the random walk with drift), each
  seasonally adjusted where the window's season is strong and fitted on each window, on the same
  windows, scored by MASE.

Cost is counted as for the networks, per prediction: 1-NN compares with every stored training
sequence (one multiply-accumulate per stored number), ridge is one dot product per output; its
parameters are the numbers it stores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellsearch.refmembers import ALPHAS, logistic, resample, znormalise
from cellsearch.tasks import get_task

#: A reference whose scoring would take more multiply-accumulates than this (about a minute on two
#: cores: 1-NN on very large data) is skipped.
MAX_WORK = 2e11


@dataclass(frozen=True)
class Context:
    """What a reference knows of the data: the task, the common length and flattened size of its
    inputs, the training split's size, the outputs, and (forecasting) the target channel and season."""

    task: str
    length: int
    dim: int
    n_train: int
    n_outputs: int
    target_index: int = 0
    season: int = 1
    #: The fitted preprocessing (references that read the inputs through an encoder's state: text).
    prep: Any = None


@dataclass(frozen=True)
class Reference:
    """One simple model.

    Args:
        label: how tables and plots name it, or ``label(ctx, train)`` when that depends on the data.
        fit: ``fit(train, ctx)`` → ``predict(split)``: predictions in the networks' output units (class
            labels; standardised values; window-scaled forecasts).
        macs: ``macs(ctx)`` multiply-accumulates per prediction; ``params(ctx)`` numbers stored.
    """

    label: str | Callable[[Context, Any], str]
    fit: Callable[[Any, Context], Callable[[Any], np.ndarray]]
    macs: Callable[[Context], int]
    params: Callable[[Context], int]


def _sklearn(features: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
             model: Callable[[str], Any]) -> Callable[[Any, Context], Callable[[Any], np.ndarray]]:
    """A reference made of flat ``features`` of the padded sequences and a scikit-learn ``model``."""
    def fit(train: Any, ctx: Context) -> Callable[[Any], np.ndarray]:
        est = model(ctx.task).fit(features(train.x, train.lengths, ctx.length), train.y)
        return lambda split: est.predict(features(split.x, split.lengths, ctx.length))

    return fit


def _nn_model(task: str) -> Any:
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    cls = KNeighborsClassifier if get_task(task).labels else KNeighborsRegressor
    return cls(n_neighbors=1, algorithm="brute")


def _ridge_model(task: str) -> Any:
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    return RidgeClassifierCV(alphas=ALPHAS) if get_task(task).labels else RidgeCV(alphas=ALPHAS)


def _documents(split: Any, ctx: Context) -> list[str]:
    """The text layout's documents back from their token ids (normalised: lower case, no tags)."""
    from cellsearch.data.encoders.text import load_tokenizer

    column = ctx.prep.layout_data["text_col"]
    tok = load_tokenizer(ctx.prep.encoders[column])
    return tok.decode_batch([[int(v) for v in x[:n, 0]] for x, n in zip(split.x, split.lengths)])


def _tfidf(train: Any, ctx: Context) -> Callable[[Any], np.ndarray]:
    """TF-IDF of word 1-2-grams and character 2-5-grams (sublinear counts, terms in 2 documents at
    least) and a linear model: logistic regression (the penalty chosen by 3-fold cross-validation)
    or ridge (leave-one-out)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline, make_union

    vectors = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                         TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
    if get_task(ctx.task).labels:
        model = logistic(np.asarray(train.y), np.logspace(-1, 2, 7), "accuracy")
    else:
        model = RidgeCV(alphas=ALPHAS)
    est = make_pipeline(vectors, model).fit(_documents(train, ctx), train.y)
    return lambda split: est.predict(_documents(split, ctx))


def _member(kind: str) -> Callable[[Any, Context], Callable[[Any], np.ndarray]]:
    """A reference that is a member of ``cellsearch.refmembers`` (ROCKET; theta and the damped trend,
    fitted on each window), fitted by the member's own ``fit``: the reference and the member agree."""

    def fit(train: Any, ctx: Context) -> Callable[[Any], np.ndarray]:
        import torch

        from cellsearch.refmembers import MEMBERS

        member = MEMBERS[kind].fit(train, ctx.task, ctx.length, ctx.n_outputs, ctx.prep)

        def predict(split: Any) -> np.ndarray:
            with torch.no_grad():
                out = member(torch.from_numpy(np.ascontiguousarray(split.x)),
                             torch.from_numpy(split.lengths.astype(np.int64))).numpy()
            if get_task(ctx.task).labels:
                return out.argmax(axis=1)
            return out[:, 0] if out.shape[1] == 1 and np.asarray(split.y).ndim == 1 else out

        return predict

    return fit


def _naive(train: Any, ctx: Context) -> Callable[[Any], np.ndarray]:
    """Repeat each window's last value: 0 in the window's own scaled units."""
    return lambda split: np.zeros((len(split), ctx.n_outputs), dtype=np.float32)


def _seasonal_naive(train: Any, ctx: Context) -> Callable[[Any], np.ndarray]:
    """Each forecast step repeats the value one season earlier (within the window; a window shorter
    than a season repeats its last value, as the naive forecast does)."""
    import torch

    from cellsearch.tasks.forecasting import seasonal_naive

    def predict(split: Any) -> np.ndarray:
        target = torch.from_numpy(np.ascontiguousarray(split.x[:, :, ctx.target_index]))
        lengths = torch.from_numpy(split.lengths.astype(np.int64))
        return seasonal_naive(target, lengths, ctx.season, ctx.n_outputs).numpy()

    return predict


def _local_macs(kind: str) -> Callable[[Context], int]:
    def macs(c: Context) -> int:
        from cellsearch.refmembers import MEMBERS

        return MEMBERS[kind](c.season, c.target_index, c.n_outputs, c.task).macs_per_sequence(c.length)

    return macs


def _local_label(name: str) -> Callable[[Context, Any], str]:
    return lambda c, train: name if c.season <= 1 else f"{name} (season {c.season})"


def _seasonal_label(ctx: Context, train: Any) -> str:
    """Said for what it computed: with every window shorter than the season it is the naive forecast."""
    if int(np.max(train.lengths)) >= ctx.season:
        return "seasonal naive"
    return "seasonal naive (= naive: the windows are shorter than the season)"


def _rocket_macs(c: Context) -> int:
    from cellsearch.refmembers import ROCKET_KERNELS, ROCKET_WIDTH

    return ROCKET_KERNELS * (ROCKET_WIDTH * _rocket_channels(c) * c.length + 2 * c.n_outputs)


def _rocket_params(c: Context) -> int:
    from cellsearch.refmembers import ROCKET_KERNELS, ROCKET_WIDTH

    return ROCKET_KERNELS * (ROCKET_WIDTH * _rocket_channels(c) + 1 + 2 * c.n_outputs)


def _rocket_channels(c: Context) -> int:
    """The channels a ROCKET kernel reads, counted as about 2 (1-3 where there are several)."""
    return min(2, c.dim // max(1, c.length))


REFERENCES: dict[str, Reference] = {
    "1nn": Reference("1-NN",
                     _sklearn(lambda x, n, length: resample(znormalise(x, n), n, length).reshape(len(x), -1),
                              _nn_model),
                     macs=lambda c: c.n_train * c.dim, params=lambda c: c.n_train * c.dim),
    # Per document, one weight per output for each n-gram it holds: about 18 per token (the word, the
    # pair, the 2-5-grams of its characters); about 20 n-grams per training document are kept.
    "tfidf": Reference("TF-IDF + linear", _tfidf, macs=lambda c: 18 * c.length * c.n_outputs,
                       params=lambda c: 20 * c.n_train * c.n_outputs),
    "ridge": Reference("ridge",
                       _sklearn(lambda x, n, length: resample(x, n, length).reshape(len(x), -1), _ridge_model),
                       macs=lambda c: c.dim * c.n_outputs, params=lambda c: (c.dim + 1) * c.n_outputs),
    # ROCKET: each kernel's weights at every step (1-3 channels: about 2 on average where there are
    # several), and the linear map over two features per kernel.
    "rocket": Reference("ROCKET", _member("rocket"), macs=_rocket_macs, params=_rocket_params),
    # Forecasts: one multiply-add per output maps the window-scaled value back.
    "naive": Reference("naive", _naive, macs=lambda c: c.n_outputs, params=lambda c: 0),
    "seasonal_naive": Reference(_seasonal_label, _seasonal_naive, macs=lambda c: c.n_outputs, params=lambda c: 0),
    # Theta and the damped trend fit each window as they forecast: their work is per step, they store nothing.
    "theta": Reference(_local_label("theta"), _member("theta"), macs=_local_macs("theta"), params=lambda c: 0),
    "damped": Reference(_local_label("damped trend"), _member("damped"), macs=_local_macs("damped"),
                        params=lambda c: 0),
    "drift": Reference(_local_label("drift"), _member("drift"), macs=_local_macs("drift"), params=lambda c: 0),
}


def fit_references(dataset: Any, cost: str, deadline: float | None = None,
                   names: tuple[str, ...] | None = None, folds: Any = None) -> list[dict[str, Any]]:
    """Fit each reference that serves the task and score it with the task's metric as the networks
    are: on each fold's validation part after fitting on its training part (``folds``, from
    ``cellsearch.folds``; the dataset's own train/validation split by default), the mean of the
    folds' scores; and on the test split after fitting on all the folds' data (with one validation
    split: the training and validation rows, as the ensembles' reference members are —
    ``refmembers.final_member``).

    Returns one entry per reference, shaped like a Pareto point (``score``, ``test_score``, ``cost``
    for ``cost``, ``macs``, ``params``) with ``reference: True``. References whose turn comes after
    ``deadline``, or whose scoring would exceed ``MAX_WORK``, are skipped.
    """
    from cellsearch.costs import cost_value
    from cellsearch.data import get_layout
    from cellsearch.data.splits import concat_splits
    from cellsearch.folds import make_folds
    from cellsearch.metrics import score, test_scores

    task, prep = dataset.task, dataset.preprocessing
    folds = folds or make_folds(dataset, 1)
    parts = [(f.train.tensors(), f.val.tensors()) for f in folds.folds]
    train = folds.folds[0].train.split  # every fold's rows: the whole pool (or the holdout's train)
    test = dataset.splits["test"]
    n_val = sum(len(v) for _, v in parts)
    length = max(1, int(np.median(train.lengths)))
    ctx = Context(task, length, length * train.x.shape[2], len(train), dataset.n_outputs,
                  int(prep.layout_data.get("target_index", 0)), int(prep.layout_data.get("season", 1)), prep)
    applicable = get_layout(prep.layout).references(prep)
    out = []
    for name in names or tuple(REFERENCES):
        ref = REFERENCES[name]
        if name not in applicable or (deadline is not None and time.time() >= deadline) or \
                ref.macs(ctx) * (n_val + len(test)) > MAX_WORK:
            continue
        t0 = time.perf_counter()
        scores = []
        for tr, va in parts:
            predict = ref.fit(tr, ctx)
            scores.append(score(task, predict(va), va.y, prep.target_scale, va.weight))
        label = ref.label if isinstance(ref.label, str) else ref.label(ctx, train)
        entry = {"reference": True, "name": name, "arch": label, "score": float(np.mean(scores)),
                 "test_score": None}
        if len(test):
            if len(parts) > 1:
                predict = ref.fit(train, ctx)
            elif folds.validated:  # one validation split: learn from its rows too
                predict = ref.fit(concat_splits(list(parts[0])), ctx)
            entry.update(test_scores(task, predict(test), test, prep.target_scale))
        attrs = {"macs": ref.macs(ctx), "params": ref.params(ctx)}
        c = cost_value(cost, attrs)
        out.append({**entry, "cost": c if math.isfinite(c) else None, **attrs, "length": length,
                    "fit_seconds": time.perf_counter() - t0})
    return out


def best_reference(references: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The reference with the best validation score."""
    if not references:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(references, key=lambda r: sign * r["score"])


def verdict(chosen: dict[str, Any] | None, references: list[dict[str, Any]], metric: str,
            direction: str) -> str | None:
    """One plain line when the chosen network scores worse on validation than the best reference."""
    best = best_reference(references, direction)
    if chosen is None or best is None:
        return None
    worse = chosen["score"] < best["score"] if direction == "maximize" else chosen["score"] > best["score"]
    if not worse:
        return None
    return (f"the chosen network scores worse than a simple reference on validation: {metric} "
            f"{chosen['score']:.4g} ({chosen['arch']}) against {best['score']:.4g} ({best['arch']})")
