"""The MLflow ``PythonModel`` of a bundle: predict takes a DataFrame in the training CSV's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class PyfuncModel(mlflow.pyfunc.PythonModel):
    """Wraps ``cellsearch.load(bundle)``; the bundle folder is the model folder itself."""

    def __init__(self, bundle: str | Path) -> None:
        self.bundle = Path(bundle)
        self.predictor: Any = None

    def load_context(self, context: Any) -> None:
        from cellsearch.predict import load

        self.predictor = load(self.bundle)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Predictions for a frame in the training CSV's layout (MLflow reads the ``model_input`` hint)."""
        if self.predictor is None:
            self.load_context(context)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.predictor.predict(frame)
