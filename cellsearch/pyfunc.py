"""The MLflow ``PythonModel`` of a bundle: predict takes a DataFrame in the training CSV's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException


class ServingError(MlflowException):
    """A request the model cannot answer, as the client sees it: cellsearch's one-line message, first
    and alone. (MLflow's scoring server prefixes an error's message with the whole request, and answers
    any other exception with a traceback of the server's code and paths.)"""

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):  # the server's rewrite (request echoed in front) is ignored
            self._message = value


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
        import logging

        from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR

        from cellsearch.errors import UserError

        if self.predictor is None:
            self.load_context(context)
        try:
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            return self.predictor.predict(frame, where="request")
        except UserError as exc:
            raise ServingError(f"cellsearch: {exc}", error_code=BAD_REQUEST) from None
        except Exception as exc:  # the traceback goes to the server's log, not to the client
            logging.getLogger("cellsearch").exception("prediction failed")
            raise ServingError(f"cellsearch: internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                               error_code=INTERNAL_ERROR) from None
