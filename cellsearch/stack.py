"""``CellStack``: a stack of recurrent layers in which every layer may be a different cell variant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cellsearch import kernels
from cellsearch.cells import CELLS, Cell


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its cell variant (a key of ``CELLS``), width, and direction(s)."""

    cell: str
    hidden: int
    bidirectional: bool = False

    @classmethod
    def parse(cls, layer: Any) -> LayerSpec:
        """Accept a ``LayerSpec``, ``(cell, hidden)``, ``(cell, hidden, bidirectional)`` or a dict."""
        if isinstance(layer, LayerSpec):
            spec = layer
        elif isinstance(layer, dict):
            spec = cls(**layer)
        elif isinstance(layer, (tuple, list)) and len(layer) in (2, 3):
            spec = cls(str(layer[0]), int(layer[1]), bool(layer[2]) if len(layer) == 3 else False)
        else:
            raise ValueError(f"a layer is (cell, hidden[, bidirectional]), got {layer!r}")
        if spec.cell not in CELLS:
            raise ValueError(f"unknown cell {spec.cell!r}; known cells: {', '.join(CELLS)}")
        if spec.hidden < 1:
            raise ValueError(f"layer width must be at least 1, got {spec.hidden}")
        return spec

    @property
    def out_size(self) -> int:
        return self.hidden * (2 if self.bidirectional else 1)

    @property
    def tag(self) -> str:
        """Short architecture tag such as ``peephole64`` or ``bi-gru32``."""
        return f"{'bi-' if self.bidirectional else ''}{self.cell}{self.hidden}"


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of a time-major batch within its own length (padding stays at the end)."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]  # noqa: N806
    t = torch.arange(T, device=x.device).unsqueeze(1)
    lens = lengths.to(x.device).unsqueeze(0)
    idx = torch.where(t < lens, lens - 1 - t, t)  # (T, B)
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


class Layer(nn.Module):
    """One layer of the stack: a cell per direction; padded steps give zero output.

    Cells are causal, so running a padded batch straight through leaves every real step's output
    exactly as if the sequence ran alone; the backward direction reverses each sequence within its
    length first. Outputs at padded steps are then set to zero.
    """

    def __init__(self, cell: type[Cell], input_size: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        self.fwd = cell(input_size, hidden)
        self.bwd = cell(input_size, hidden) if bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        y = self.fwd(x)
        if self.bwd is not None:
            y_b = reverse_padded(self.bwd(reverse_padded(x, lengths)), lengths)
            y = torch.cat([y, y_b], dim=-1)
        return y if mask is None else y * mask

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gate activations of the forward direction, (T, B, hidden) each (causal: padding after a
        sequence's end never reaches its real steps)."""
        return self.fwd.trace(x)


class CellStack(nn.Module):
    """A stack of recurrent layers, each with its own cell variant and width.

    Args:
        input_size: features per time step.
        layers: one entry per layer, bottom first: ``(cell, hidden)``, ``(cell, hidden,
            bidirectional)`` or ``LayerSpec``; ``cell`` is a key of ``cellsearch.CELLS``.
        dropout: dropout between layers (not after the last), active in training only.

    Example:
        >>> stack = CellStack(input_size=12, layers=[("peephole", 64), ("gru", 32)], dropout=0.1)
        >>> y, lengths = stack(torch.randn(8, 20, 12), torch.full((8,), 20))
        >>> y.shape
        torch.Size([8, 20, 32])
    """

    def __init__(self, input_size: int, layers: Sequence[Any], dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.specs = tuple(LayerSpec.parse(layer) for layer in layers)
        if not self.specs:
            raise ValueError("a CellStack needs at least one layer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        sizes = [self.input_size] + [s.out_size for s in self.specs]
        self.layers = nn.ModuleList(
            Layer(CELLS[s.cell], sizes[k], s.hidden, s.bidirectional) for k, s in enumerate(self.specs))

    @property
    def output_size(self) -> int:
        return self.specs[-1].out_size

    def time_major(self, x: torch.Tensor, lengths: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x`` (batch, time, features) checked and made time-major, with its lengths and the
        (time, batch, 1) mask of real steps (``None`` for both when every sequence is full)."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected x of shape (batch, time, {self.input_size}), got {tuple(x.shape)}")
        xt = x.transpose(0, 1)
        if lengths is None:
            return xt, None, None
        lengths = lengths.to(device=x.device, dtype=torch.long)
        # (not checked per model inside vmap, where a value cannot be read: the batch was checked)
        if lengths.shape != (x.shape[0],) or not kernels.under_vmap(lengths) and (
                int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
            raise ValueError("lengths must be (batch,) with values in 1..time")
        mask = (torch.arange(x.shape[1], device=x.device).unsqueeze(1) < lengths.unsqueeze(0))
        return xt, lengths, mask.unsqueeze(-1).to(x.dtype)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the stack on ``x`` (batch, time, features); returns the last layer's outputs
        (batch, time, output_size), zero at padded steps, and ``lengths`` unchanged."""
        h, lens, mask = self.time_major(x, lengths)
        for k, layer in enumerate(self.layers):
            if k and self.dropout:
                h = F.dropout(h, self.dropout, self.training)
            h = layer(h, lens, mask)
        return h.transpose(0, 1), lengths

    @torch.no_grad()
    def trace(self, x: torch.Tensor, lengths: torch.Tensor | None = None
              ) -> list[dict[str, torch.Tensor]]:
        """Per layer, the gate activations and hidden state over time, each (batch, time, hidden)."""
        h, lens, mask = self.time_major(x, lengths)
        out = []
        for layer in self.layers:
            out.append({k: v.transpose(0, 1) for k, v in layer.trace(h).items()})
            h = layer(h, lens, mask)
        return out

    def macs_per_step(self) -> int:
        """Analytic multiply-accumulates per sequence step for the whole stack."""
        sizes = [self.input_size] + [s.out_size for s in self.specs]
        return sum(CELLS[s.cell].macs(sizes[k], s.hidden) * (2 if s.bidirectional else 1)
                   for k, s in enumerate(self.specs))
