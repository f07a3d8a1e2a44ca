"""A new task is one class registered in ``cellsearch.tasks.TASKS``: this file adds a median
(L1) regression task here and nowhere else, and runs tune → export → predict through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cellsearch
from cellsearch.tasks import TASKS, get_task
from cellsearch.tasks.regression import Regression


class MedianRegression(Regression):
    """One number per sequence, trained on absolute error and scored by MAE in the target's units."""

    name = "median"
    metric = "mae"
    references = ("ridge",)

    def loss(self, out: Any, y: Any, forecast_loss: str = "l1") -> Any:
        import torch.nn.functional as F  # noqa: N812

        return F.l1_loss(out, y)

    def score(self, pred: np.ndarray, y: np.ndarray, target_scale: float = 1.0,
              weight: np.ndarray | None = None) -> float:
        err = np.asarray(pred, dtype=np.float64).reshape(len(y), -1) - np.asarray(y).reshape(len(y), -1)
        return float(np.mean(np.abs(err)) * target_scale)


def _sums_csv(path: Path, n_seq: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_seq):
        n = int(rng.integers(4, 8))
        x = rng.normal(size=n).round(3)
        rows.append(pd.DataFrame({"id": i, "x": x, "total": round(float(x.sum()), 3)}))
    pd.concat(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def median_task(monkeypatch):
    task = MedianRegression()
    monkeypatch.setitem(TASKS, task.name, task)
    return task


def test_a_registered_task_runs_tune_export_and_predict(median_task, tmp_path):
    from cellsearch.export import export

    csv = _sums_csv(tmp_path / "sums.csv")
    space = tmp_path / "space.yaml"
    space.write_text("sampler: random\nlayers:\n  depth: 1\n  cell: gru\n  hidden: 8\n"
                     "lr: 0.02\nbatch_size: 16\nmax_epochs: 3\npatience: 2\nmin_steps: 0\nmax_steps: 0\n")
    result = cellsearch.tune(csv, task="median", target="total", space=str(space), trials=2,
                             run_dir=tmp_path / "runs", progress=False, seed=0, cv=2)
    assert result.metric == "mae" and result.direction == "minimize"
    assert get_task(result.study.user_attrs["task"]) is median_task
    assert [r["name"] for r in result.references] == ["ridge"]  # the task's own references only
    done = [t for t in result.study.get_trials() if t.state.name == "COMPLETE"]
    assert done and all(np.isfinite(t.user_attrs["val_score"]) and t.user_attrs["val_score"] >= 0 for t in done)

    out = export(out=tmp_path / "model", run_dir=tmp_path / "runs", trial=done[0].number)
    predictor = cellsearch.load(out)
    assert predictor.prep.task == "median"
    df = pd.read_csv(csv)
    preds = predictor.predict(df.drop(columns=["total"]))
    truth = df.groupby("id")["total"].first()
    assert list(preds.columns) == ["id", "prediction"] and len(preds) == len(truth)
    mae = float(np.mean(np.abs(preds.set_index("id")["prediction"] - truth)))
    assert mae < float(np.mean(np.abs(truth - truth.median())))  # better than predicting the median
