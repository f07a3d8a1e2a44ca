"""The one live display of a search: trials done, elapsed time, best score so far, front size; and
``quiet_lightning``, which keeps Lightning's and MLflow's notices off that display."""

from __future__ import annotations

import logging
import warnings
from typing import Any


class SearchProgress:
    """A rich progress bar on stderr (disabled: a no-op), updated after every trial."""

    def __init__(self, *, total: int | None, done: int, metric: str, enabled: bool = True) -> None:
        self.total = total
        self.done = done
        self.metric = metric
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> SearchProgress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
            console=Console(stderr=True), transient=False, refresh_per_second=4)
        self._progress.__enter__()
        self._task = self._progress.add_task("search", total=self.total, completed=self._shown(self.done),
                                             status=self._status(None, 0))
        return self

    def _shown(self, done: int) -> int:
        """Trials shown as done: capped at the target (resumes may hold more); no cap without one."""
        return done if self.total is None else min(done, self.total)

    def _status(self, best: float | None, front: int) -> str:
        if best is None:
            return f"best {self.metric} -"
        return f"best {self.metric} {best:.4g} | Pareto front {front}"

    def update(self, done: int, best: float | None, front: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self._shown(done), status=self._status(best, front))

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def quiet_lightning() -> None:
    """One live display on the console: Lightning's notices and warnings go to --verbose only."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*is an experimental feature.*")
    warnings.filterwarnings("ignore", message=".*is experimental \\(supported from.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")
