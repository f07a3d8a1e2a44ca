"""``cellsearch explain``: gate traces against the cell equations, clamping inside the cells, the
page in a real browser, and the command's errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cellsearch.explain import explain_sequences
from cellsearch.model import ModelSpec, build
from cellsearch.stack import LayerSpec

PREP = SimpleNamespace(classes=["a", "b"], target_std=1.0, target_mean=0.0, task="classification")


def _model(layers, patch=1, seed=0):
    torch.manual_seed(seed)
    spec = ModelSpec(input_size=2, layers=tuple(LayerSpec.parse(x) for x in layers), n_outputs=2,
                     task="classification", patch=patch)
    model = build(spec).eval()
    with torch.no_grad():  # known, not-small weights so that every gate moves
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
    return model


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _reference(cell, x):
    """The README's equations in numpy, one step at a time: gate name -> (units, steps)."""
    P = {k: v.detach().double().numpy() for k, v in cell.named_parameters()}  # noqa: N806
    T, H = x.shape[0], cell.hidden_size  # noqa: N806
    h, c = np.zeros(H), np.zeros(H)
    out = {k: [] for k in cell.gate_names}
    for t in range(T):
        if type(cell).__name__ == "GRUCell":
            gi = P["rnn.weight_ih_l0"] @ x[t] + P["rnn.bias_ih_l0"]
            gh = P["rnn.weight_hh_l0"] @ h + P["rnn.bias_hh_l0"]
            r = _sig(gi[:H] + gh[:H])
            z = _sig(gi[H:2 * H] + gh[H:2 * H])
            n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
            vals = {"r": r, "z": z, "n": n, "h": h}
        else:
            if type(cell).__name__ == "LSTMCell":
                a = (P["rnn.weight_ih_l0"] @ x[t] + P["rnn.bias_ih_l0"] + P["rnn.weight_hh_l0"] @ h
                     + P["rnn.bias_hh_l0"])
                pi = pf = po = np.zeros(H)
            else:
                a = P["weight_ih"] @ x[t] + P["bias"] + P["weight_hh"] @ h
                pi, pf, po = P["peep"] if "peep" in P else (np.zeros(H),) * 3
            if cell.coupled if hasattr(cell, "coupled") else False:
                a_f, a_g, a_o = a[:H], a[H:2 * H], a[2 * H:]
                f = _sig(a_f + pf * c)
                i = 1 - f
            else:
                a_i, a_f, a_g, a_o = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
                i, f = _sig(a_i + pi * c), _sig(a_f + pf * c)
            g = np.tanh(a_g)
            c = f * c + i * g
            o = _sig(a_o + po * c)
            h = o * np.tanh(c)
            vals = {"i": i, "f": f, "g": g, "o": o, "c": c, "h": h}
        for k in out:
            out[k].append(vals[k])
    return {k: np.stack(v, 1) for k, v in out.items()}


@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg", "gru"])
def test_gate_arrays_equal_the_reference_equations(cell):
    model = _model([(cell, 3)])
    x = np.random.default_rng(1).normal(size=(1, 7, 2)).astype(np.float32)
    (e,) = explain_sequences(model, PREP, x, np.array([7]), np.array(["s1"]))
    ref = _reference(model.stack.layers[0].fwd, x[0].astype(np.float64))
    assert set(e.layers[0].gates) == set(model.stack.layers[0].fwd.gate_names)
    for name, want in ref.items():
        np.testing.assert_allclose(e.layers[0].gates[name], want, atol=1e-5, err_msg=f"{cell} {name}")
    np.testing.assert_allclose(e.layers[0].mean_abs_hidden, np.abs(ref["h"]).mean(axis=0), atol=1e-5)
    with torch.no_grad():  # the last step's prediction is the model's; each earlier one its prefix's
        full = torch.softmax(model(torch.from_numpy(x)), 1).numpy()[0]
        prefix = torch.softmax(model(torch.from_numpy(x[:, :3])), 1).numpy()[0]
    np.testing.assert_allclose(e.output, full, atol=1e-5)
    np.testing.assert_allclose(e.per_step[2], prefix, atol=1e-5)
    assert e.prediction.startswith(("a (", "b ("))


