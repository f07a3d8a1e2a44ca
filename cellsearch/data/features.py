"""Model inputs from feature columns: input encoders, missing values, standardisation, padded arrays.

* Each feature column is encoded by the first input encoder (``cellsearch.data.encoders``) that
  accepts it: numbers and booleans as they are, text with at most ``MAX_CATEGORIES`` values one-hot
  (the categories seen in the training split; an unseen value encodes as all zeros). The fitted
  encoders (``{column: {"kind": name, **state}}``) are saved with the preprocessing.
* Missing or infinite feature values are refused (column and count) unless ``fill`` is ``ffill``
  (forward fill within each sequence, then zero) or ``zero``.
* Scalers are fitted on the training split only, in float64, a chunk of rows at a time.

Training and prediction call the same functions (prediction passes the fitted encoders and scaler).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.encoders import get_encoder, pick_encoder
from cellsearch.errors import UserError

#: Fitted encoders: column → ``{"kind": encoder name, **its state}``.
Fitted = dict[str, dict[str, Any]]


def plan_inputs(df: pd.DataFrame, features: list[str], train_rows: np.ndarray, path: Path,
                fitted: Fitted | None = None) -> tuple[Fitted, list[str]]:
    """The fitted encoder of each feature column (fitted on ``train_rows`` unless ``fitted`` is
    given) and the names of the model inputs they give, in order."""
    if fitted is None:
        fitted = {}
        for c in features:
            enc = pick_encoder(df[c])
            fitted[c] = {"kind": enc.name, **enc.fit(df[c][train_rows], c, path)}
    names = [n for c in features for n in get_encoder(fitted[c]["kind"]).names(c, fitted[c])]
    if not names:
        raise UserError(f"{path}: no numeric feature column (columns: {', '.join(df.columns)})")
    return fitted, names


def input_columns(df: pd.DataFrame, features: list[str], fitted: Fitted) -> Iterator[np.ndarray]:
    """Every model input in order, one at a time, as float32 in file order (missing values NaN)."""
    for c in features:
        yield from get_encoder(fitted[c]["kind"]).inputs(df[c], fitted[c])


def encode_features(df: pd.DataFrame, features: list[str], train_rows: np.ndarray, path: Path,
                    fitted: Fitted | None = None) -> tuple[np.ndarray, list[str], Fitted]:
    """All inputs as one (rows, inputs) float32 matrix in file order (see ``plan_inputs``)."""
    fitted, names = plan_inputs(df, features, train_rows, path, fitted)
    out = np.empty((len(df), len(names)), dtype=np.float32)
    for j, col in enumerate(input_columns(df, features, fitted)):
        out[:, j] = col
    return out, names, fitted


def _missing_error(path: Path, counts: dict[str, int]) -> UserError:
    worst = [f"{name!r} ({n})" for name, n in counts.items()]
    return UserError(f"{path}: missing or infinite values in feature column(s) {', '.join(worst)}; "
                     "pass --fill ffill or --fill zero")


def handle_missing(values: np.ndarray, names: list[str], codes: np.ndarray, starts: np.ndarray,
                    fill: str | None, path: Path) -> np.ndarray:
    """Refuse non-finite values (column and count) or fill them: ``ffill`` within each sequence
    (rows sorted by sequence and time), then zero."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    if fill is None:
        counts = bad.sum(axis=0)
        raise _missing_error(path, {names[j]: int(counts[j]) for j in np.flatnonzero(counts)})
    values = values.copy()
    values[np.isinf(values)] = np.nan
    if fill == "ffill":
        # Forward fill within each sequence: index of the last finite row at or before each row.
        n = len(values)
        idx = np.where(np.isfinite(values), np.arange(n)[:, None], -1)
        np.maximum.accumulate(idx, axis=0, out=idx)
        seq_start = starts[codes][:, None]
        ok = idx >= seq_start
        filled = values[np.where(ok, idx, 0), np.arange(values.shape[1])[None, :]]
        values = np.where(ok, filled, np.nan)
    return np.nan_to_num(values, nan=0.0)


def fill_padded(values: np.ndarray, fill: str) -> None:
    """Fill the non-finite values of one input in the padded array, in place: ``ffill`` along each
    sequence's steps (padding comes after a sequence's last step, so it never feeds a real one;
    a leading gap becomes 0), ``zero`` writes 0."""
    finite = np.isfinite(values)
    if fill == "ffill":
        idx = np.where(finite, np.arange(values.shape[1])[None, :], -1)
        np.maximum.accumulate(idx, axis=1, out=idx)
        filled = np.take_along_axis(values, np.maximum(idx, 0), axis=1)
        values[...] = np.where(idx >= 0, filled, 0.0)
    else:
        values[~finite] = 0.0


def scatter_inputs(df: pd.DataFrame, features: list[str], fitted: Fitted, names: list[str],
                    dest: np.ndarray, out: np.ndarray, lengths: np.ndarray, fill: str | None, path: Path,
                    train_seq: np.ndarray | None = None, scaler: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Write every input into the padded array ``out`` (sequences, steps, inputs) and standardise it.

    File row i goes to flat position ``dest[i]`` (sequence x steps + step). Missing values are
    refused (every column's count in one message) or filled within each sequence, in raw units;
    then the inputs are standardised in place by ``scaler``, or by one fitted on the real steps of
    the sequences marked in ``train_seq``; padding stays zero. Returns (mean, std).

    One column at a time and in place: no (rows x inputs) matrix and no reordered copy, so the long
    layout's memory peak is the file's columns plus the padded array.
    """
    n_seq, steps, n_in = out.shape
    flat = out.reshape(-1, n_in)
    missing: dict[str, int] = {}
    for j, col in enumerate(input_columns(df, features, fitted)):
        bad = len(col) - int(np.count_nonzero(np.isfinite(col)))
        if bad and fill is None:
            missing[names[j]] = bad
            continue
        flat[dest, j] = col
        if bad:
            fill_padded(out[:, :, j], fill)
    if missing:
        raise _missing_error(path, missing)
    return standardise_padded(out, np.arange(steps)[None, :] < lengths[:, None], train_seq, scaler)


def standardise_padded(x: np.ndarray, real: np.ndarray, train_seq: np.ndarray | None = None,
                        scaler: tuple[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardise a padded (sequences, steps, inputs) float32 array in place and zero its padding.

    ``real`` marks the real steps; the scaler is ``scaler`` or fitted on the real steps of the
    sequences marked in ``train_seq``. Returns (mean, std).
    """
    if scaler is None:
        mean, std = fit_scaler(x.reshape(-1, x.shape[-1]), (real & train_seq[:, None]).ravel())
    else:
        mean, std = np.asarray(scaler[0], dtype=np.float64), np.asarray(scaler[1], dtype=np.float64)
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    x[~real] = 0.0
    return mean, std


def fit_scaler(values: np.ndarray, rows: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``values[rows]`` (``rows`` a boolean mask) in float64, a chunk
    of rows at a time (no full-size copies or index arrays)."""
    f = values.shape[1]
    n = int(np.count_nonzero(rows))
    if n == 0:
        return np.zeros(f), np.ones(f)
    s1, s2 = np.zeros(f), np.zeros(f)
    shift = values[int(np.argmax(rows))].astype(np.float64)  # shifted sums keep the variance accurate
    for k in range(0, len(values), chunk):
        block = values[k:k + chunk][rows[k:k + chunk]].astype(np.float64) - shift
        s1 += block.sum(axis=0)
        s2 += np.square(block).sum(axis=0)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))
    return mean + shift, np.where(std > 1e-12, std, 1.0)
