"""How to read a file: the user's overrides (``DataOptions``) and the names every layout shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from cellsearch.errors import UserError

Fill = Literal["ffill", "zero"]
Split = Literal["train", "val", "test"]
FILLS: tuple[Fill, ...] = get_args(Fill)
#: ``--test-fraction auto``: the share held out as the test split where there is enough data ...
AUTO_TEST_SHARE = 0.15
#: ... that is, where that share holds at least this many independent units (sequences; forecasting:
#: whole horizons at the ends of the series). A test score on n units has a binomial standard error
#: of about sqrt(p(1-p)/n): 0.025 for an accuracy near 0.85 at 200 units — as precise as the
#: comparisons a user makes with it. Below that, the rows do more good in the folds, where every row
#: is validated once, and the out-of-fold score is what the search reports.
AUTO_TEST_UNITS = 200
SPLITS: tuple[Split, ...] = get_args(Split)


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """How to read a file; every field left ``None`` is detected.

    Built by the CLI and by ``cellsearch.tune``/``read_dataset``; validated at use (``validate``).
    """

    layout: str | None = None
    target: str | None = None
    id_col: str | None = None
    time_col: str | None = None
    task: str | None = None
    window: int | None = None
    horizon: int | None = None
    fill: Fill | None = None
    season: int | None = None
    seed: int = 0
    val_size: float = 0.15
    test_size: float | Literal["auto"] = "auto"
    text_col: str | None = None
    max_tokens: int | None = None

    def validate(self) -> None:
        """Raise ``UserError`` naming the first bad option (``layout`` is checked against the layout
        registry when the file is read)."""
        from cellsearch.tasks import TASKS

        if self.task is not None and self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.fill is not None and self.fill not in FILLS:
            raise UserError(f"--fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        for name in ("window", "horizon", "season", "max_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if not 0 <= self.seed < 2 ** 32:
            raise UserError(f"--seed must be a whole number from 0 to {2 ** 32 - 1}, got {self.seed}")
        if not 0 <= self.val_size < 1:
            raise UserError(f"the validation share must be at least 0 and below 1, got {self.val_size}")
        if self.test_size == "auto":
            return
        if isinstance(self.test_size, str) or not 0 <= self.test_size < 1 - self.val_size:
            raise UserError(f"--test-fraction must be at least 0 and below {1 - self.val_size:.2f} (the rest after "
                            f"the validation share of {self.val_size:.2f}, which must leave rows to train on), "
                            f"got {self.test_size}; or auto")

    def test_share(self, units: int) -> float:
        """The share held out as the test split, for data of ``units`` independent units (what a
        share of ``AUTO_TEST_SHARE`` would hold, for ``auto``)."""
        if self.test_size != "auto":
            return float(self.test_size)
        return AUTO_TEST_SHARE if units >= AUTO_TEST_UNITS else 0.0
