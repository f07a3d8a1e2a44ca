"""``regression``: one number per sequence, standardised for training, scored by RMSE in its units."""

from __future__ import annotations

from cellsearch.tasks.base import Task


class Regression(Task):
    """The base ``Task``'s defaults: mean squared error, RMSE, the 1-NN and ridge references."""

    name = "regression"
