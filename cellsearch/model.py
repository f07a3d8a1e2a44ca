"""The complete model: one frozen spec, one constructor (``build``), and the model's own cost.

A ``ModelSpec`` describes a model completely (nanoGPT style): a checkpoint stores the spec as JSON
plus the weights, and ``build(spec)`` rebuilds the same module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cellsearch.stack import CellStack, LayerSpec


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model.

    Args:
        input_size: features per time step.
        layers: the recurrent layers, bottom first.
        n_outputs: classes (classification), 1 (regression) or the horizon (forecasting).
        task: ``classification``, ``regression`` or ``forecasting``.
        dropout: dropout between recurrent layers and before the head.
    """

    input_size: int
    layers: tuple[LayerSpec, ...]
    n_outputs: int
    task: str
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def arch(self) -> str:
        """Architecture tag such as ``peephole64-gru32``."""
        return "-".join(layer.tag for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**layer) for layer in d["layers"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class SequenceModel(nn.Module):
    """A ``CellStack`` and a linear head on each sequence's last real step.

    With a bidirectional top layer the head reads the forward half at the last real step and the
    backward half at the first step (where the backward direction has seen the whole sequence).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stack = CellStack(spec.input_size, spec.layers, dropout=spec.dropout)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(self.stack.output_size, spec.n_outputs)

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        y, _ = self.stack(x, lengths)
        top = self.spec.layers[-1]
        last = (lengths.to(y.device) - 1) if lengths is not None else torch.full(
            (y.shape[0],), y.shape[1] - 1, device=y.device)
        fwd = y[torch.arange(y.shape[0], device=y.device), last]
        if top.bidirectional:
            h = top.hidden
            fwd = torch.cat([fwd[:, :h], y[:, 0, h:]], dim=-1)
        return fwd

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (classification) or scaled values (regression: (B, 1); forecasting: (B, H))."""
        return self.head(self.drop(self.features(x, lengths)))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_step(self) -> int:
        """Analytic multiply-accumulates per sequence step (the recurrent stack; the head runs once
        per sequence and is counted by ``macs_per_sequence``)."""
        return self.stack.macs_per_step()

    def macs_per_sequence(self, length: int) -> int:
        return self.macs_per_step() * length + self.head.in_features * self.head.out_features


def build(spec: ModelSpec) -> SequenceModel:
    """The only constructor of a model: ``build(spec)``."""
    return SequenceModel(spec)


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: int, length: int, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass at batch 1 and the given length (CPU, eval mode)."""
    import statistics
    import time

    was_training = model.training
    model.eval()
    x = torch.randn(1, max(1, length), input_size)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    return statistics.median(times) * 1e3


def save_checkpoint(path: Any, model: SequenceModel, **meta: Any) -> None:
    """Spec + weights (plain tensors: loads with ``torch.load(weights_only=True)``), written atomically."""
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"spec": model.spec.to_json(), "state_dict": model.state_dict(),
                "meta": json.dumps(meta, default=str)}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Any) -> tuple[SequenceModel, dict[str, Any]]:
    """Rebuild a model from ``save_checkpoint``'s file."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build(ModelSpec.from_dict(json.loads(blob["spec"])))
    model.load_state_dict(blob["state_dict"])
    return model, json.loads(blob["meta"])
