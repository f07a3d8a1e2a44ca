"""Extra model formats an export bundle can carry beside the PyTorch weights: the registry ``FORMATS``.

Each format names the file it writes into the bundle and a function that writes it from the trained
model. ``cellsearch export --format NAME`` (or ``export(formats=[NAME])``) adds it; a new format is
one writer and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsearch.errors import UserError


@dataclass(frozen=True)
class Format:
    """One extra format: its file in the bundle, what it is, and ``write(model, path)`` (which raises
    ``cellsearch.errors.UnsupportedFormatError`` for a model it cannot express)."""

    filename: str
    description: str
    write: Callable[[Any, Path], Any]


def _onnx(model: Any, path: Path) -> Any:
    from cellsearch.onnx_export import export_onnx

    return export_onnx(model, path)


FORMATS: dict[str, Format] = {
    "onnx": Format("model.onnx", "ONNX graph with dynamic batch and length (needs cellsearch[onnx])", _onnx),
}


def check_formats(names: list[str] | tuple[str, ...]) -> list[Format]:
    """The registered formats called ``names``; a ``UserError`` naming the known ones otherwise."""
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise UserError(f"unknown export format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    return [FORMATS[n] for n in dict.fromkeys(names)]
