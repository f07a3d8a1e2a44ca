"""The recurrent cell variants and their registry, ``CELLS``.

Every variant is an ``nn.Module`` with one signature: ``forward(x) -> y`` on time-major input
``x`` (T, B, input_size) giving ``y`` (T, B, hidden), zero initial state. Each also owns everything
else that differs between variants: its gate names and their meaning in words (the explain page),
which gates may be clamped, how to trace its gates over time, its analytic cost, and its ONNX
operator (``onnx_layer``). The stack, the search spaces, the benchmarks, explain and the ONNX export
only ever look variants up here: adding a variant is one class registered in ``CELLS`` (in this
module, or from the user's own code with ``CELLS["name"] = MyCell``), nothing else.

Equations (the README's cell table): ``lstm`` and ``gru`` are torch's ``nn.LSTM`` / ``nn.GRU`` (fused kernels);
``peephole`` adds diagonal peepholes p_i, p_f (previous cell) and p_o (new cell); ``cifg`` couples the
input gate, i = 1 - f. The LSTM family's forget-gate bias starts at 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
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
    #: Each name of ``gate_names`` in words, as the explain page titles its panels.
    gate_words: ClassVar[dict[str, str]] = {"h": "hidden state"}
    #: What each name of ``gate_names`` is: ``gate`` (0 shut to 1 open, the default), ``candidate`` or
    #: ``state`` (signed values, drawn on a symmetric scale).
    gate_kinds: ClassVar[dict[str, str]] = {"h": "state"}
    #: Whether the time loop runs on the measured GEMM backend (``cellsearch bench --all-backends``
    #: times such cells once per backend).
    uses_gemm: ClassVar[bool] = False
    #: The ONNX recurrent operator a layer maps onto (``LSTM``, ``GRU``, ``RNN``; empty: none) and its
    #: attributes beyond the hidden size and direction (``onnx_layer``).
    onnx_op: ClassVar[str] = ""
    onnx_attrs: ClassVar[dict[str, int]] = {}

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

    #: The gates ``clamp`` may fix (``cellsearch.explain``): true gates, not candidates or states.
    clampable: ClassVar[tuple[str, ...]] = ()
    #: Set only by ``clamped``: gate name → value (scalar or (hidden,)) fixed at every step. While it is
    #: set the cell runs its plain step loop (``steps``); unset (always, outside ``explain``) the fused
    #: path runs exactly as before — one attribute test per call.
    clamp: dict[str, torch.Tensor] | None = None

    def steps(self, x: torch.Tensor, record: bool = False, clamp: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The plain step loop: outputs (T, B, hidden) and, with ``record``, the gates over time."""
        raise NotImplementedError

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gate activations and state over time, each (T, B, hidden), for plots; no gradients. Under
        ``clamped`` the trace is the clamped cell's."""
        y, gates = self.steps(x, True, self.clamp)
        return {**{k: v for k, v in gates.items() if k in self.gate_names}, "h": y}

    def onnx_weights(self) -> dict[str, np.ndarray]:
        """This direction's weights as its ONNX operator takes them (``W``, ``R``, ``B``, ...)."""
        raise NotImplementedError

    @classmethod
    def onnx_layer(cls, g: Any, cells: list[Cell], x: str, seq_lens: str, name: str) -> tuple[str, str]:
        """Append one layer (``cells``: its forward and, if bidirectional, backward direction) to the
        ONNX graph builder ``g`` (``cellsearch.onnx_export.Graph``), reading ``x`` (time, batch, in)
        and ``seq_lens`` (batch,) int32; returns the names of its outputs Y (time, directions, batch,
        hidden) and Y_h (directions, batch, hidden), as ONNX's recurrent operators give them. By
        default: the operator ``onnx_op`` with ``onnx_attrs``, fed each direction's ``onnx_weights``.

        Raises:
            UserError: the variant has no ONNX mapping (the export names it in one line).
        """
        from cellsearch.errors import UserError
        from cellsearch.onnx_export import recurrent_operator

        if not cls.onnx_op:
            raise UserError(f"cell {cls.__name__} has no ONNX mapping (Cell.onnx_layer); export without --onnx")
        return recurrent_operator(g, cls.onnx_op, [c.onnx_weights() for c in cells], x, seq_lens, name,
                                  cells[0].hidden_size, **cls.onnx_attrs)

    @contextmanager
    def clamped(self, gates: dict[str, Any]) -> Iterator[Cell]:
        """Within the block, fix the named gates (``clampable``) to the given values at every step."""
        unknown = set(gates) - set(self.clampable)
        if unknown:
            raise ValueError(f"{type(self).__name__} cannot clamp {sorted(unknown)}; it can clamp {self.clampable}")
        self.clamp = {k: torch.as_tensor(v) for k, v in gates.items()}
        try:
            yield self
        finally:
            self.clamp = None


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


