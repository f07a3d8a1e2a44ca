"""The long layout: one row per time step; an id column groups rows into sequences, an optional time
column orders them; the target is constant within a sequence (sequence classification/regression).

Inputs are scattered column by column in file order straight into the padded array, gaps filled and
scaling done there in place: no (rows x inputs) matrix and no sorted copy, so the memory peak is
the file's columns plus the padded array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cellsearch.data.detect import Columns, Schema, find_column, is_numeric
from cellsearch.data.features import plan_inputs, scatter_inputs
from cellsearch.data.layouts.base import Inputs, Layout, guess_target, sequence_task, wants_series
from cellsearch.data.options import DataOptions
from cellsearch.data.preprocessing import Preprocessing, Scaler
from cellsearch.data.reader import release_freed_memory
from cellsearch.data.sequences import group_order, padded_rows, py_scalar
from cellsearch.data.splits import SplitTensors, sequence_splits, split_from_column, split_order, split_views
from cellsearch.data.targets import sequence_targets
from cellsearch.errors import UserError
from cellsearch.tasks import get_task


class LongLayout(Layout):
    name: ClassVar[str] = "long"
    priority: ClassVar[int] = 20

    def recognises(self, df: pd.DataFrame, found: Columns, opts: DataOptions) -> bool:
        """Ids repeat, and the target is constant within most sequences (else it is a series)."""
        if not found.ids_repeat(df) or wants_series(opts):
            return False
        rest = found.rest(df)
        tgt = found.target or find_column(list(df.columns), self.target_names, found.used) or (
            rest[-1] if rest else None)
        if tgt is None:
            return False
        varying = (df.groupby(found.id_col, sort=False)[tgt].nunique(dropna=False) > 1).mean()
        return not (varying > 0.5 and is_numeric(df[tgt]))

    def schema(self, df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path,
               warnings: list[str]) -> Schema:
        target = guess_target(df, found, self.target_names, path, warnings)
        if not found.id_col:
            raise UserError(f"{path}: the long layout needs an id column; pass --id-col "
                            f"(columns: {', '.join(df.columns)})")
        features = [c for c in found.rest(df) if c != target]
        task = sequence_task(opts, df[target], warnings, df[found.id_col])
        return Schema(self.name, task, target, found.id_col, found.time_col,
                      found.split_col, features)

    def build(self, df: pd.DataFrame, schema: Schema, opts: DataOptions, path: Path, warnings: list[str]
              ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
        order, codes, starts, keys = group_order(df, schema.id_col, schema.time_col, path)
        n_seq = len(starts)
        first = sequence_targets(df, schema.target, order, starts, codes, keys, path)
        given = None
        if schema.split_col:
            split_rows = split_from_column(df, schema.split_col, path)[order]
            if (split_rows != split_rows[starts][codes]).any():
                k = int(np.flatnonzero(split_rows != split_rows[starts][codes])[0])
                raise UserError(f"{path}: sequence {py_scalar(keys[codes[k]])!r} is split across sets in column "
                                f"{schema.split_col!r}; one sequence belongs to one set")
            given = split_rows[starts]
        assign = sequence_splits(given, first, schema.task, opts, path)
        train_seq = assign == "train"
        y, target_info = get_task(schema.task).encode_target(first, train_seq, path, schema.target)
        # The frame is read_dataset's own: drop the columns now encoded (their memory goes back before
        # the padded array is allocated).
        for c in {schema.id_col, schema.time_col, schema.target, schema.split_col} - {None, *schema.features}:
            del df[c]
        train_rows_file = np.empty(len(order), dtype=bool)
        train_rows_file[order] = train_seq[codes]
        fitted, names = plan_inputs(df, schema.features, train_rows_file, path)
        del train_rows_file
        seq_order = split_order(assign)
        new_code = np.empty(n_seq, dtype=np.int64)
        new_code[seq_order] = np.arange(n_seq)
        lengths = np.diff(np.r_[starts, len(codes)])
        steps = int(lengths.max())
        dest = padded_rows(order, codes, starts, steps, new_code)
        del order, codes, new_code
        release_freed_memory()  # also detection's and the sort's temporaries, before the padded array
        x = np.zeros((n_seq, steps, len(names)), dtype=np.float32)
        mean, std = scatter_inputs(df, schema.features, fitted, names, dest, x, lengths[seq_order], opts.fill, path,
                                   train_seq=train_seq[seq_order])
        del dest
        splits = split_views(x, seq_order, assign, lengths, y, keys)
        return splits, {"inputs": names, "encoders": fitted, "scaler": Scaler(mean.tolist(), std.tolist()),
                        **target_info}

    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        order, codes, starts, keys = group_order(df, prep.id_col, prep.time_col, path)
        lengths = np.diff(np.r_[starts, len(codes)])
        fitted, names = plan_inputs(df, prep.features, np.ones(len(df), dtype=bool), path, prep.encoders)
        steps = int(lengths.max())
        x = np.zeros((len(starts), steps, len(names)), dtype=np.float32)
        scatter_inputs(df, prep.features, fitted, names, padded_rows(order, codes, starts, steps), x, lengths,
                       prep.fill, path,
                       scaler=prep.scaler.arrays())
        return Inputs(x, lengths.astype(np.int64), keys)
