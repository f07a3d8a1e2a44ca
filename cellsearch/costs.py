"""The compute costs a search can minimise beside the score: the registry ``COSTS``.

Each cost knows the trial attribute (and MLflow metric) it is stored under, its axis label, and how
to measure it on a model at a sequence length. A new cost objective is one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cost:
    """One compute cost (lower is better).

    Args:
        attr: the trial attribute and metric name it is recorded under.
        label: how plots and tables name it.
        measure: ``measure(model, length)`` for a ``SequenceModel`` at the data's median length.
        always: cheap enough to record for every trial whatever the objective.
    """

    attr: str
    label: str
    measure: Callable[[Any, int], float]
    always: bool = True


def _latency(model: Any, length: int) -> float:
    from cellsearch.model import measure_latency

    spec = getattr(model, "spec", None)  # an ensemble of reference members has none
    return measure_latency(model, spec.input_size if spec is not None else model.members[0].input_size, length)


COSTS: dict[str, Cost] = {
    "macs": Cost("macs", "multiply-accumulates per sequence", lambda m, n: m.macs_per_sequence(n)),
    "params": Cost("params", "parameters", lambda m, n: m.n_params()),
    "latency": Cost("latency_ms", "latency (ms, batch 1)", _latency, always=False),
}
ALWAYS = tuple(name for name, c in COSTS.items() if c.always)


def measure_costs(model: Any, length: int, names: Iterable[str] = ALWAYS) -> dict[str, float]:
    """The named costs of ``model`` at ``length`` steps, keyed by their attribute names."""
    return {COSTS[n].attr: COSTS[n].measure(model, length) for n in names}


def cost_value(name: str, attrs: Mapping[str, Any]) -> float:
    """A trial's cost ``name`` from its attributes (NaN when it was not measured)."""
    v = attrs.get(COSTS[name].attr)
    return float(v) if v is not None else math.nan
