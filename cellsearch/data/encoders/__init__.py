"""The input-encoder registry, ``ENCODERS``: how each feature column becomes model inputs.

``numeric`` (numbers and booleans, as they are), ``categorical`` (text with few values, one-hot) and
``text`` (free text: WordPiece tokens through an embedding, the text layout's) ship, and ``unread``
(channels a layout adds for the statistical members, which networks leave out); ``pick_encoder``
gives a column the first encoder by priority that accepts it. The interface is ``Encoder`` in
``cellsearch.data.encoders.base``; a new kind of input is one module, added with ``register_encoder``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from cellsearch.data.encoders.base import Encoder
from cellsearch.data.encoders.categorical import CategoricalEncoder
from cellsearch.data.encoders.numeric import NumericEncoder
from cellsearch.data.encoders.text import TextEncoder
from cellsearch.data.encoders.unread import UnreadEncoder
from cellsearch.registry import Registry

#: The registry: encoder name → its one instance.
ENCODERS: Registry[Encoder] = Registry(
    lambda name, known: f"unknown input encoder {name!r}; known: {', '.join(known)}")
#: Add an encoder (an instance) under its ``name``; returns it.
register_encoder = ENCODERS.register
#: The registered encoder called ``name`` (``UserError`` if none: e.g. a bundle from elsewhere).
get_encoder = ENCODERS.named


def pick_encoder(s: pd.Series) -> Encoder:
    """The first registered encoder, by priority, that accepts the column ``s``."""
    return next(e for e in sorted(ENCODERS.values(), key=lambda e: e.priority) if e.accepts(s))


def input_groups(prep: Any, drawn: dict[str, Any] | None = None) -> list[tuple[str, int, dict[str, Any]]]:
    """The model's input groups (encoder, channels, layer settings) for a fitted ``Preprocessing``:
    one per feature column, in the order of the model's input channels — or none when every
    column's inputs are read as they are (``Encoder.input_params`` is ``None`` for all). ``drawn``, a
    trial's configuration, sets what the encoders search (``Encoder.searched_params``)."""
    fitted = prep.encoders
    if not all(c in fitted for c in prep.features):
        return []
    groups = []
    for c in prep.features:
        enc = get_encoder(fitted[c]["kind"])
        width = len(enc.names(c, fitted[c]))
        groups.append((enc.name, width, enc.input_params(fitted[c], width)))
    extra = len(prep.inputs) - sum(width for _, width, _ in groups)
    if extra > 0:  # channels the layout adds after the columns' (a forecast window's level): for the members
        groups.append(("unread", extra, {}))
    if all(params is None for _, _, params in groups):
        return []
    return [(name, width, get_encoder(name).searched_params(params or {}, drawn or {}) if params is not None else {})
            for name, width, params in groups]


def reuse_fitted(prep: Any) -> None:
    """Let this process's reading of the training rows give back ``prep``'s fitted encoder states
    (``Encoder.reuse``): a search's workers and ``export`` read the file again and must see the ids
    the study's models were trained on."""
    for state in prep.encoders.values():
        kind = state.get("kind", "numeric")
        if kind in ENCODERS:
            get_encoder(kind).reuse(state)


def searched_keys(prep: Any) -> frozenset[str]:
    """The space keys the data's encoders search (``Encoder.searched``), for ``DataShape``."""
    kinds = {state.get("kind", "numeric") for state in prep.encoders.values()}
    return frozenset(k for kind in kinds if kind in ENCODERS for k in get_encoder(kind).searched)


for _encoder in (NumericEncoder(), CategoricalEncoder(), TextEncoder(), UnreadEncoder()):
    register_encoder(_encoder)

__all__ = ["ENCODERS", "Encoder", "get_encoder", "input_groups", "pick_encoder", "register_encoder", "searched_keys"]
