"""The fitted preprocessing: a typed object that training writes and prediction reads, saved as JSON.

It holds what every layout shares (columns, the input encoding, the scaler, the target encoding,
the options the file was read with) and, in ``layout_data``, what one layout alone needs (the wide
layout's step columns, the series layout's window, horizon and per-series statistics). Training and
prediction apply it through the same functions of the layout that wrote it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scaler:
    """Per-input mean and standard deviation, fitted on the training split."""

    mean: list[float]
    std: list[float]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.mean, dtype=np.float64), np.asarray(self.std, dtype=np.float64)


@dataclass(kw_only=True)
class Preprocessing:
    """Everything needed to turn a frame in the training layout into model inputs and back.

    Args:
        layout: the layout's registry name (``cellsearch.data.layouts.LAYOUTS``).
        task: classification, regression or forecasting.
        target: the target column.
        id_col: the id column (``None``: none).
        time_col: the time (order) column (``None``: none).
        split_col: the ``split`` column (``None``: none).
        features: the feature columns of the file (the wide layout: one per step prefix).
        inputs: the model's inputs, one per column or ``column=level`` for one-hot text.
        encoders: the fitted input encoder of each feature column: ``{column: {"kind": name,
            **state}}`` (``cellsearch.data.encoders``; one-hot text: ``{"kind": "categorical",
            "levels": [...]}``).
        scaler: the inputs' standardisation.
        options: the ``DataOptions`` the file was read with (``read_dataset(file, **options)`` again).
        classes: classification's labels, in output order.
        class_counts: how many sequences of each label.
        target_mean: regression's target mean (its standardisation).
        target_std: regression's target standard deviation.
        layout_data: what the layout alone needs, as JSON-able values.
    """

    layout: str
    task: str
    target: str
    features: list[str]
    inputs: list[str]
    scaler: Scaler
    options: dict[str, Any] = field(default_factory=dict)
    id_col: str | None = None
    time_col: str | None = None
    split_col: str | None = None
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: list[Any] | None = None
    class_counts: dict[str, int] | None = None
    target_mean: float | None = None
    target_std: float | None = None
    layout_data: dict[str, Any] = field(default_factory=dict)

    @property
    def fill(self) -> str | None:
        return self.options.get("fill")

    @property
    def target_scale(self) -> float:
        """The factor that turns a standardised target error back into target units (1 if none)."""
        return 1.0 if self.target_std is None else float(self.target_std)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Rebuild from ``to_dict``'s output; keys of an older flat format go to ``layout_data``, and an
        older ``categories`` mapping becomes the fitted encoders."""
        known = {f.name for f in fields(cls)}
        d = dict(d)
        if "categories" in d and "encoders" not in d:
            cats = d.pop("categories") or {}
            d["encoders"] = {c: {"kind": "categorical", "levels": list(cats[c])} if c in cats else {"kind": "numeric"}
                             for c in d.get("features", [])}
        d.pop("categories", None)
        layout_data = {**{k: d.pop(k) for k in list(d) if k not in known}, **d.pop("layout_data", {})}
        scaler = d.pop("scaler")
        return cls(**d, scaler=scaler if isinstance(scaler, Scaler) else Scaler(**scaler), layout_data=layout_data)

    def check(self, input_size: int, n_outputs: int) -> None:
        """Raise ``ValueError`` when the fields do not describe a model of ``input_size`` inputs and
        ``n_outputs`` outputs sanely (a bundle's preprocessing is untrusted input): an unknown task or
        layout, scalers of the wrong length or with a zero or non-finite spread, classes that do not
        match the outputs, a window, horizon or season out of range. (The layout's name is checked
        against the layout registry by whoever loads it.)"""
        import math

        from cellsearch.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} (known: {', '.join(TASKS)})")
        mean, std = self.scaler.mean, self.scaler.std
        if not len(self.inputs) == len(mean) == len(std) == input_size:
            raise ValueError(f"{len(self.inputs)} inputs and a scaler of {len(mean)} means and {len(std)} spreads "
                             f"for a model of {input_size} inputs")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean) or \
                not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in std):
            raise ValueError("the scaler's means must be finite and its spreads finite and above 0")
        if TASKS[self.task].labels and (not isinstance(self.classes, list) or len(self.classes) != n_outputs):
            raise ValueError(f"{len(self.classes or [])} classes for a model of {n_outputs} outputs")
        for name in ("target_mean", "target_std"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number")
        if self.target_std is not None and not self.target_std > 0:
            raise ValueError("target_std must be above 0")
        for name in ("window", "horizon", "season", "target_index"):
            v = self.layout_data.get(name)
            low = 0 if name == "target_index" else 1
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and low <= v <= 1_000_000):
                raise ValueError(f"{name} {v!r} (a whole number from {low} to 1,000,000)")
        if self.layout_data.get("horizon") is not None and self.layout_data["horizon"] != n_outputs:
            raise ValueError(f"horizon {self.layout_data['horizon']} for a model of {n_outputs} outputs")
        if self.layout_data.get("target_index") is not None and self.layout_data["target_index"] >= input_size:
            raise ValueError(f"target_index {self.layout_data['target_index']} for {input_size} inputs")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Preprocessing:
        return cls.from_dict(json.loads(Path(path).read_text()))
