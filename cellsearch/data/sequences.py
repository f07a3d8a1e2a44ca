"""Grouping rows into sequences: row order by sequence and time, and each row's place in a padded array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellsearch.data.detect import is_numeric
from cellsearch.errors import UserError
from cellsearch.scalars import py_scalar


def group_order(df: pd.DataFrame, id_col: str | None, time_col: str | None, path: Path
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row order grouped by sequence (first appearance) and sorted by time within each.

    Returns (order, codes_sorted, starts, keys): ``order`` permutes rows, ``codes_sorted[k]`` is the
    sequence index of sorted row k, ``starts`` the first sorted row of each sequence, ``keys`` the ids.
    """
    n = len(df)
    if id_col:
        codes, keys = pd.factorize(df[id_col], use_na_sentinel=False)
    else:
        codes, keys = np.zeros(n, dtype=np.int64), np.array(["series"], dtype=object)
    codes = np.asarray(codes, dtype=np.int64)
    if time_col:
        t = df[time_col]
        if t.isna().any():
            raise UserError(f"{path}: time column {time_col!r} has {int(t.isna().sum())} missing values")
        if not is_numeric(t):
            parsed = pd.to_datetime(t, errors="coerce", format="mixed")
            if parsed.isna().any():
                codes_t, _ = pd.factorize(t, sort=True)
                tv = codes_t.astype(np.int64)
            else:
                tv = parsed.to_numpy().astype("datetime64[ns]").astype(np.int64)
        else:
            tv = t.to_numpy()
        order = np.lexsort((tv, codes))
        ts = tv[order]
        cs = codes[order]
        dup = (cs[1:] == cs[:-1]) & (ts[1:] == ts[:-1])
        if dup.any():
            k = int(np.argmax(dup))
            row = int(order[k + 1]) + 2  # 1-based line number with the header
            raise UserError(f"{path}: duplicate time value {py_scalar(t.iloc[order[k + 1]])!r} in sequence "
                            f"{py_scalar(keys[cs[k]])!r} (column {time_col!r}, line {row})")
    else:
        order = np.argsort(codes, kind="stable")
        cs = codes[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    return order, cs, starts, np.asarray(keys)


def padded_rows(order: np.ndarray, codes: np.ndarray, starts: np.ndarray, steps: int,
                 seq_index: np.ndarray | None = None) -> np.ndarray:
    """Each file row's row in a (sequences x ``steps``) padded array, from ``group_order``'s
    ``order``, ``codes`` and ``starts`` (``seq_index`` renumbers the sequences)."""
    pos = np.arange(len(codes), dtype=np.int64)
    pos -= starts[codes]
    pos += (codes if seq_index is None else seq_index[codes]) * steps
    dest = np.empty(len(order), dtype=np.int64)
    dest[order] = pos
    return dest
