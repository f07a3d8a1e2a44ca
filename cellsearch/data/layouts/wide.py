"""The wide layout: one row per sequence; ordered numeric columns (``x0..x99``) are the steps.

Several prefixes with the same suffixes (``a0..a9, b0..b9``) give several features per step.
Trailing empty steps shorten a sequence; gaps before a sequence's last step are refused without
``--fill`` (and filled along the row with it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cellsearch.data.detect import Columns, Schema, is_numeric
from cellsearch.data.features import fill_padded, standardise_padded
from cellsearch.data.layouts.base import Inputs, Layout, guess_target, sequence_task, wants_series
from cellsearch.data.options import DataOptions
from cellsearch.data.preprocessing import Preprocessing, Scaler
from cellsearch.data.splits import SplitTensors, sequence_splits, split_from_column, split_order, split_views
from cellsearch.errors import UserError
from cellsearch.tasks import get_task

_SUFFIX = re.compile(r"^(.*?)(\d+)$")


def step_groups(columns: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Columns that look like ordered steps: ``x0..xN`` (one or more prefixes sharing suffixes).
    Returns (prefixes, steps), ``steps[t]`` the columns of step t, one per prefix."""
    groups: dict[str, dict[int, str]] = {}
    for c in columns:
        m = _SUFFIX.match(c)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = c
    groups = {p: g for p, g in groups.items() if len(g) >= 3}
    if not groups:
        return None
    sizes = sorted({len(g) for g in groups.values()}, reverse=True)
    best = [p for p, g in groups.items() if len(g) == sizes[0]]
    suffixes = sorted(groups[best[0]])
    prefixes = [p for p in best if sorted(groups[p]) == suffixes]
    steps = [[groups[p][s] for p in prefixes] for s in suffixes]
    return prefixes, steps


def wide_steps(df: pd.DataFrame, steps: list[list[str]], fill: str | None, path: Path
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step columns of a wide frame as (N, T, F) float32, each row's length and its mask.

    Trailing missing steps shorten a sequence; missing values before its last step are gaps, refused
    without ``fill``. Used for training and for prediction alike.
    """
    n, T, F = len(df), len(steps), len(steps[0])  # noqa: N806
    flat = [c for row in steps for c in row]
    for c in flat:
        if not is_numeric(df[c]):
            raise UserError(f"{path}: step column {c!r} is not numeric")
    raw = df[flat].to_numpy(dtype=np.float32, na_value=np.nan).reshape(n, T, F)
    if not raw.flags.writeable:  # pandas hands out read-only views of one-block frames; callers fill in place
        raw = raw.copy()
    if np.isinf(raw).any() and fill is None:
        raise UserError(f"{path}: infinite values in step columns ({int(np.isinf(raw).sum())}); pass --fill")
    present = np.isfinite(raw).any(axis=2)
    lengths = np.where(present.any(axis=1), T - np.argmax(present[:, ::-1], axis=1), 0)
    if (lengths == 0).any():
        raise UserError(f"{path}: data row {int(np.argmax(lengths == 0)) + 1} has no step values")
    inside = np.arange(T)[None, :] < lengths[:, None]
    gaps = ~np.isfinite(raw) & inside[:, :, None]
    if gaps.any():
        if fill is None:
            raise UserError(f"{path}: {int(gaps.sum())} missing or infinite step values inside sequences; "
                            "pass --fill ffill or --fill zero")
        for j in range(F):
            fill_padded(raw[:, :, j], fill)
    np.nan_to_num(raw, copy=False)
    return raw, lengths.astype(np.int64), inside


class WideLayout(Layout):
    name: ClassVar[str] = "wide"
    priority: ClassVar[int] = 10

    def recognises(self, df: pd.DataFrame, found: Columns, opts: DataOptions) -> bool:
        """Step columns, and one row per sequence: ids unique, or no id and nothing that orders rows."""
        if found.ids_repeat(df) or step_groups(found.rest(df)) is None:
            return False
        return bool(found.id_col) or (not wants_series(opts) and not found.time_col)

    def schema(self, df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path,
               warnings: list[str]) -> Schema:
        if found.ids_repeat(df):
            raise UserError(f"{path}: the wide layout has one row per sequence, but id column "
                            f"{found.id_col!r} repeats")
        target = guess_target(df, found, self.target_names, path, warnings)
        groups = step_groups([c for c in found.rest(df) if c != target])
        if not groups:
            raise UserError(f"{path}: the wide layout needs ordered step columns such as x0, x1, x2, ...")
        prefixes, steps = groups
        step_cols = {c for row in steps for c in row}
        ignored = [c for c in found.rest(df) if c != target and c not in step_cols]
        if ignored:
            warnings.append(f"wide layout: columns not used as steps are ignored: {', '.join(ignored)}")
        return Schema(self.name, sequence_task(opts, df[target], warnings), target, found.id_col, found.time_col,
                      found.split_col, [p or "value" for p in prefixes], {"step_columns": steps})

    def build(self, df: pd.DataFrame, schema: Schema, opts: DataOptions, path: Path, warnings: list[str]
              ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
        raw, lengths, inside = wide_steps(df, schema.layout_data["step_columns"], opts.fill, path)
        keys = df[schema.id_col].to_numpy() if schema.id_col else np.arange(len(df))
        first = df[schema.target]
        if first.isna().any():
            raise UserError(f"{path}: target column {schema.target!r} has {int(first.isna().sum())} missing values")
        given = split_from_column(df, schema.split_col, path) if schema.split_col else None
        assign = sequence_splits(given, first, schema.task, opts, path)
        y, target_info = get_task(schema.task).encode_target(first.reset_index(drop=True), assign == "train",
                                                             path, schema.target)
        mean, std = standardise_padded(raw, inside, assign == "train")
        seq_order = split_order(assign)
        x = raw[seq_order]
        del raw
        splits = split_views(x, seq_order, assign, lengths, y, keys)
        return splits, {"inputs": schema.features, "scaler": Scaler(mean.tolist(), std.tolist()),
                        "layout_data": schema.layout_data, **target_info}

    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        x, lengths, inside = wide_steps(df, prep.layout_data["step_columns"], prep.fill, path)
        standardise_padded(x, inside, scaler=prep.scaler.arrays())
        keys = df[prep.id_col].to_numpy() if prep.id_col else np.arange(len(df))
        return Inputs(x, lengths, keys)

    def input_columns(self, prep: Preprocessing) -> list[str]:
        return [c for row in prep.layout_data["step_columns"] for c in row]

    def example(self, df: pd.DataFrame, prep: Preprocessing) -> pd.DataFrame:
        return df.head(2).reset_index(drop=True)