#: The LSTM family's gates in words, and which of them are signed values rather than 0-1 gates.
LSTM_GATE_WORDS = {"i": "input gate", "f": "forget gate", "g": "candidate (cell input)", "o": "output gate",
                   "c": "cell state", "h": "hidden state"}
LSTM_GATE_KINDS = {"g": "candidate", "c": "state", "h": "state"}


class LSTMCell(Cell):
    """``lstm``: torch's fused ``nn.LSTM`` (one layer, one direction)."""

    gate_names = ("i", "f", "g", "o", "c", "h")
    gate_words = LSTM_GATE_WORDS
    gate_kinds = LSTM_GATE_KINDS
    onnx_op = "LSTM"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(input_size, hidden_size)
        with torch.no_grad():  # forget gate bias: 1 in total (b_ih + b_hh)
            self.rnn.bias_ih_l0[hidden_size:2 * hidden_size].fill_(1.0)
            self.rnn.bias_hh_l0[hidden_size:2 * hidden_size].zero_()

    clampable = ("i", "f", "o")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clamp is not None:
            return self.steps(x, False, self.clamp)[0]
        if kernels.under_vmap(x):  # torch's LSTM has no batching rule: the same equations, compiled
            r = self.rnn
            xp = x @ r.weight_ih_l0.t() + r.bias_ih_l0 + r.bias_hh_l0
            return kernels.lstm_family(xp, r.weight_hh_l0, xp.new_zeros(0), False, False)
        return self.rnn(x)[0]

    def steps(self, x: torch.Tensor, record: bool = False, clamp: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self.rnn
        xp = x @ r.weight_ih_l0.t() + r.bias_ih_l0 + r.bias_hh_l0
        return kernels.lstm_family_steps(xp, r.weight_hh_l0, xp.new_zeros(0), False, False, record, clamp)

    def onnx_weights(self) -> dict[str, np.ndarray]:
        from cellsearch.onnx_export import IOFC, gate_blocks

        r = self.rnn
        return {"W": gate_blocks(r.weight_ih_l0, IOFC), "R": gate_blocks(r.weight_hh_l0, IOFC),
                "B": np.concatenate([gate_blocks(r.bias_ih_l0, IOFC), gate_blocks(r.bias_hh_l0, IOFC)])}


class LSTMFamilyCell(Cell):
    """Custom LSTM-family cells: one input projection for all steps, then the fused time loop.

    Subclasses set ``peephole`` and ``coupled``; the parameters are ``weight_ih`` (G*H, I),
    ``bias`` (G*H), ``weight_hh`` (G*H, H) and, with peepholes, ``peephole`` (3, H) = (p_i, p_f, p_o).
    Gate blocks are ordered i, f, g, o (or f, g, o when coupled).
    """

    peephole: ClassVar[bool] = False
    coupled: ClassVar[bool] = False
    uses_gemm = True
    gate_words = LSTM_GATE_WORDS
    gate_kinds = LSTM_GATE_KINDS
    onnx_op = "LSTM"

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
        if self.clamp is not None:
            return self.steps(x, False, self.clamp)[0]
        return kernels.lstm_family(self._project(x), self.weight_hh, self.peep,
                                   self.peephole, self.coupled)

    def steps(self, x: torch.Tensor, record: bool = False, clamp: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return kernels.lstm_family_steps(self._project(x), self.weight_hh, self.peep, self.peephole,
                                         self.coupled, record, clamp)

    def onnx_weights(self) -> dict[str, np.ndarray]:
        """W, R, B (and P) in ONNX's gate order i, o, f, c. ONNX's ``input_forget`` (onnxruntime)
        computes i from the input-gate block and sets f = 1 - i; a coupled cell has f = sigmoid(a_f),
        i = 1 - f = sigmoid(-a_f): so ONNX's i block holds -(f weights) and its f block zeros."""
        from cellsearch.onnx_export import IOFC, gate_blocks

        if self.coupled:
            def cifg(t: torch.Tensor) -> np.ndarray:
                f, g, o = np.split(t.detach().cpu().numpy().astype(np.float32), 3, axis=0)
                return np.concatenate([-f, o, np.zeros_like(f), g])

            w, r, b = cifg(self.weight_ih), cifg(self.weight_hh), cifg(self.bias)
        else:
            w, r, b = (gate_blocks(t, IOFC) for t in (self.weight_ih, self.weight_hh, self.bias))
        out = {"W": w, "R": r, "B": np.concatenate([b, np.zeros_like(b)])}
        if self.peephole:  # (a coupled cell with peepholes would need P_i = -p_f; none is registered)
            p = self.peep.detach().cpu().numpy().astype(np.float32)
            out["P"] = np.concatenate([p[0], p[2], p[1]])  # ONNX order i, o, f
        return out


class PeepholeCell(LSTMFamilyCell):
    """``peephole``: LSTM with diagonal peepholes (Gers & Schmidhuber 2000)."""

    gate_names = ("i", "f", "g", "o", "c", "h")
    clampable = ("i", "f", "o")
    peephole = True
    pointwise_macs = 6  # f*c, i*g, o*tanh(c) and the three peephole products


class CIFGCell(LSTMFamilyCell):
    """``cifg``: coupled input-forget gate LSTM, i = 1 - f (no input-gate weights)."""

    gate_names = ("f", "g", "o", "c", "h")
    clampable = ("f", "o")
    n_blocks = 3
    coupled = True
    onnx_attrs = {"input_forget": 1}  # ONNX's i = 1 - f (the weights are arranged for it: onnx_weights)


class GRUCell(Cell):
    """``gru``: torch's ``nn.GRU`` semantics (reset gate applied after the recurrent product).

    The parameters are an ``nn.GRU``'s. On the CPU the compiled time loop runs it (torch's CPU GRU
    is about twice as slow as its LSTM); elsewhere (GPU: cuDNN) torch's own fused module does.
    """

    gate_names = ("r", "z", "n", "h")
    gate_words = {"r": "reset gate", "z": "update gate", "n": "candidate (new state)", "h": "hidden state"}
    gate_kinds = {"n": "candidate", "h": "state"}
    clampable = ("r", "z")
    n_blocks = 3
    uses_gemm = True
    onnx_op = "GRU"
    onnx_attrs = {"linear_before_reset": 1}  # torch's GRU: the reset gate applies after the recurrent product

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clamp is not None:
            return self.steps(x, False, self.clamp)[0]
        r = self.rnn
        if kernels.fused_cpu_ok(x):
            T, B, _ = x.shape  # noqa: N806
            xp = torch.addmm(r.bias_ih_l0, x.reshape(T * B, -1), r.weight_ih_l0.t()).view(T, B, -1)
            return kernels.GRUFunction.apply(xp, r.weight_hh_l0, r.bias_hh_l0)[0]
        return r(x)[0]

    def steps(self, x: torch.Tensor, record: bool = False, clamp: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self.rnn
        xp = x @ r.weight_ih_l0.t() + r.bias_ih_l0
        return kernels.gru_steps(xp, r.weight_hh_l0, r.bias_hh_l0, record, clamp)

    def onnx_weights(self) -> dict[str, np.ndarray]:
        """W, R, B in ONNX's gate order z, r, h (torch: r, z, n)."""
        from cellsearch.onnx_export import gate_blocks

        r, zrh = self.rnn, [1, 0, 2]
        return {"W": gate_blocks(r.weight_ih_l0, zrh), "R": gate_blocks(r.weight_hh_l0, zrh),
                "B": np.concatenate([gate_blocks(r.bias_ih_l0, zrh), gate_blocks(r.bias_hh_l0, zrh)])}


#: The registry: the only place that maps variant names to implementations.
CELLS: dict[str, type[Cell]] = {
    "lstm": LSTMCell,
    "peephole": PeepholeCell,
    "cifg": CIFGCell,
    "gru": GRUCell,
}
