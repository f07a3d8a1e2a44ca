"""Parity of every cell variant against a reference, padding semantics, and the stack."""

from __future__ import annotations

import pytest
import torch

import cellsearch
from cellsearch import kernels
from cellsearch.cells import CELLS

TOL = 1e-5


def _sig(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


def reference_lstm_family(cell: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Straight from DESIGN.md's equations, one step at a time, indexing weights by gate."""
    H = cell.hidden_size  # noqa: N806
    W, R, b = cell.weight_ih, cell.weight_hh, cell.bias  # noqa: N806
    blocks = ("f", "g", "o") if cell.coupled else ("i", "f", "g", "o")
    Wg = {k: W[n * H:(n + 1) * H] for n, k in enumerate(blocks)}  # noqa: N806
    Rg = {k: R[n * H:(n + 1) * H] for n, k in enumerate(blocks)}  # noqa: N806
    bg = {k: b[n * H:(n + 1) * H] for n, k in enumerate(blocks)}
    zero = torch.zeros(H, dtype=x.dtype)
    p_i, p_f, p_o = (cell.peep[0], cell.peep[1], cell.peep[2]) if cell.peephole else (zero, zero, zero)
    h = torch.zeros(x.shape[1], H, dtype=x.dtype)
    c = torch.zeros_like(h)
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]

        def pre(k: str) -> torch.Tensor:
            return xt @ Wg[k].T + h @ Rg[k].T + bg[k]  # noqa: B023

        f = _sig(pre("f") + p_f * c)
        i = 1 - f if cell.coupled else _sig(pre("i") + p_i * c)
        g = torch.tanh(pre("g"))
        c = f * c + i * g
        o = _sig(pre("o") + p_o * c)
        h = o * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys)


def _grads(module: torch.nn.Module, x: torch.Tensor, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in module.parameters():
        p.grad = None
    x = x.clone().requires_grad_(True)
    y = fn(x)
    # A non-uniform upstream gradient exercises every path of the backward pass.
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * w).sum().backward()
    return y.detach(), [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]


@pytest.fixture(params=[f"compiled-{b}" for b in kernels.GEMMS] + ["fallback"])
def kernel_path(request, monkeypatch):
    """Every path a cell can run: the compiled loop with each recurrent-GEMM backend this machine
    has (``CELLSEARCH_GEMM`` forces one), and the pure-PyTorch fallback."""
    if request.param.startswith("compiled"):
        if not kernels.available():
            pytest.skip(f"compiled kernel unavailable: {kernels.status()}")
        backend = request.param.split("-", 1)[1]
        if backend not in kernels.gemm_backends():
            pytest.skip(f"no {backend} backend on this machine")
        monkeypatch.setenv("CELLSEARCH_GEMM", backend)
    else:
        monkeypatch.setattr(kernels, "available", lambda: False)
    return request.param


@pytest.mark.parametrize("name", ["peephole", "cifg"])
@pytest.mark.parametrize("hidden,batch", [(7, 4), (33, 13)])  # odd widths and batches: vector, panel, row tails
def test_custom_cells_match_equations(name, hidden, batch, kernel_path):
    torch.manual_seed(1)
    cell = CELLS[name](5, hidden)
    x = torch.randn(9, batch, 5)
    y, grads = _grads(cell, x, cell)
    y_ref, grads_ref = _grads(cell, x, lambda xx: reference_lstm_family(cell, xx))
    assert torch.allclose(y, y_ref, atol=TOL), (y - y_ref).abs().max()
    names = ["x"] + [n for n, _ in cell.named_parameters()]
    for n, g, g_ref in zip(names, grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=TOL), f"{name} grad {n}: {(g - g_ref).abs().max()}"


def _copy_lstm(src, dst_nn_lstm: torch.nn.LSTM) -> None:
    with torch.no_grad():
        dst_nn_lstm.weight_ih_l0.copy_(src.weight_ih)
        dst_nn_lstm.weight_hh_l0.copy_(src.weight_hh)
        dst_nn_lstm.bias_ih_l0.copy_(src.bias)
        dst_nn_lstm.bias_hh_l0.zero_()


def test_peephole_with_zero_peepholes_equals_lstm(kernel_path):
    torch.manual_seed(2)
    cell = CELLS["peephole"](6, 16)
    with torch.no_grad():
        cell.peep.zero_()
    ref = torch.nn.LSTM(6, 16)
    _copy_lstm(cell, ref)
    x = torch.randn(12, 3, 6)
    y, grads = _grads(cell, x, cell)
    y_ref, grads_ref = _grads(ref, x, lambda xx: ref(xx)[0])
    assert torch.allclose(y, y_ref, atol=TOL)
    # input, W_ih, W_hh, bias (= b_ih of nn.LSTM) gradients agree
    for g, g_ref in zip(grads[:3], grads_ref[:3]):
        assert torch.allclose(g, g_ref, atol=TOL)
    assert torch.allclose(grads[3], grads_ref[3], atol=TOL)


