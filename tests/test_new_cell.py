"""A new cell variant is one class registered in ``CELLS``: this file adds an Elman RNN (torch's
``nn.RNN``, tanh) here and nowhere else, and sees it searched by a space that asks for every cell,
exported (bundle and ONNX graph) and explained with its own gate words."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import cellsearch
from cellsearch.cells import CELLS, Cell


class ElmanCell(Cell):
    """h' = tanh(W x + b_W + R h + b_R): torch's ``nn.RNN``; ONNX's ``RNN`` operator."""

    gate_names = ("a", "h")
    gate_words: ClassVar[dict[str, str]] = {"a": "toy pre-activation", "h": "hidden state"}
    gate_kinds: ClassVar[dict[str, str]] = {"a": "state", "h": "state"}
    n_blocks = 1
    pointwise_macs = 0
    onnx_op = "RNN"  # ONNX's RNN operator (tanh), fed ``onnx_weights``

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.RNN(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]

    def steps(self, x: torch.Tensor, record: bool = False, clamp: Any = None) -> tuple[torch.Tensor, dict]:
        r = self.rnn
        h = x.new_zeros(x.shape[1], self.hidden_size)
        ys, pre = [], []
        for t in range(x.shape[0]):
            a = x[t] @ r.weight_ih_l0.t() + r.bias_ih_l0 + h @ r.weight_hh_l0.t() + r.bias_hh_l0
            h = torch.tanh(a)
            ys.append(h)
            pre.append(a)
        return torch.stack(ys), ({"a": torch.stack(pre)} if record else {})

    def onnx_weights(self) -> dict[str, np.ndarray]:
        r = self.rnn
        return {k: v.detach().numpy().astype(np.float32) for k, v in (
            ("W", r.weight_ih_l0), ("R", r.weight_hh_l0), ("B", torch.cat([r.bias_ih_l0, r.bias_hh_l0])))}


@pytest.fixture
def elman(monkeypatch):
    monkeypatch.setitem(CELLS, "elman", ElmanCell)
    return ElmanCell


def test_a_registered_cell_is_searched_exported_and_explained(elman, tiny_csv, tmp_path):
    import onnxruntime as ort

    from cellsearch.data import read_dataset
    from cellsearch.explain import explain_sequences, write_html
    from cellsearch.export import export

    space = tmp_path / "all_cells.yaml"
    space.write_text(
        "sampler: random\n"
        "layers:\n"
        "  depth: 1\n"
        "  cell: {type: categorical, choices: all}\n"
        "  hidden: {type: int, low: 4, high: 8}\n"
        "lr: 0.02\nbatch_size: 32\nmax_epochs: 2\npatience: 1\nmin_steps: 0\nmax_steps: 0\n"
        "starts:\n  - {cell: elman, hidden: 6}\n")
    result = cellsearch.tune(tiny_csv, space=str(space), trials=2, run_dir=tmp_path / "runs", progress=False,
                             seed=0, cv=2, references=False, ensemble=False)
    trials = result.study.get_trials()
    assert set(trials[0].distributions["l0_cell"].choices) == set(CELLS) and "elman" in CELLS
    first = trials[0]
    assert first.params["l0_cell"] == "elman" and first.state.name == "COMPLETE"

    out = export(out=tmp_path / "model", run_dir=tmp_path / "runs", trial=first.number, formats=["onnx"])
    predictor = cellsearch.load(out)
    member = predictor.model.members[0] if hasattr(predictor.model, "members") else predictor.model
    assert isinstance(member.stack.layers[0].fwd, ElmanCell)

    ds = read_dataset(tiny_csv, test_size=0.15)
    split = ds.splits["test"]
    sess = ort.InferenceSession(str(out / "model.onnx"))
    with torch.no_grad():
        ref = predictor.model(torch.from_numpy(split.x), torch.from_numpy(split.lengths)).numpy()
    got = sess.run(None, {"x": split.x, "lengths": split.lengths})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    df = pd.read_csv(tiny_csv)
    assert len(predictor.predict(df)) == df["id"].nunique()

    n = 2
    explanations = explain_sequences(member, ds.preprocessing, split.x[:n], split.lengths[:n],
                                     np.asarray([str(k) for k in split.keys[:n]]))
    gates = explanations[0].layers[0].gates
    assert set(gates) == {"a", "h"}
    np.testing.assert_allclose(gates["h"], np.tanh(gates["a"]), atol=1e-5)  # the cell's own equation
    page = write_html(explanations, tmp_path / "explain.html")
    assert "Layer 1 elman: toy pre-activation [state]" in page.read_text()
