"""``unread``: input channels a layout adds for the statistical members that the networks do not read.

The series layout appends each window's level (``cellsearch.data.layouts.series.level_channel``):
theta and the damped trend need it to adjust a season by ratio, but the window scaling takes the
level out of what the networks read on purpose (a series is forecast from the shape of its own
recent past, so a series unseen in training is forecast like the others; with a few series a level
would tell the networks which series they read, inviting them to learn each one by heart). Its
layer gives no channels: the networks read the others as before; the ensemble's members read all.
No column is ever encoded by it (``accepts`` is false): ``input_groups`` gives it the channels after
the columns'.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.encoders.base import Encoder


class UnreadEncoder(Encoder):
    """A group of channels the model's input layer leaves out (width 0)."""

    name = "unread"
    priority = 1000

    def accepts(self, s: pd.Series) -> bool:
        return False

    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        return [column]

    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        yield s.to_numpy(dtype=np.float32, na_value=np.nan)

    def input_params(self, state: dict[str, Any], width: int) -> dict[str, Any] | None:
        return {}

    def input_layer(self, params: dict[str, Any], width: int) -> tuple[Any, int]:
        return None, 0