def test_peephole_weights_change_the_output():
    torch.manual_seed(3)
    cell = CELLS["peephole"](4, 8)
    x = torch.randn(5, 2, 4)
    y1 = cell(x)
    with torch.no_grad():
        cell.peep.add_(0.5)
    assert not torch.allclose(y1, cell(x))


@pytest.mark.parametrize("name,torch_cls", [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)])
def test_native_stack_matches_torch_multilayer(name, torch_cls):
    torch.manual_seed(4)
    stack = cellsearch.CellStack(input_size=5, layers=[(name, 12), (name, 12)])
    ref = torch_cls(5, 12, num_layers=2, batch_first=True)
    with torch.no_grad():
        for k, layer in enumerate(stack.layers):
            for pname, p in layer.fwd.rnn.named_parameters():
                getattr(ref, pname.replace("l0", f"l{k}")).copy_(p)
    x = torch.randn(3, 10, 5)
    y, _ = stack(x)
    assert torch.allclose(y, ref(x)[0], atol=TOL)


@pytest.mark.parametrize("name", list(CELLS))
def test_trace_reproduces_forward(name):
    torch.manual_seed(5)
    cell = CELLS[name](3, 6)
    x = torch.randn(7, 2, 3)
    tr = cell.trace(x)
    assert set(tr) == set(cell.gate_names)
    assert torch.allclose(tr["h"], cell(x).detach(), atol=TOL)


@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg"])
def test_forget_gate_bias_starts_at_one(name):
    cell = CELLS[name](3, 4)
    x = torch.zeros(1, 1, 3)
    f = cell.trace(x)["f"]
    # zero input, zero state: the forget gate is sigma(bias) = sigma(1)
    assert torch.allclose(f, torch.sigmoid(torch.tensor(1.0)).expand_as(f), atol=TOL)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", list(CELLS))
def test_padded_batch_equals_each_sequence_alone(name, bidirectional):
    torch.manual_seed(6)
    stack = cellsearch.CellStack(input_size=4, layers=[(name, 8, bidirectional), ("gru", 5)])
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, 4)
    for b, n in enumerate(lengths):
        x[b, n:] = 99.0  # garbage in the padding must not leak anywhere
    y, out_len = stack(x, lengths)
    assert torch.equal(out_len, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, _ = stack(x[b:b + 1, :n])
        assert torch.allclose(y[b, :n], alone[0], atol=TOL)
        assert torch.all(y[b, n:] == 0)


def test_padded_batch_gradients_ignore_padding():
    torch.manual_seed(7)
    stack = cellsearch.CellStack(input_size=3, layers=[("peephole", 6), ("cifg", 4)])
    x = torch.randn(2, 5, 3, requires_grad=True)
    y, _ = stack(x, torch.tensor([5, 3]))
    y.sum().backward()
    assert torch.all(x.grad[1, 3:] == 0)
    assert x.grad[1, :3].abs().sum() > 0


def test_mixed_stack_runs_forward_and_backward():
    torch.manual_seed(8)
    layers = [("lstm", 8), ("peephole", 7, True), ("cifg", 6), ("gru", 5)]
    stack = cellsearch.CellStack(input_size=4, layers=layers, dropout=0.2)
    x = torch.randn(3, 9, 4)
    y, _ = stack(x, torch.tensor([9, 5, 1]))
    assert y.shape == (3, 9, 5)
    y.pow(2).sum().backward()
    for n, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    traces = stack.trace(x)
    assert [set(t) for t in traces] == [set(CELLS[name].gate_names) for name, *_ in layers]


def test_stack_rejects_bad_layers():
    with pytest.raises(ValueError, match="unknown cell"):
        cellsearch.CellStack(input_size=3, layers=[("transformer", 8)])
    with pytest.raises(ValueError, match="at least one layer"):
        cellsearch.CellStack(input_size=3, layers=[])
    stack = cellsearch.CellStack(input_size=3, layers=[("lstm", 4)])
    with pytest.raises(ValueError, match="lengths"):
        stack(torch.randn(2, 4, 3), torch.tensor([5, 1]))


def test_macs_match_a_hand_count():
    # lstm I=3, H=4: 4 blocks x 4 x (3 + 4) = 112 matrix MACs + 3x4 state products = 124
    assert CELLS["lstm"].macs(3, 4) == 124
    # peephole adds 3 peephole products per unit: 124 + 12
    assert CELLS["peephole"].macs(3, 4) == 136
    # cifg: 3 blocks x 4 x 7 = 84 + 12
    assert CELLS["cifg"].macs(3, 4) == 96
    # gru: 3 blocks x 4 x 7 = 84 + r*(.), (1-z)*n, z*h = 12
    assert CELLS["gru"].macs(3, 4) == 96
    stack = cellsearch.CellStack(input_size=3, layers=[("lstm", 4, True), ("gru", 4)])
    assert stack.macs_per_step() == 2 * 124 + CELLS["gru"].macs(8, 4)


@pytest.mark.parametrize("name", list(CELLS))
def test_param_counts(name):
    cls = CELLS[name]
    blocks = cls.n_blocks
    expected = blocks * 6 * (3 + 6) + blocks * 6 * (2 if name in ("lstm", "gru") else 1)
    expected += 3 * 6 if name == "peephole" else 0
    assert cls.n_params(3, 6) == expected


@pytest.mark.parametrize("hidden,batch", [(7, 4), (33, 13)])
def test_gru_loop_matches_torch_gru_outputs_and_gradients(hidden, batch, kernel_path):
    """The compiled GRU loop (CPU) against torch's own nn.GRU holding the same parameters."""
    torch.manual_seed(9)
    cell = CELLS["gru"](5, hidden)
    x = torch.randn(9, batch, 5)
    y, grads = _grads(cell, x, cell)
    y_ref, grads_ref = _grads(cell, x, lambda xx: cell.rnn(xx)[0])
    assert torch.allclose(y, y_ref, atol=TOL)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=TOL), (g - g_ref).abs().max()


