"""Prediction from a raw DataFrame in the training CSV's layout, with the fitted preprocessing.

``Predictor`` is what ``cellsearch.load(DIR)`` returns: it checks the frame's columns and types
against the training schema, has the training layout turn it into model inputs (the same code as
training, with the training split's scalers and encodings), runs the model and answers in the units
of the training target (labels and class probabilities, values, or the next ``horizon`` values of
each series).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellsearch.data import LAYOUTS, Inputs, Preprocessing, get_layout
from cellsearch.errors import UserError
from cellsearch.tasks import get_task


def _check_columns(df: pd.DataFrame, prep: Preprocessing, where: str) -> list[str]:
    """Required input columns; the target and split columns are optional; anything else is refused."""
    required = get_layout(prep.layout).input_columns(prep)
    for c in (prep.id_col, prep.time_col):
        if c and c not in required:
            required.append(c)
    optional = {prep.target, prep.split_col, "split"}
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)} (the model was trained on: "
                        f"{', '.join(required)})")
    extra = [c for c in df.columns if c not in required and c not in optional]
    if extra:
        raise UserError(f"{where}: unexpected column(s) {', '.join(map(str, extra))} (the model was trained on: "
                        f"{', '.join(required)})")
    return required


def read_input(path: str | Path, prep: Preprocessing) -> pd.DataFrame:
    """A CSV in the layout ``prep`` was fitted on, read as training read it: its id and time columns
    kept exact, its ids and labels as the text in the file (``cellsearch.data.read_csv``)."""
    from cellsearch.data import read_csv

    return read_csv(Path(path), keys=(prep.id_col, prep.time_col), text=(prep.id_col, prep.target))


def transform(df: pd.DataFrame, prep: Preprocessing, where: str = "input") -> Inputs:
    """A frame in the training layout → model inputs (padded x, lengths, keys, output scale)."""
    if len(df) == 0:
        raise UserError(f"{where}: no rows")
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    layout = get_layout(prep.layout)
    layout.check_types(df, _check_columns(df, prep, where), prep, where)
    return layout.transform(df, prep, Path(where))


def to_units(out: np.ndarray, prep: Preprocessing, scale: tuple[Any, Any] | None = None) -> np.ndarray:
    """Model outputs (N, O) in the target's terms: class probabilities (classification), values in
    the target's units through the training standardisation, or, with ``scale`` (per-row mean and
    std, or one of each), through that — the forecasting windows' own scale."""
    return get_task(prep.task).to_units(out, prep, scale)


class Predictor:
    """A trained model with its preprocessing: ``predict(df)`` answers in the training target's units."""

    def __init__(self, model: Any, prep: Preprocessing, info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.prep = prep
        self.info = info or {}

    @property
    def task(self) -> str:
        return self.prep.task

    def raw_outputs(self, x: np.ndarray, lengths: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The model's outputs (logits or standardised values), in batches, without gradients."""
        import torch

        self.model.eval()
        outs = []
        with torch.no_grad():
            for k in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[k:k + batch_size]))
                lb = torch.from_numpy(lengths[k:k + batch_size])
                outs.append(self.model(xb[:, : int(lb.max())], lb).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.model.spec.n_outputs), dtype=np.float32)

    def predict(self, df: pd.DataFrame, where: str = "input", fill: str | None = None) -> pd.DataFrame:
        """Predictions for every sequence (or, for forecasting, every series) in ``df``. ``fill``
        (``ffill`` or ``zero``) fills missing feature values as ``--fill`` does in training; by
        default the bundle's own setting (missing values refused unless it trained with one)."""
        prep = self.prep
        if fill is not None:
            from dataclasses import replace

            from cellsearch.data.options import FILLS

            if fill not in FILLS:
                raise UserError(f"--fill must be one of {', '.join(FILLS)}, got {fill!r}")
            prep = replace(prep, options={**prep.options, "fill": fill})
        inputs = transform(df, prep, where)
        out = self.raw_outputs(inputs.x, inputs.lengths)
        keys = inputs.keys
        key_name = self.prep.id_col or ("row" if inputs.scale is None else "series")
        return get_task(self.prep.task).predictions(keys, to_units(out, self.prep, inputs.scale), self.prep, key_name)


def load(path: str | Path) -> Any:
    """Load a bundle written by ``export`` (or ``cellsearch export``) as a ``Predictor``.

    Example:
        >>> model = cellsearch.load("model/")              # doctest: +SKIP
        >>> model.predict(pd.read_csv("new.csv"))          # doctest: +SKIP
    """
    import torch

    from cellsearch.model import check_description, from_description

    path = Path(path)
    if not (path / "spec.json").exists() or not (path / "weights.pt").exists():
        raise UserError(f"{path}: not a cellsearch model bundle (spec.json and weights.pt expected)")
    for name in ("spec.json", "weights.pt", "preprocessing.json"):
        if (path / name).is_symlink():
            raise UserError(f"{path}/{name}: a symbolic link; a bundle's files are plain files in it")
    if not (path / "preprocessing.json").is_file():
        raise UserError(f"{path}/preprocessing.json: missing; a bundle carries its preprocessing")
    try:
        description = json.loads((path / "spec.json").read_text())
        check_description(description)
        model = from_description(description)
    except RecursionError:
        raise UserError(f"{path}/spec.json: not a valid model description (nested too deeply)") from None
    except (ValueError, TypeError, KeyError, AttributeError, UserError) as exc:
        raise UserError(f"{path}/spec.json: not a valid model description ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch's own notice about the refused file would be a second line
            warnings.simplefilter("ignore")
            state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"{path}/weights.pt: refused — not a plain file of tensors (loading it would run code "
                        "from the file)") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch's message spans lines; the missing or unexpected keys say what differs
        raise UserError(f"{path}: weights.pt does not match spec.json ({' '.join(str(exc).split())[:300]}); a "
                        "bundle exported by an older cellsearch may need exporting again") from None
    model.eval()
    try:
        prep = Preprocessing.load(path / "preprocessing.json")
        prep.check(model.spec.input_size, model.spec.n_outputs)
        if prep.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {prep.layout!r} (known: {', '.join(LAYOUTS)})")
    except RecursionError:
        raise UserError(f"{path}/preprocessing.json: not a valid preprocessing (nested too deeply)") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}/preprocessing.json: not a valid preprocessing ({exc})") from None
    try:
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    except (ValueError, RecursionError):
        raise UserError(f"{path}/metrics.json: not valid JSON") from None
    return Predictor(model, prep, metrics)
