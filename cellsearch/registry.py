"""``Registry``: the one shape of every name → implementation table in the package (tasks, input
encoders, layouts): register an instance under its ``name``, look one up with a one-line error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cellsearch.errors import UserError

T = TypeVar("T")


class Registry(dict, Generic[T]):  # type: ignore[type-arg]
    """A ``dict`` of name → instance (so tests may ``monkeypatch.setitem`` it) with ``register`` and
    ``named``; ``unknown(name, known)`` words the error for a name not registered."""

    def __init__(self, unknown: Callable[[str, list[str]], str]) -> None:
        super().__init__()
        self._unknown = unknown

    def register(self, item: T) -> T:
        """Add (or replace) ``item`` under its ``name``; returns it."""
        self[item.name] = item  # type: ignore[attr-defined]
        return item

    def named(self, name: str) -> T:
        """The item registered as ``name``.

        Raises:
            UserError: none is (the message names the known ones).
        """
        try:
            return self[name]
        except KeyError:
            raise UserError(self._unknown(name, list(self))) from None