def test_gemm_choice_is_measured_once_cached_and_forced_by_the_environment(monkeypatch):
    if not kernels.available():
        pytest.skip(f"compiled kernel unavailable: {kernels.status()}")
    monkeypatch.delenv("CELLSEARCH_GEMM", raising=False)
    calls = []
    real = kernels.measure_gemm
    monkeypatch.setattr(kernels, "measure_gemm", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setitem(kernels.STATE, "gemm", {})
    first = kernels.gemm_for(50, 24, 4)  # batch 50 measures as 64
    assert first in [kernels.GEMMS[b] for b in kernels.gemm_backends()]
    assert sorted(c[0] for c in calls) == sorted(kernels.gemm_backends()) and {c[1] for c in calls} == {64}
    assert kernels.gemm_for(60, 24, 4) == first and len(calls) == len(kernels.gemm_backends())  # cached
    if kernels.STATE.get("folder"):
        import json

        on_disk = json.loads((kernels.STATE["folder"] / "gemm_choice.json").read_text())
        assert any(k.endswith("|b64|h24|g4") for k in on_disk)
    monkeypatch.setenv("CELLSEARCH_GEMM", "aten")
    assert kernels.gemm_for(50, 24, 4) == kernels.GEMMS["aten"]
    monkeypatch.setenv("CELLSEARCH_GEMM", "nope")
    with pytest.raises(ValueError, match="CELLSEARCH_GEMM=nope"):
        kernels.gemm_for(50, 24, 4)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """torch waits for its build lock forever: one left by a process killed mid-build must not hang
    every later process, while a build in progress keeps its lock."""
    import os
    import time

    lock = tmp_path / "lock"
    lock.touch()
    kernels.clear_stale_lock(lock)
    assert lock.exists()
    old = time.time() - kernels.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    kernels.clear_stale_lock(lock)
    assert not lock.exists()


@pytest.mark.parametrize("name", ["peephole", "cifg", "gru"])
def test_reused_buffers_never_overwrite_an_output_still_held(name):
    """The compiled loop reuses its large buffers between calls (fresh pages cost more than the
    arithmetic); a result the caller still holds, or a view of one, must never be handed out again."""
    if not kernels.available():
        pytest.skip(f"compiled kernel unavailable: {kernels.status()}")
    torch.manual_seed(3)
    cell = CELLS[name](4, 16)
    x1, x2 = torch.randn(12, 8, 4), torch.randn(12, 8, 4)
    with torch.no_grad():
        y1 = cell(x1)
        kept = y1.clone()
        view = cell(x2)[3:].transpose(0, 1)  # only a view of the second result survives
        expected = cell(x2)[3:].transpose(0, 1).clone()
        for _ in range(3):  # later calls of the same shape must take other blocks
            cell(torch.randn(12, 8, 4))
    assert torch.equal(y1, kept)
    assert torch.equal(view, expected)
    y = cell(x1.requires_grad_(True))  # and a training step: saved tensors stay intact until backward
    cell(torch.randn(12, 8, 4)).sum().backward()
    y.sum().backward()
    assert torch.allclose(y.detach(), kept, atol=1e-6)


@pytest.mark.parametrize("m,k,n", [(13, 33, 70), (64, 64, 256), (1, 7, 3)])
def test_every_gemm_backend_computes_the_recurrent_product(m, k, n):
    """The product alone, accumulated twice into a non-zero C, on shapes with row, panel and vector
    tails: every backend this machine has gives C + 2 A W^T."""
    if not kernels.available():
        pytest.skip(f"compiled kernel unavailable: {kernels.status()}")
    torch.manual_seed(5)
    a, w, c = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
    want = c + 2 * a @ w.t()
    for backend in kernels.gemm_backends():
        got = torch.ops.cellsearch_kernels.recurrent_product(a, w, c, kernels.GEMMS[backend], 2)
        assert torch.allclose(got, want, atol=1e-4), (backend, (got - want).abs().max())
