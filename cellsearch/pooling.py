"""How the head reads the last layer's outputs: the registry ``POOLINGS``.

Every pooling turns (batch, time, features) outputs with per-sequence lengths into one vector per
sequence, and padded steps never count: ``last`` reads each sequence's last real step (and, for a
bidirectional top layer, the backward half at the first step, where it has seen the whole
sequence); ``mean`` and ``max`` pool over the real steps; ``attention`` weights the real steps by a
learned score (a softmax over time of one linear projection). Each pooling also writes its own ONNX
nodes (``onnx``) and counts its multiply-accumulates per step, so nothing else knows its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def real_steps(lengths: torch.Tensor, steps: int, device: Any) -> torch.Tensor:
    """(batch, time) boolean mask of each sequence's real steps."""
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


class Pooling(nn.Module):
    """Base: ``forward(y, lengths) -> (batch, size)``; ``macs_per_step`` for the cost count."""

    def __init__(self, size: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        self.size, self.hidden, self.bidirectional = size, hidden, bidirectional

    def macs_per_step(self) -> int:
        return 0

    def onnx(self, g: Any, y: str, last: str, mask: str, lengths: str) -> str:
        """Append this pooling's nodes to the graph builder ``g`` and return its output's name. ``y``
        (batch, time, size) outputs, ``last`` (batch, size) the final states of the recurrent
        operators (last real step forward, first step backward), ``mask`` (batch, time, 1) float of
        the real steps, ``lengths`` (batch, 1) float."""
        raise NotImplementedError


class LastPooling(Pooling):
    def forward(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        last = lengths.to(y.device) - 1
        out = y[torch.arange(y.shape[0], device=y.device), last]
        if self.bidirectional:
            out = torch.cat([out[:, :self.hidden], y[:, 0, self.hidden:]], dim=-1)
        return out

    def onnx(self, g: Any, y: str, last: str, mask: str, lengths: str) -> str:
        return last  # the recurrent operators' final state is exactly this


class MeanPooling(Pooling):
    def forward(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = real_steps(lengths, y.shape[1], y.device).unsqueeze(-1).to(y.dtype)
        return (y * mask).sum(dim=1) / lengths.to(y.device).clamp(min=1).unsqueeze(-1).to(y.dtype)

    def macs_per_step(self) -> int:
        return self.size

    def onnx(self, g: Any, y: str, last: str, mask: str, lengths: str) -> str:
        total = g.node("ReduceSum", [g.node("Mul", [y, mask]), g.const("ax1s", [1], "int64")], keepdims=0)
        return g.node("Div", [total, g.node("Max", [lengths, g.const("one_f", [1.0], "float32")])])


class MaxPooling(Pooling):
    def forward(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = real_steps(lengths, y.shape[1], y.device).unsqueeze(-1)
        return y.masked_fill(~mask, float("-inf")).amax(dim=1)

    def macs_per_step(self) -> int:
        return self.size

    def onnx(self, g: Any, y: str, last: str, mask: str, lengths: str) -> str:
        masked = g.node("Where", [g.node("Cast", [mask], to=g.BOOL), y, g.const("neg_inf", [-1e30], "float32")])
        return g.node("ReduceMax", [masked], axes=[1], keepdims=0)  # opset 17: axes an attribute here


class AttentionPooling(Pooling):
    """Weights ``softmax_t(w · y_t + b)`` over the real steps."""

    def __init__(self, size: int, hidden: int, bidirectional: bool) -> None:
        super().__init__(size, hidden, bidirectional)
        self.score = nn.Linear(size, 1)

    def forward(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = real_steps(lengths, y.shape[1], y.device)
        s = self.score(y).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (torch.softmax(s, dim=1).unsqueeze(-1) * y).sum(dim=1)

    def macs_per_step(self) -> int:
        return 2 * self.size

    def onnx(self, g: Any, y: str, last: str, mask: str, lengths: str) -> str:
        w = self.score.weight.detach().cpu().numpy().T.astype("float32")  # (size, 1)
        b = self.score.bias.detach().cpu().numpy().astype("float32")
        s = g.node("Add", [g.node("MatMul", [y, g.const("att_w", w, "float32")]), g.const("att_b", b, "float32")])
        s = g.node("Where", [g.node("Cast", [mask], to=g.BOOL), s, g.const("neg_inf", [-1e30], "float32")])
        a = g.node("Softmax", [s], axis=1)
        return g.node("ReduceSum", [g.node("Mul", [y, a]), g.const("ax1s", [1], "int64")], keepdims=0)


POOLINGS: dict[str, Callable[[int, int, bool], Pooling]] = {
    "last": LastPooling,
    "mean": MeanPooling,
    "max": MaxPooling,
    "attention": AttentionPooling,
}
