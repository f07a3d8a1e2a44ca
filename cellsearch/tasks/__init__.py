"""The task registry, ``TASKS``: what kind of target a data set has and everything that follows from it.

``get_task(name)`` is how the rest of the package reaches a task (the interface: ``Task`` in
``cellsearch.tasks.base``); a new task is one module with one subclass, added with ``register_task``.
"""

from __future__ import annotations

from cellsearch.errors import UserError
from cellsearch.tasks.base import Task
from cellsearch.tasks.classification import Classification
from cellsearch.tasks.forecasting import Forecasting
from cellsearch.tasks.regression import Regression

#: The registry: task name → its one instance.
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` (an instance) under its ``name``; returns it."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        UserError: no task of that name is registered.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


for _task in (Classification(), Regression(), Forecasting()):
    register_task(_task)

__all__ = ["TASKS", "Task", "get_task", "register_task"]
