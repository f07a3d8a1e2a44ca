"""A new kind of input is one encoder registered in ``cellsearch.data.encoders.ENCODERS``: this file
adds one here and nowhere else — numeric columns clipped to their training range and read through a
learned projection — and sees it fitted on the training rows, saved and loaded with the
preprocessing, built into the model, exported to ONNX and applied at prediction time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import cellsearch
from cellsearch.data.detect import is_numeric
from cellsearch.data.encoders import ENCODERS, Encoder


class ProjectedEncoder(Encoder):
    """Numbers clipped to the training range (the state), each read through a learned projection."""

    name = "projected"
    priority = 5  # before ``numeric``: it takes every numeric column

    def accepts(self, s: pd.Series) -> bool:
        return is_numeric(s)

    def fit(self, s: pd.Series, column: str, path: Path) -> dict[str, Any]:
        return {"low": float(s.min()), "high": float(s.max())}

    def names(self, column: str, state: dict[str, Any]) -> list[str]:
        return [column]

    def inputs(self, s: pd.Series, state: dict[str, Any]) -> Iterator[np.ndarray]:
        yield np.clip(s.to_numpy(dtype=np.float32, na_value=np.nan), state["low"], state["high"])

    def input_params(self, state: dict[str, Any], width: int) -> dict[str, Any]:
        return {"dim": 3}

    def input_layer(self, params: dict[str, Any], width: int) -> tuple[Any, int]:
        return nn.Linear(width, params["dim"]), params["dim"]

    def onnx_input(self, g: Any, x: str, params: dict[str, Any], layer: Any) -> str:
        w = layer.weight.detach().numpy().T.astype(np.float32)
        b = layer.bias.detach().numpy().astype(np.float32)
        k = len(g.nodes)
        return g.node("Add", [g.node("MatMul", [x, g.const(f"proj{k}_w", w, "float32")]),
                              g.const(f"proj{k}_b", b, "float32")])


@pytest.fixture
def projected(monkeypatch):
    enc = ProjectedEncoder()
    monkeypatch.setitem(ENCODERS, enc.name, enc)
    return enc


def test_a_registered_encoder_is_fitted_saved_built_exported_and_applied(projected, tmp_path):
    import onnxruntime as ort

    from cellsearch.data import read_dataset
    from cellsearch.export import export

    csv = _csv(tmp_path / "walks.csv")
    space = tmp_path / "space.yaml"
    space.write_text("sampler: random\nlayers:\n  depth: 1\n  cell: gru\n  hidden: 6\n"
                     "lr: 0.02\nbatch_size: 16\nmax_epochs: 2\npatience: 1\nmin_steps: 0\nmax_steps: 0\n")
    result = cellsearch.tune(csv, space=str(space), trials=1, run_dir=tmp_path / "runs", progress=False, seed=0,
                             cv=2, references=False, ensemble=False)
    trial = result.study.get_trials()[0]
    assert trial.state.name == "COMPLETE"
    out = export(out=tmp_path / "model", run_dir=tmp_path / "runs", trial=trial.number, formats=["onnx"])

    saved = json.loads((out / "preprocessing.json").read_text())["encoders"]
    train = pd.read_csv(csv)
    ds = read_dataset(csv)
    fit_rows = np.concatenate([ds.splits["train"].keys, ds.splits["val"].keys])  # tune trains on both
    train_x = train[train["id"].isin(fit_rows)]["x"]
    assert saved["x"] == {"kind": "projected", "low": pytest.approx(train_x.min(), rel=1e-6),
                          "high": pytest.approx(train_x.max(), rel=1e-6)}
    assert saved["color"] == {"kind": "categorical", "levels": ["blue", "red"]}  # the shipped one, beside it
    spec = json.loads((out / "spec.json").read_text())
    spec = spec["members"][0]["spec"] if "members" in spec else spec
    assert spec["inputs"] == [{"encoder": "projected", "width": 1, "params": {"dim": 3}},
                              {"encoder": "categorical", "width": 2, "params": {}}]

    predictor = cellsearch.load(out)
    member = predictor.model.members[0] if hasattr(predictor.model, "members") else predictor.model
    assert isinstance(member.inputs.layers[0], nn.Linear) and member.stack.specs[0].hidden == 6
    assert member.inputs.size == 3 + 2
    new = train[train["id"] < 4].drop(columns=["label"]).copy()
    new.loc[new.index[0], "x"] = 1e6  # clipped by the fitted state, as in training
    preds = predictor.predict(new)
    assert len(preds) == 4 and np.isfinite(preds.filter(like="prob_").to_numpy()).all()

    split = ds.splits["test"] if len(ds.splits["test"]) else ds.splits["train"]
    sess = ort.InferenceSession(str(out / "model.onnx"))
    with torch.no_grad():
        ref = predictor.model(torch.from_numpy(split.x), torch.from_numpy(split.lengths)).numpy()
    got = sess.run(None, {"x": split.x, "lengths": split.lengths})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def _csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = i % 2
        n = int(rng.integers(4, 8))
        rows.append(pd.DataFrame({"id": i, "x": np.cumsum(rng.normal(label - 0.5, 0.3, size=n)).round(3),
                                  "color": rng.choice(["red", "blue"], size=n), "label": f"c{label}"}))
    pd.concat(rows).to_csv(path, index=False)
    return path
