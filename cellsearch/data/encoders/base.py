"""The ``Encoder`` interface: how one feature column becomes model inputs.

An encoder is fitted on the training rows of its column (its state: JSON-able, saved with the
``Preprocessing``), names the inputs it produces, turns the column of any frame into those inputs
(training and prediction call the same code), refuses at prediction time what training could not
have seen, and may build a layer of the model that reads its inputs (``input_layer``; numeric and
one-hot inputs are read as they are). A new kind of input is one module with one subclass,
registered in ``cellsearch.data.encoders.ENCODERS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd


class Encoder(ABC):
    """Base of all input encoders."""

    #: The registry name (saved in ``Preprocessing.encoders``).
    name: ClassVar[str]
    #: Detection tries encoders in increasing priority; the first that ``accepts`` a column takes it.
    priority: ClassVar[int] = 50
    #: Keys of the search space that this encoder's layer takes (``searched_params``); the space draws
    #: them only for data with an input of this encoder (e.g. the text encoder's ``embedding``).
    searched: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def accepts(self, s: pd.Series) -> bool:
        """Whether this encoder takes the column ``s`` (detection)."""

    def fit(self, s: pd.Series, column: str, path: Path) -> dict[str, Any]:
        """The fitted state from the column's training rows ``s``; refuses (``UserError``) a column
        it cannot encode. Nothing to fit by default."""
        return {}

    @abstractmethod
    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        """The names of the model inputs this column gives."""

    @abstractmethod
    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        """Each input of the column in turn (``names``' order), as float32 in file order, NaN where a
        value is missing."""

    def check(self, s: pd.Series, column: str, state: dict[str, Any], where: str) -> None:
        """Refuse, at prediction time, values training could not have seen (nothing by default)."""
        return None

    def input_params(self, state: dict[str, Any], width: int) -> dict[str, Any] | None:
        """The settings of the model layer that reads this column's ``width`` inputs (JSON-able: they
        go into ``ModelSpec.inputs``), or ``None``: the model reads them as they are (the default)."""
        return None

    def searched_params(self, params: dict[str, Any], drawn: dict[str, Any]) -> dict[str, Any]:
        """``params`` (``input_params``) with what a trial drew for the keys in ``searched`` (``drawn``:
        the trial's configuration). Unchanged by default."""
        return params

    def bundle_files(self, column: str, state: dict[str, Any]) -> dict[str, str]:
        """Files (name → text) an exported bundle carries for this column, e.g. a tokenizer that
        users of the ONNX graph need to make its inputs. None by default."""
        return {}

    def card_note(self, column: str, state: dict[str, Any]) -> str:
        """Markdown for the model card on how this column becomes the model's inputs (for users of
        the ONNX graph, which takes the inputs themselves); empty by default."""
        return ""

    def input_layer(self, params: dict[str, Any], width: int) -> tuple[Any, int]:
        """The model's layer for a group of ``width`` input channels (``nn.Module`` or ``None`` for
        as they are) and the width it gives per step; built by ``cellsearch.model.build``."""
        return None, width

    def reuse(self, state: dict[str, Any]) -> None:
        """Take ``state`` (a study's) as this encoder's fit of the same training rows in this process,
        where fitting again could give another state (a tokenizer's ties); nothing by default."""
        return None

    def arch_tag(self, params: dict[str, Any]) -> str:
        """What the architecture tag adds for this layer's settings (text read as characters:
        ``/chars``); nothing by default."""
        return ""

    def onnx_resequence(self, g: Any, x: str, lengths: str, params: dict[str, Any], layer: Any) -> tuple[str, str]:
        """The ONNX nodes of the layer's ``resequence`` (where it changes the steps, as a text input
        read as characters): the names of (inputs, lengths). Unchanged by default."""
        return x, lengths

    def onnx_input(self, g: Any, x: str, params: dict[str, Any], layer: Any) -> str:
        """The layer's ONNX nodes (graph builder ``g``, input ``x`` (batch, time, width)); returns its
        output's name. As they are by default."""
        return x
