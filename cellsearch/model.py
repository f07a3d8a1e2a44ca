"""The complete model: one frozen spec, one constructor (``build``), and the model's own cost.

A ``ModelSpec`` describes a model completely (nanoGPT style): a checkpoint stores the spec as JSON
plus the weights, and ``build(spec)`` rebuilds the same module. An ``EnsembleModel`` is a weighted
average of such models (a trial's fold models, or an ensemble of trials): its ``describe()``
lists its members' specs and weights, ``from_description`` rebuilds either kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cellsearch.pooling import POOLINGS, real_steps
from cellsearch.stack import CellStack, LayerSpec


@dataclass(frozen=True)
class InputSpec:
    """``width`` consecutive input channels that the model reads through their encoder's layer
    (``Encoder.input_layer``): e.g. token ids through an embedding.

    Args:
        encoder: a key of ``cellsearch.data.encoders.ENCODERS``.
        width: the channels of ``x`` the group takes, in order.
        params: the layer's own settings (JSON-able), as the encoder chose them.
    """

    encoder: str
    width: int
    params: dict[str, Any] = field(default_factory=dict, hash=False)


#: The forecasts a forecasting model's outputs may correct (``ModelSpec.base``), each the reference
#: member of that name (``cellsearch.refmembers.MEMBERS``), and the architecture tag it adds.
BASES: dict[str, str] = {"seasonal_naive": "/sn{season}", "theta": "/theta{season}"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model.

    Args:
        input_size: features per time step.
        layers: the recurrent layers, bottom first.
        n_outputs: the head's outputs (``Task.n_outputs``: classes, 1, the horizon).
        task: a key of ``cellsearch.tasks.TASKS``.
        dropout: dropout between recurrent layers and before the head.
        patch: read ``patch`` consecutive steps as one input vector (``patch x input_size`` inputs per
            step of the stack; a sequence's last patch is completed with zeros).
        pooling: how the head reads the last layer's outputs, a key of ``cellsearch.pooling.POOLINGS``.
        normalize: z-normalise each sequence's channels over its real steps first (the UCR convention).
        season: forecasting only: when above 0, the outputs are added to a statistical forecast read
            from the input window (``base``), so the network learns a correction to it; the season that
            forecast uses (1: none).
        target_index: the input channel that holds the (window-scaled) target.
        base: the forecast the outputs correct (``BASES``): ``seasonal_naive`` (the value one ``season``
            earlier in channel ``target_index``, 0 where the window is shorter than a season: the naive
            forecast in window-scaled units; what ``season`` alone meant before ``base`` existed) or
            ``theta`` (``cellsearch.tasks.forecasting.theta_forecast``, fitted on each window as it
            forecasts: the network corrects each series' own smoothed level and trend, as the hybrid
            that won the M4 competition corrected exponential smoothing).
        level_index: the input channel holding the series' level (the series layout's level channel;
            -1: none), which tells ``theta`` where a season is adjusted by ratios.
        inputs: groups of input channels read through their encoder's layer, covering all
            ``input_size`` channels in order; empty (the default): every channel is read as it is.
    """

    input_size: int
    layers: tuple[LayerSpec, ...]
    n_outputs: int
    task: str
    dropout: float = 0.0
    patch: int = 1
    pooling: str = "last"
    normalize: bool = False
    season: int = 0
    target_index: int = 0
    inputs: tuple[InputSpec, ...] = ()
    base: str = ""
    level_index: int = -1
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def base_forecast(self) -> str:
        """The forecast the outputs correct: ``base``, or the seasonal naive forecast where only
        ``season`` is set (a bundle written before ``base``); empty: none."""
        return (self.base or "seasonal_naive") if self.season else ""

    @property
    def arch(self) -> str:
        """Architecture tag such as ``peephole64-gru32``, with what the input layers add (``/chars``: text
        read as characters), ``/p8`` (patches), ``/mean`` (pooling other than the last step) and ``/zn``
        (per-sequence normalisation) where they apply."""
        from cellsearch.data.encoders import get_encoder

        tag = "-".join(layer.tag for layer in self.layers) + "".join(
            get_encoder(g.encoder).arch_tag(g.params) for g in self.inputs)
        return tag + (f"/p{self.patch}" if self.patch > 1 else "") + (
            f"/{self.pooling}" if self.pooling != "last" else "") + ("/zn" if self.normalize else "") + (
            BASES[self.base_forecast].format(season=self.season if self.season > 1 else "") if self.season else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        d["inputs"] = [asdict(g) for g in self.inputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**layer) for layer in d["layers"])
        d["inputs"] = tuple(InputSpec(**g) for g in d.get("inputs", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class SequenceModel(nn.Module):
    """Inputs (optionally z-normalised per sequence and read in patches), a ``CellStack``, a pooling
    of its last layer's outputs over the real steps, and a linear head.

    With the default ``last`` pooling and a bidirectional top layer the head reads the forward half at
    the last real step and the backward half at the first step (where the backward direction has
    seen the whole sequence).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.inputs = InputLayers(spec)
        self.stack = CellStack(self.inputs.size * spec.patch, spec.layers, dropout=spec.dropout)
        top = spec.layers[-1]
        self.pool = POOLINGS[spec.pooling](self.stack.output_size, top.hidden, top.bidirectional)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(self.stack.output_size, spec.n_outputs)
        # in a list: no weights, and kept out of the module tree (state dict, stacking, ``.to``)
        self._base_member: list[nn.Module] = []
        if spec.season:
            from cellsearch.refmembers import MEMBERS

            self._base_member.append(MEMBERS[spec.base_forecast](spec.season, spec.target_index, spec.n_outputs,
                                                                 spec.task, spec.input_size, spec.level_index))

    def prepare(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the stack reads: steps after each sequence's end zeroed, each sequence z-normalised
        (``normalize``), then ``patch`` steps per input vector; returns (inputs, their lengths)."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        x, lengths = self.inputs.resequence(x, lengths)
        x = self.inputs(x)
        if self.spec.normalize or self.spec.patch > 1:
            mask = real_steps(lengths, x.shape[1], x.device).unsqueeze(-1)
            x = x * mask
            if self.spec.normalize:
                n = lengths.to(x.device).clamp(min=1)[:, None, None].to(x.dtype)
                mean = x.sum(dim=1, keepdim=True) / n
                var = ((x - mean) * mask).pow(2).sum(dim=1, keepdim=True) / n
                x = (x - mean) / torch.where(var > 1e-16, var.sqrt(), torch.ones_like(var)) * mask
        p = self.spec.patch
        if p > 1:
            b, t, f = x.shape
            x = nn.functional.pad(x, (0, 0, 0, (-t) % p)).reshape(b, -(-t // p), p * f)
            lengths = torch.div(lengths + p - 1, p, rounding_mode="floor")
        return x, lengths

    def resequence(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs as the model's steps (``InputLayers.resequence``: a character-level text model's
        characters); reading them again gives them unchanged."""
        return self.inputs.resequence(x, lengths)

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per sequence: the pooled outputs of the last layer."""
        x, lengths = self.prepare(x, lengths)
        y, _ = self.stack(x, lengths)
        return self.pool(y, lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                base: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (classification) or scaled values (regression: (B, 1); forecasting: (B, H)).
        ``base``: the forecast the outputs correct, where the caller computed it already
        (``forecast_base`` of these windows; the folds trained together compute it once, outside
        ``vmap``, which would otherwise batch every step of theta's smoothing loop)."""
        out = self.head(self.drop(self.features(x, lengths)))
        if not self.spec.season:
            return out
        return out + (self.forecast_base(x, lengths) if base is None else base)

    @property
    def base_member(self) -> nn.Module | None:
        """The reference member whose forecast the outputs correct (``ModelSpec.base_forecast``: the
        seasonal naive or theta member, with the spec's season and channels; nothing fitted), or None."""
        return self._base_member[0] if self._base_member else None

    def forecast_base(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(B, H) the statistical forecast the outputs correct (``base_member``) from each window's
        target channel, in its window-scaled units."""
        return self._base_member[0](x, lengths)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_step(self) -> int:
        """Analytic multiply-accumulates per step the stack reads (one patch): the recurrent stack
        and the pooling (the head runs once per sequence, counted by ``macs_per_sequence``)."""
        return self.stack.macs_per_step() + self.pool.macs_per_step()

    def macs_per_sequence(self, length: int) -> int:
        """Per sequence of ``length`` input steps: ``ceil(length / patch)`` stack steps, the
        normalisation (two per input value) if any, and the head."""
        length = self.inputs.steps(length)
        steps = -(-length // self.spec.patch)
        norm = 2 * self.inputs.size * length if self.spec.normalize else 0
        base = self.base_member.macs_per_sequence(length) if self.base_member is not None else 0
        return self.macs_per_step() * steps + norm + self.head.in_features * self.head.out_features + base


class InputLayers(nn.Module):
    """The model's input layer: each group of ``spec.inputs`` through its encoder's layer, the
    results side by side; with no groups (numeric and one-hot inputs) the channels as they are.
    ``size`` is the width the stack reads per step."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from cellsearch.data.encoders import get_encoder

        self.widths = [g.width for g in spec.inputs]
        if spec.inputs and sum(self.widths) != spec.input_size:
            raise ValueError(f"input groups cover {sum(self.widths)} channels of {spec.input_size}")
        built = [get_encoder(g.encoder).input_layer(g.params, g.width) for g in spec.inputs]
        self.layers = nn.ModuleList([m if m is not None else nn.Identity() for m, _ in built])
        #: each group's width out; a group of width 0 is left out (channels for the ensemble's members)
        self.out_widths = [w for _, w in built]
        self.size = sum(self.out_widths) if built else spec.input_size

    def read_channels(self, count: int) -> list[int]:
        """Which of ``count`` input channels the layer reads: all but those of a group of width 0
        out (the ``unread`` encoder's, a forecast window's level for the statistical members)."""
        if not self.widths:
            return list(range(count))
        starts = [sum(self.widths[:g]) for g in range(len(self.widths) + 1)]
        return [k for g, w in enumerate(self.out_widths) if w for k in range(starts[g], starts[g + 1])]

    def resequence(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The steps the model reads: as given, or as an input layer with ``resequence`` makes them
        (a text input read as characters); only where that layer reads every input channel."""
        for layer in self.layers:
            if hasattr(layer, "resequence"):
                if len(self.layers) != 1:
                    raise ValueError("an input layer that changes the steps must read every channel")
                return layer.resequence(x, lengths)
        return x, lengths

    def steps(self, length: int) -> int:
        """The steps an input of ``length`` steps becomes (``resequence``), for its cost."""
        return next((layer.steps(length) for layer in self.layers if hasattr(layer, "steps")), length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.widths:
            return x
        parts = torch.split(x, self.widths, dim=-1)
        read = [layer(p) for layer, p, w in zip(self.layers, parts, self.out_widths) if w]
        return torch.cat(read, dim=-1) if len(read) > 1 else read[0]


def build(spec: ModelSpec) -> SequenceModel:
    """The only constructor of a model: ``build(spec)``."""
    return SequenceModel(spec)


class EnsembleModel(nn.Module):
    """A weighted average of ``SequenceModel``s that read the same inputs, as their task averages
    (``Task.average_torch``): for classification of their class probabilities (the output is the log
    of the average, so that softmax and argmax read it as logits), of their values otherwise.

    Args:
        members: the models (same task, inputs and outputs; any architecture).
        weights: one per member, summing to 1.
        sources: one dict per member saying where it came from (``{"trial": 7, "fold": 2}``).
    """

    def __init__(self, members: list[SequenceModel], weights: list[float],
                 sources: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        if not members or len(weights) != len(members):
            raise ValueError("an ensemble needs one weight per member, and at least one member")
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.sources = sources or [{} for _ in members]
        # the first network's spec (a reference member, ``cellsearch.refmembers``, has none); the
        # ensemble's task is every member's
        self.spec = next((m.spec for m in members if hasattr(m, "spec")), None)
        self.task = self.spec.task if self.spec is not None else members[0].task

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        from cellsearch.tasks import get_task

        return get_task(self.task).average_torch([m(x, lengths) for m in self.members], self.weights)

    @property
    def arch(self) -> str:
        """``gru32+peephole64-gru32/p8 (5 models)``: the distinct member architectures, in order."""
        archs = list(dict.fromkeys(member_arch(m) for m in self.members))
        return "+".join(archs) + f" ({len(self.members)} models)"

    def n_params(self) -> int:
        return sum(m.n_params() for m in self.members)

    def macs_per_sequence(self, length: int) -> int:
        """Every member runs once per sequence; the averaging is not counted."""
        return sum(m.macs_per_sequence(length) for m in self.members)

    def describe(self) -> dict[str, Any]:
        """The members' specs, weights and sources (what ``from_description`` rebuilds)."""
        return {"members": [{**({"spec": m.spec.to_dict()} if hasattr(m, "spec") else m.describe()), "weight": w, **src}
                            for m, w, src in zip(self.members, self.weights, self.sources)]}

    @property
    def networks(self) -> list[tuple[int, nn.Module]]:
        """(index, member) of the members that are networks (not references)."""
        return [(k, m) for k, m in enumerate(self.members) if hasattr(m, "spec")]


def member_arch(model: nn.Module) -> str:
    """A member's architecture tag: a network's spec's, or a reference member's own."""
    return model.spec.arch if hasattr(model, "spec") else model.arch


def _member_from(d: dict[str, Any]) -> nn.Module:
    """One ensemble member from its description: a network (``spec``) or a reference member."""
    if "reference" in d:
        from cellsearch.refmembers import member_from_description

        return member_from_description(d)
    return build(ModelSpec.from_dict(d["spec"]))


def describe(model: nn.Module) -> dict[str, Any]:
    """A model's description: its spec's dict, or an ensemble's ``describe()``."""
    return model.describe() if isinstance(model, EnsembleModel) else model.spec.to_dict()


#: Bounds a model description must keep before anything is allocated (a bundle is untrusted input).
LIMITS = {"input_size": 1_000_000, "hidden": 65_536, "layers": 64, "n_outputs": 1_000_000, "patch": 65_536,
          "members": 10_000, "numbers": 2_000_000_000}


def check_description(d: dict[str, Any]) -> None:
    """Raise ``ValueError`` when a description (``describe``'s dict) asks for absurd sizes."""
    import math

    specs = [m["spec"] for m in d["members"] if "spec" in m] if "members" in d else [d]
    if "members" in d and not specs:
        raise ValueError("an ensemble needs at least one network member")
    if len(specs) > LIMITS["members"]:
        raise ValueError(f"{len(specs)} members (at most {LIMITS['members']})")
    if "members" in d:
        weights = [m.get("weight") for m in d["members"]]
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights) or \
                not sum(weights) > 0:
            raise ValueError("member weights must be finite, at least 0 and not all 0")
    from cellsearch.tasks import TASKS

    references = [m for m in d.get("members", []) if "spec" not in m]
    for spec in specs + references:
        if spec.get("task") not in TASKS:
            raise ValueError(f"unknown task {spec.get('task')!r} (known: {', '.join(TASKS)})")
    total = 0
    for spec in specs:
        layers = spec["layers"]
        if not 1 <= len(layers) <= LIMITS["layers"]:
            raise ValueError(f"{len(layers)} layers (1 to {LIMITS['layers']})")
        width = int(spec["input_size"]) * int(spec.get("patch", 1))
        for key in ("input_size", "n_outputs", "patch"):
            if not 1 <= int(spec.get(key, 1)) <= LIMITS[key]:
                raise ValueError(f"{key} {spec.get(key)} (1 to {LIMITS[key]})")
        for layer in layers:
            h = int(layer["hidden"])
            if not 1 <= h <= LIMITS["hidden"]:
                raise ValueError(f"hidden size {h} (1 to {LIMITS['hidden']})")
            total += 4 * h * (width + h + 1) * (2 if layer.get("bidirectional") else 1)
            width = h * (2 if layer.get("bidirectional") else 1)
    if total > LIMITS["numbers"]:
        raise ValueError(f"about {total:,} parameters (at most {LIMITS['numbers']:,})")


def from_description(d: dict[str, Any]) -> nn.Module:
    """An untrained model from ``describe``'s dict: a ``SequenceModel`` or an ``EnsembleModel``."""
    if "members" not in d:
        return build(ModelSpec.from_dict(d))
    members = d["members"]
    own = {"spec", "weight", "reference", "input_size", "length", "n_outputs", "task", "temperature", "n_bank"}
    return EnsembleModel([_member_from(m) for m in members], [m["weight"] for m in members],
                         [{k: v for k, v in m.items() if k not in own} for m in members])


def model_arch(model: nn.Module) -> str:
    """The architecture tag of a model or an ensemble."""
    return model.arch if isinstance(model, EnsembleModel) else model.spec.arch


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: int, length: int, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass at batch 1 and the given length (CPU, eval mode):
    ``repeats`` passes, fewer (at least 3) when they take over 2 seconds together."""
    import statistics
    import time

    was_training = model.training
    model.eval()
    x = torch.randn(1, max(1, length), input_size)
    model(x)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < 2.0):  # at most ~2 s
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    return statistics.median(times) * 1e3


def save_checkpoint(path: Any, model: nn.Module, **meta: Any) -> None:
    """Description + weights (plain tensors: loads with ``torch.load(weights_only=True)``), written
    atomically; ``model`` is a ``SequenceModel`` or an ``EnsembleModel``."""
    from cellsearch.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"spec": json.dumps(describe(model), sort_keys=True), "state_dict": model.state_dict(),
                    "meta": json.dumps(meta, default=str)}, tmp)


def load_checkpoint(path: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model (or an ensemble) from ``save_checkpoint``'s file."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = from_description(json.loads(blob["spec"]))
    model.load_state_dict(blob["state_dict"])
    return model, json.loads(blob["meta"])
