"""The interface every CSV layout implements, and the helpers layouts share.

A layout answers four questions, and nothing outside its module asks them by its name:

* ``recognises``: is a file (with its split/id/time columns found) in this layout?
* ``schema``: which column is the target, which are features, what else it needs to remember;
* ``build``: the training tensors of each split and the fitted preprocessing;
* ``transform``: a frame in the same layout at prediction time → model inputs, through the same code.

A new layout is one module with one ``Layout`` subclass, registered in ``cellsearch.data.layouts``
(or at run time with ``register_layout``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from cellsearch.data.detect import TARGET_NAMES, Columns, Schema, detect_task, find_column, is_numeric
from cellsearch.data.encoders import get_encoder
from cellsearch.errors import UserError
from cellsearch.tasks import TASKS, get_task

if TYPE_CHECKING:
    from cellsearch.data.options import DataOptions
    from cellsearch.data.preprocessing import Preprocessing
    from cellsearch.data.splits import SplitTensors


@dataclass
class Inputs:
    """Model inputs made from a frame at prediction time.

    ``x`` (N, T, F) float32 padded, ``lengths`` (N,), ``keys`` one per sequence, and ``scale``: per
    sequence (mean, std) that map the model's outputs back to target units, or ``None`` when the
    target's own standardisation (``Preprocessing.target_mean/std``) does.
    """

    x: np.ndarray
    lengths: np.ndarray
    keys: np.ndarray
    scale: tuple[np.ndarray, np.ndarray] | None = None


class Layout(ABC):
    """One CSV layout. Subclasses set ``name``, ``tasks`` and ``priority`` and implement the four
    abstract methods; the defaults of the others suit layouts whose inputs are the feature columns."""

    #: The registry name, as ``--layout`` takes it and ``Preprocessing.layout`` stores it.
    name: ClassVar[str]
    #: Whether the layout's examples are whole sequences with one target each (long, wide), or
    #: windows cut from series (series); it serves the registered tasks of the same kind.
    whole_sequences: ClassVar[bool] = True
    #: Detection tries layouts in increasing priority; the last one should recognise any file.
    priority: ClassVar[int] = 50
    #: Column names taken as the target when ``--target`` is not given.
    target_names: ClassVar[tuple[str, ...]] = TARGET_NAMES

    @abstractmethod
    def recognises(self, df: pd.DataFrame, found: Columns, opts: DataOptions) -> bool:
        """Whether the file is in this layout (``found``: the split, id and time columns)."""

    @abstractmethod
    def schema(self, df: pd.DataFrame, found: Columns, opts: DataOptions, path: Path,
               warnings: list[str]) -> Schema:
        """Target, task, features and the layout's own data; refuses a file it cannot read."""

    @abstractmethod
    def build(self, df: pd.DataFrame, schema: Schema, opts: DataOptions, path: Path, warnings: list[str]
              ) -> tuple[dict[str, SplitTensors], dict[str, Any]]:
        """Tensors per split, and the ``Preprocessing`` fields it fitted (inputs, encoders, scaler,
        target encoding, layout_data). May consume ``df``'s columns to save memory."""

    @abstractmethod
    def transform(self, df: pd.DataFrame, prep: Preprocessing, path: Path) -> Inputs:
        """A frame in this layout (checked columns and types) → model inputs, as training made them."""

    def input_columns(self, prep: Preprocessing) -> list[str]:
        """The columns prediction needs besides the id and time columns."""
        return list(prep.features)

    def check_types(self, df: pd.DataFrame, columns: list[str], prep: Preprocessing, where: str) -> None:
        """Refuse, at prediction time, a column whose values training could not have seen: text in a
        numeric column, an unseen level of a one-hot column — each column's encoder decides
        (``Encoder.check``; the id and time columns may be anything)."""
        for c in columns:
            if c in (prep.id_col, prep.time_col):
                continue
            state = prep.encoders.get(c, {"kind": "numeric"})
            get_encoder(state["kind"]).check(df[c], c, state, where)

    def example(self, df: pd.DataFrame, prep: Preprocessing) -> pd.DataFrame:
        """A few rows of a training file (the target dropped) that make a valid prediction input."""
        if prep.id_col:
            df = df[df[prep.id_col].isin(df[prep.id_col].drop_duplicates().head(2))]
        return df.reset_index(drop=True)

    def n_outputs(self, prep: Preprocessing) -> int:
        """The model's outputs (``Task.n_outputs``: one per class, 1, the horizon)."""
        return get_task(prep.task).n_outputs(prep)

    def seasonality(self, prep: Preprocessing) -> tuple[int, int]:
        """(season, input channel of the target) for a seasonal naive base in the model; (1, 0): none."""
        return 1, 0

    @classmethod
    def serves(cls, task: str) -> bool:
        """Whether the layout can read a file for ``task`` (a key of ``cellsearch.tasks.TASKS``)."""
        return get_task(task).whole_sequences == cls.whole_sequences

    @classmethod
    def tasks(cls) -> list[str]:
        """The registered tasks the layout serves."""
        return [name for name in TASKS if cls.serves(name)]

    def step_labels(self, prep: Preprocessing, x: np.ndarray, length: int) -> list[str] | None:
        """What each of a sequence's ``length`` input steps (``x``: (T, F) model inputs) is, in the
        user's words, for ``explain``'s x axis (text: its tokens); ``None``: steps are numbered."""
        return None

    def references(self, prep: Preprocessing) -> tuple[str, ...]:
        """Keys of ``cellsearch.references.REFERENCES`` shown beside the networks (and, where
        ``cellsearch.refmembers`` has them, joining the ensembles): the task's (``Task.references``) by
        default; a layout whose inputs they cannot read names its own."""
        return get_task(prep.task).references

    def summary(self, prep: Preprocessing) -> dict[str, Any]:
        """Entries of the layout's own for ``inspect`` and the model card (e.g. window and horizon)."""
        return {}

    def split_source(self, schema: Schema) -> str:
        """How the splits were made, in words, when no split column gives them."""
        return "by sequence" + (", stratified" if get_task(schema.task).labels else "")


def guess_target(df: pd.DataFrame, found: Columns, names: tuple[str, ...], path: Path, warnings: list[str],
                 numeric_only: bool = False) -> str:
    """``--target``, else a column named like a target, else the last remaining (numeric) column."""
    if found.target:
        return found.target
    target = find_column(list(df.columns), names, found.used)
    if target is not None:
        return target
    rest = [c for c in found.rest(df) if is_numeric(df[c]) or not numeric_only]
    if not rest:
        raise UserError(f"{path}: no target column found; pass --target (columns: {', '.join(df.columns)})")
    warnings.append(f"target column guessed as {rest[-1]!r} (override with --target)")
    return rest[-1]


def wants_series(opts: DataOptions) -> bool:
    """Whether ``--task`` names a task of windows cut from series (forecasting)."""
    return opts.task is not None and not get_task(opts.task).whole_sequences


def sequence_task(opts: DataOptions, target: pd.Series, warnings: list[str] | None = None,
                  ids: pd.Series | None = None) -> str:
    """``--task``, else classification or regression from the target's values, one per sequence
    (``ids`` groups the rows of a long file); a note on the choice joins ``warnings`` where an integer
    target could be either."""
    if opts.task:
        return opts.task
    per_sequence = target.groupby(ids.to_numpy(), sort=False).first() if ids is not None else target
    task, note = detect_task(per_sequence.rename(target.name))
    if note and warnings is not None:
        warnings.append(note)
    return task
