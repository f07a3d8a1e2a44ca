"""``categorical``: a text column with few distinct values becomes one 0/1 input per value.

The levels are those seen in the training rows (at most ``MAX_CATEGORIES``); a value unseen in
training encodes as all zeros while training and is refused at prediction time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data.encoders.base import Encoder
from cellsearch.errors import UserError

MAX_CATEGORIES = 32


class CategoricalEncoder(Encoder):
    """One-hot encoding of the training split's levels (state: ``{"levels": [...]}``)."""

    name = "categorical"
    priority = 90  # after every other kind: any column not taken is text

    def accepts(self, s: pd.Series) -> bool:
        return True

    def fit(self, s: pd.Series, column: str, path: Path) -> dict[str, Any]:
        seen = pd.unique(s.dropna().astype(str))
        if len(seen) > MAX_CATEGORIES:
            raise UserError(f"{path}: text column {column!r} has {len(seen)} distinct values; cellsearch "
                            f"one-hot encodes at most {MAX_CATEGORIES} (drop it or make it numeric)")
        return {"levels": sorted(seen.tolist())}

    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        return [f"{column}={level}" for level in state["levels"]]

    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        codes = pd.Categorical(s.astype("string"), categories=state["levels"]).codes
        for k in range(len(state["levels"])):
            yield (codes == k).astype(np.float32)

    def check(self, s: pd.Series, column: str, state: dict[str, Any], where: str) -> None:
        """Refuse levels unseen in training."""
        unseen = sorted(set(pd.unique(s.dropna().astype(str))) - set(state["levels"]))
        if unseen:
            raise UserError(f"{where}: column {column!r} has value(s) unseen in training: {', '.join(unseen[:5])}")
