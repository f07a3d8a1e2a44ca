"""Detection of column roles (split, id, time) and of the task, shared by every layout.

The column roles that every layout shares (split, id, time) are found here, by name or by the data
(``find_columns``); the layout registry then picks the layout (``cellsearch.data.layouts.detect``),
which decides the target, the features and anything of its own. Nothing here knows a layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.options import DataOptions
from cellsearch.errors import UserError

MAX_CLASSES = 20
#: Up to this many distinct integers may still be classes when they look like label numbers.
MAX_LABEL_CLASSES = 200

ID_NAMES = ("id", "seq", "seq_id", "sequence", "sequence_id", "series", "series_id", "unique_id",
            "sample", "sample_id", "subject", "item_id", "group")
TIME_NAMES = ("time", "t", "step", "timestep", "time_step", "timestamp", "date", "datetime", "ds",
              "order", "frame", "index", "idx", "month", "year", "day", "period")
TARGET_NAMES = ("label", "target", "y", "class", "category", "outcome")


def is_numeric(s: pd.Series) -> bool:
    """Numeric and not boolean (booleans are 0/1 inputs, never a regression target)."""
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def check_stray_cells(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Refuse a column that is numeric except for a few cells (``0x1F``, ``n/a``, a decimal comma):
    read as text it would silently become one-hot categories. Names the column, the first bad value
    and its line."""
    import re

    for c in columns:
        s = df[c]
        if is_numeric(s) or pd.api.types.is_bool_dtype(s):
            continue
        text = s.dropna().astype(str).str.strip()
        if len(text) < 10:
            continue
        bad = pd.to_numeric(text, errors="coerce").isna().to_numpy()
        if bad.all() or bad.mean() > 0.1:
            if text.str.fullmatch(r"[-+]?\d+,\d+|[-+]?\d+").all():
                first = text[text.str.contains(",")].iloc[0]
                raise UserError(f"{path}: column {c!r} has decimal commas (such as {first!r}); write decimal "
                                "points (e.g. read it with pandas.read_csv(..., decimal=',') and save it again)")
            continue  # a text column
        k = int(np.flatnonzero(bad)[0])
        line = int(s.index.get_loc(text.index[k])) + 2 if s.index.is_unique else None
        where = f" (line {line})" if line is not None else ""
        value = re.sub(r"\s+", " ", text.iloc[k])[:40]
        raise UserError(f"{path}: column {c!r} is numeric except for {int(bad.sum())} cell(s) such as "
                        f"{value!r}{where}; fix or empty those cells")


def find_column(columns: list[str], names: tuple[str, ...], exclude: set[str]) -> str | None:
    """The first column (case-insensitive) among ``names``, in the order of ``names``."""
    lower = {c.lower(): c for c in columns if c not in exclude}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _need_column(df: pd.DataFrame, name: str, flag: str, path: Path) -> str:
    if name not in df.columns:
        raise UserError(f"{path}: {flag} column {name!r} not found; columns are: {', '.join(df.columns)}")
    return name


def _id_from_time(df: pd.DataFrame, time_col: str, candidates: list[str]) -> str | None:
    """The column that, together with the time column, identifies rows uniquely: text columns
    first, then integer columns, fewest distinct values first."""
    n = len(df)
    scored = []
    for c in candidates:
        s = df[c]
        if pd.api.types.is_float_dtype(s):
            continue
        k = s.nunique(dropna=False)
        if 1 < k <= n // 2:
            scored.append((is_numeric(s), k, c))
    for _, _, c in sorted(scored):
        if not df.duplicated([c, time_col]).any():
            return c
    return None


def detect_task(target: pd.Series) -> tuple[str, str | None]:
    """The task a whole-sequence target suggests (``target``: one value per sequence), and, where an
    integer target could be either, a note saying which was chosen, why, and how to choose the other.

    Text is classes. Integers are classes when there are at most ``MAX_CLASSES`` distinct values, or
    up to ``MAX_LABEL_CLASSES`` that look like label numbers: the whole run from 0 or 1 with none
    missing, each value given to at least two sequences. Other numbers are a regression target.
    """
    if not is_numeric(target):
        return "classification", None
    v = target.to_numpy(dtype=float, na_value=np.nan)
    v = v[np.isfinite(v)]
    if not len(v) or not np.all(np.mod(v, 1) == 0):
        return "regression", None
    values, counts = np.unique(v, return_counts=True)
    k = len(values)
    run = values[0] in (0.0, 1.0) and values[-1] - values[0] == k - 1
    labels = k <= MAX_CLASSES or (k <= MAX_LABEL_CLASSES and run and counts.min() >= 2)
    name = f"target {target.name!r}" if target.name is not None else "the target"
    if labels and k > 2:
        why = (f"at most {MAX_CLASSES} distinct values are" if k <= MAX_CLASSES else
               f"numbered {values[0]:g} to {values[-1]:g} without gaps, each shared by several sequences")
        return "classification", (f"{name}: {k} distinct whole numbers read as classes ({why}); "
                                  "pass --task regression to predict them as a number")
    if not labels and k <= MAX_LABEL_CLASSES:
        return "regression", (f"{name}: {k} distinct whole numbers read as a number (regression); pass "
                              "--task classification to read them as classes")
    return ("classification" if labels else "regression"), None


@dataclass
class Columns:
    """The column roles found before the layout is known: split, id, time and a ``--target`` override.
    ``used`` holds every column with a role (none of them is a feature)."""

    split_col: str | None
    id_col: str | None
    time_col: str | None
    target: str | None
    used: set[str]

    def rest(self, df: pd.DataFrame) -> list[str]:
        """Columns without a role, in file order."""
        return [c for c in df.columns if c not in self.used]

    def ids_repeat(self, df: pd.DataFrame) -> bool:
        return bool(self.id_col) and df[self.id_col].nunique(dropna=False) < len(df)


@dataclass
class Schema:
    """What detection decided: the layout, the task, every column's role; ``layout_data`` holds what
    one layout alone needs (the wide layout's step columns, say)."""

    layout: str
    task: str
    target: str
    id_col: str | None
    time_col: str | None
    split_col: str | None
    features: list[str]
    layout_data: dict[str, Any] = field(default_factory=dict)


def find_columns(df: pd.DataFrame, opts: DataOptions, path: Path) -> Columns:
    """Split, id and time columns, by the overrides, by name, or (id) by what makes times unique."""
    cols = list(df.columns)
    split_col = next((c for c in cols if c.lower() == "split"), None)
    used: set[str] = {split_col} if split_col else set()
    target = _need_column(df, opts.target, "--target", path) if opts.target else None
    id_col = _need_column(df, opts.id_col, "--id-col", path) if opts.id_col else None
    time_col = _need_column(df, opts.time_col, "--time-col", path) if opts.time_col else None
    if target:
        used.add(target)
    if id_col is None:
        id_col = find_column(cols, ID_NAMES, used | {time_col} if time_col else used)
        if id_col is None:
            id_col = next((c for c in cols if c not in used and c != time_col
                           and c.lower().endswith(("_id", "id")) and c.lower() != "id"
                           and not c[-1:].isdigit()), None)
    if id_col:
        used.add(id_col)
    if time_col is None:
        time_col = find_column(cols, TIME_NAMES, used)
    if time_col:
        used.add(time_col)
    if id_col is None and time_col and df[time_col].duplicated().any():
        # Repeated time values: some other column must tell the sequences apart (e.g. "store").
        id_col = _id_from_time(df, time_col, [c for c in cols if c not in used])
        if id_col:
            used.add(id_col)
    return Columns(split_col, id_col, time_col, target, used)
