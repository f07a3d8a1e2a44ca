"""The recurrent cell variants and their registry, ``CELLS``.

Every variant is an ``nn.Module`` with one signature: ``forward(x) -> y`` on time-major input
``x`` (T, B, input_size) giving ``y`` (T, B, hidden), zero initial state. Each also knows its
gate names (for the gate plots), how to trace its gates over time, and its analytic cost. The stack
and everything above it only ever look variants up here: adding a variant means adding a class and
one line in ``CELLS``, nothing else.

Equations (the README's cell table): ``lstm`` and ``gru`` are torch's ``nn.LSTM`` / ``nn.GRU`` (fused kernels);
``peephole`` adds diagonal peepholes p_i, p_f (previous cell) and p_o (new cell); ``cifg`` couples the
input gate, i = 1 - f. The LSTM family's forget-gate bias starts at 1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from cellsearch import kernels


class Cell(nn.Module):
    """Base of all variants: one direction of one layer."""

    #: Names of the per-step quantities ``trace`` returns, in plotting order.
    gate_names: ClassVar[tuple[str, ...]] = ()
    #: Number of gate blocks in the input and recurrent weight matrices.
    n_blocks: ClassVar[int] = 4
    #: Elementwise multiplies per hidden unit and step, beyond the matrix products (see ``macs``).
    pointwise_macs: ClassVar[int] = 3

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    @classmethod
    def macs(cls, input_size: int, hidden_size: int) -> int:
        """Multiply-accumulates per sequence step: the input and recurrent matrix products
        (``n_blocks * H * (I + H)``) plus the elementwise products of the state update."""
        return cls.n_blocks * hidden_size * (input_size + hidden_size) + cls.pointwise_macs * hidden_size

    @classmethod
    def n_params(cls, input_size: int, hidden_size: int) -> int:
        """Trainable parameters of one direction, computed without building the module."""
        return sum(p.numel() for p in cls(input_size, hidden_size).parameters())

    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gate activations and state over time, each (T, B, hidden), for plots; no gradients."""
        raise NotImplementedError


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class LSTMCell(Cell):
    """``lstm``: torch's fused ``nn.LSTM`` (one layer, one direction)."""

    gate_names = ("i", "f", "g", "o", "c", "h")

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(input_size, hidden_size)
        with torch.no_grad():  # forget gate bias: 1 in total (b_ih + b_hh)
            self.rnn.bias_ih_l0[hidden_size:2 * hidden_size].fill_(1.0)
            self.rnn.bias_hh_l0[hidden_size:2 * hidden_size].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.rnn
        xp = x @ r.weight_ih_l0.t() + r.bias_ih_l0 + r.bias_hh_l0
        y, gates = kernels.lstm_family_steps(xp, r.weight_hh_l0, xp.new_zeros(0), False, False, True)
        return {**gates, "h": y}


class LSTMFamilyCell(Cell):
    """Custom LSTM-family cells: one input projection for all steps, then the fused time loop.

    Subclasses set ``peephole`` and ``coupled``; the parameters are ``weight_ih`` (G*H, I),
    ``bias`` (G*H), ``weight_hh`` (G*H, H) and, with peepholes, ``peephole`` (3, H) = (p_i, p_f, p_o).
    Gate blocks are ordered i, f, g, o (or f, g, o when coupled).
    """

    peephole: ClassVar[bool] = False
    coupled: ClassVar[bool] = False

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        gh = self.n_blocks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        self.bias = nn.Parameter(torch.empty(gh))
        if self.peephole:
            self.peep = nn.Parameter(torch.empty(3, hidden_size))
        else:
            self.register_buffer("peep", torch.zeros(0), persistent=False)
        _init_uniform(self, hidden_size)
        f0 = 0 if self.coupled else hidden_size
        with torch.no_grad():
            self.bias[f0:f0 + hidden_size].fill_(1.0)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        T, B, _ = x.shape  # noqa: N806
        return torch.addmm(self.bias, x.reshape(T * B, -1), self.weight_ih.t()).view(T, B, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.lstm_family(self._project(x), self.weight_hh, self.peep,
                                   self.peephole, self.coupled)

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, gates = kernels.lstm_family_steps(self._project(x), self.weight_hh, self.peep,
                                             self.peephole, self.coupled, True)
        return {**gates, "h": y}


class PeepholeCell(LSTMFamilyCell):
    """``peephole``: LSTM with diagonal peepholes (Gers & Schmidhuber 2000)."""

    gate_names = ("i", "f", "g", "o", "c", "h")
    peephole = True
    pointwise_macs = 6  # f*c, i*g, o*tanh(c) and the three peephole products


class CIFGCell(LSTMFamilyCell):
    """``cifg``: coupled input-forget gate LSTM, i = 1 - f (no input-gate weights)."""

    gate_names = ("f", "g", "o", "c", "h")
    n_blocks = 3
    coupled = True

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().trace(x)
        out.pop("i")
        return out


class GRUCell(Cell):
    """``gru``: torch's ``nn.GRU`` semantics (reset gate applied after the recurrent product).

    The parameters are an ``nn.GRU``'s. On the CPU the compiled time loop runs it (torch's CPU GRU
    is about twice as slow as its LSTM); elsewhere (GPU: cuDNN) torch's own fused module does.
    """

    gate_names = ("r", "z", "n", "h")
    n_blocks = 3

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.rnn
        if kernels.fused_cpu_ok(x):
            T, B, _ = x.shape  # noqa: N806
            xp = torch.addmm(r.bias_ih_l0, x.reshape(T * B, -1), r.weight_ih_l0.t()).view(T, B, -1)
            return kernels.GRUFunction.apply(xp, r.weight_hh_l0, r.bias_hh_l0)
        return r(x)[0]

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r_ = self.rnn
        xp = (x @ r_.weight_ih_l0.t() + r_.bias_ih_l0).unbind(0)
        h = x.new_zeros(x.shape[1], self.hidden_size)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.gate_names}
        for x_t in xp:
            hp = h @ r_.weight_hh_l0.t() + r_.bias_hh_l0
            xr, xz, xn = x_t.chunk(3, 1)
            hr, hz, hn = hp.chunk(3, 1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            for k, v in zip(self.gate_names, (r, z, n, h)):
                out[k].append(v)
        return {k: torch.stack(v, 0) for k, v in out.items()}


#: The registry: the only place that maps variant names to implementations.
CELLS: dict[str, type[Cell]] = {
    "lstm": LSTMCell,
    "peephole": PeepholeCell,
    "cifg": CIFGCell,
    "gru": GRUCell,
}
