"""The layout registry, ``LAYOUTS``: the one place that maps a layout's name to its implementation.

Detection tries the registered layouts in increasing ``priority``; ``--layout NAME`` picks one;
``Preprocessing.layout`` names the one that prediction must use. A new layout is one module with a
``Layout`` subclass plus one line here, or ``register_layout(MyLayout())`` from anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cellsearch.data.detect import Schema, find_columns, is_numeric
from cellsearch.data.layouts.base import Inputs, Layout
from cellsearch.data.layouts.long import LongLayout
from cellsearch.data.layouts.series import SeriesLayout
from cellsearch.data.layouts.text import TextLayout
from cellsearch.data.layouts.wide import WideLayout
from cellsearch.data.options import DataOptions
from cellsearch.errors import UserError
from cellsearch.registry import Registry
from cellsearch.tasks import get_task

#: The registry: layout name → its one instance.
LAYOUTS: Registry[Layout] = Registry(lambda name, known: f"--layout must be one of {', '.join(known)}, got {name!r}")
#: Add (or replace) a layout under its ``name``; returns it.
register_layout = LAYOUTS.register
#: The registered layout called ``name``; a ``UserError`` naming the known ones otherwise.
get_layout = LAYOUTS.named


def detect(df: pd.DataFrame, opts: DataOptions, path: Path) -> tuple[Schema, list[str]]:
    """Decide layout, columns and task from the frame and the overrides; returns warnings too.

    The layout is ``--layout``'s, else the first registered layout by priority that recognises the file.
    """
    warnings: list[str] = []
    found = find_columns(df, opts, path)
    if opts.layout:
        layout = get_layout(opts.layout)
    else:
        layout = next(lay for lay in sorted(LAYOUTS.values(), key=lambda lay: lay.priority)
                      if lay.recognises(df, found, opts))
    if opts.task is not None and not layout.serves(opts.task):
        serving = [lay.name for lay in LAYOUTS.values() if lay.serves(opts.task)]
        raise UserError(f"--task {opts.task} needs the {' or '.join(serving)} layout (or --layout {serving[0]}); "
                        f"the {layout.name} layout is for {' or '.join(layout.tasks())}")
    schema = layout.schema(df, found, opts, path, warnings)
    if get_task(schema.task).needs_numeric_target() and not is_numeric(df[schema.target]):
        raise UserError(f"{path}: {schema.task} needs a numeric target; column {schema.target!r} is text")
    return schema, warnings


for _layout in (TextLayout(), LongLayout(), WideLayout(), SeriesLayout()):
    register_layout(_layout)

__all__ = ["LAYOUTS", "Inputs", "Layout", "detect", "get_layout", "register_layout"]
