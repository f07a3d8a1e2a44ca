"""``numeric``: numeric and boolean columns are model inputs as they are (standardised with the rest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.detect import is_numeric
from cellsearch.data.encoders.base import Encoder
from cellsearch.errors import UserError


class NumericEncoder(Encoder):
    """One input per column: its values (booleans as 0/1)."""

    name = "numeric"
    priority = 10

    def accepts(self, s: pd.Series) -> bool:
        return pd.api.types.is_bool_dtype(s) or is_numeric(s)

    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        return [column]

    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        yield s.to_numpy(dtype=np.float32, na_value=np.nan)

    def check(self, s: pd.Series, column: str, state: dict[str, Any], where: str) -> None:
        """Refuse text in a column that was numeric in training."""
        if self.accepts(s):
            return
        bad = pd.to_numeric(s, errors="coerce").isna() & s.notna()
        row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
        raise UserError(f"{where}: column {column!r} should be numeric but has text such as {s.iloc[row]!r} "
                        f"(row {row + 1})")
