"""The task registry, ``TASKS``: what kind of target a data set has and everything that follows from it.

``get_task(name)`` is how the rest of the package reaches a task (the interface: ``Task`` in
``cellsearch.tasks.base``); a new task is one module with one subclass, added with ``register_task``.
"""

from __future__ import annotations

from cellsearch.registry import Registry
from cellsearch.tasks.base import Task
from cellsearch.tasks.classification import Classification
from cellsearch.tasks.forecasting import Forecasting
from cellsearch.tasks.regression import Regression

#: The registry: task name → its one instance.
TASKS: Registry[Task] = Registry(lambda name, known: f"unknown task {name!r}; known: {', '.join(known)}")
#: Add a task (an instance) under its ``name``; returns it.
register_task = TASKS.register
#: The registered task called ``name`` (``UserError`` when there is none).
get_task = TASKS.named


for _task in (Classification(), Regression(), Forecasting()):
    register_task(_task)

__all__ = ["TASKS", "Task", "get_task", "register_task"]