@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg"])
def test_clamping_the_forget_gate_to_zero_leaves_input_times_candidate(cell):
    model = _model([(cell, 4), ("gru", 3)])
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(3, 9, 2)).astype(np.float32))
    with torch.no_grad():
        before = model(x)
        target = model.stack.layers[0].fwd
        h = model.stack.time_major(x, None)[0]
        with target.clamped({"f": 0.0}):
            trace = target.trace(h)
            clamped = model(x)
        after = model(x)
    i = trace["i"] if "i" in trace else 1.0 - trace["f"]  # a coupled cell's input gate is 1 - f
    assert torch.all(trace["f"] == 0)
    torch.testing.assert_close(trace["c"], i * trace["g"], rtol=0, atol=1e-6)
    assert not torch.allclose(clamped, before, atol=1e-4)  # the clamp reached the prediction
    assert torch.equal(after, before) and target.clamp is None  # and is gone after the block
    with pytest.raises(ValueError, match="cannot clamp"):
        with target.clamped({"g": 0.0}):
            pass


def test_bidirectional_layers_and_patches_are_explained_per_direction():
    model = _model([("peephole", 3, True), ("gru", 4)], patch=2)
    x = np.random.default_rng(3).normal(size=(1, 9, 2)).astype(np.float32)
    (e,) = explain_sequences(model, PREP, x, np.array([9]), np.array(["s"]))
    assert [(t.layer, t.direction, t.cell) for t in e.layers] == [(0, "forward", "peephole"),
                                                                 (0, "backward", "peephole"), (1, "forward", "gru")]
    assert all(v.shape == (t.gates["h"].shape[0], 5) for t in e.layers for v in t.gates.values())
    assert list(e.step_ends) == [2, 4, 6, 8, 9]
    with torch.no_grad():  # the backward trace, back in time order, is what the layer computes
        xin, lens = model.prepare(torch.from_numpy(x), torch.tensor([9]))
        y = model.stack.layers[0](xin.transpose(0, 1), lens, None)[:, 0].numpy()
    np.testing.assert_allclose(e.layers[1].gates["h"], y[:, 3:].T, atol=1e-5)
    np.testing.assert_allclose(e.layers[0].gates["h"], y[:, :3].T, atol=1e-5)
    texts = [c.text for c in e.clamps]
    assert len(texts) == 3 * 3 + 3 * 3 + 2 * 3  # (i, f, o) x 2 directions + (r, z), each to 0, 1, mean
    assert any("(backward)" in t for t in texts)
    assert abs(e.clamps[0].change) >= abs(e.clamps[-1].change)  # ranked by effect


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                None)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellsearch.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_explain_command_writes_a_page_that_renders(tuned, tiny_csv, tmp_path):
    bundle = tmp_path / "model"
    assert _cli("export", "--run-dir", str(tuned.run_dir), "--out", str(bundle)).returncode == 0
    page = tmp_path / "page.html"
    res = _cli("explain", str(bundle), str(tiny_csv), "--out", str(page))
    assert res.returncode == 0, res.stderr
    html = page.read_text()
    assert "Plotly" in html and "<script src=" not in html  # self-contained: plotly inlined
    assert "Gate manipulation" in html and "clamped to 0" in html
    for args, message in [((str(bundle), str(tmp_path / "nope.csv")), "not found"),
                          ((str(bundle), str(tiny_csv), "--sequence", "no-such-id"), "no such sequence"),
                          ((str(tmp_path), str(tiny_csv)), "not a cellsearch model bundle"),
                          ((str(bundle), str(tiny_csv), "--member", "99"), "--member 99"),
                          ((str(bundle), str(tiny_csv), "--out", str(tmp_path)), "is a directory")]:
        bad = _cli("explain", *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and message in lines[0], (args, bad.stderr)
    browser = _browser()
    if browser is None:
        if os.environ.get("CELLSEARCH_REQUIRE_BROWSER"):
            pytest.fail("CELLSEARCH_REQUIRE_BROWSER is set but no Chromium is installed")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it and runs this test")
    dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                          "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    assert len(re.findall(r'class="main-svg"', dom)) >= 4, "plotly drew no figures"
    assert "Layer 1" in dom and "Current step" in dom
    assert "forget gate" in dom or "update gate" in dom
