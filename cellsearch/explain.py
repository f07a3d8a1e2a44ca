"""``cellsearch explain``: what the chosen cells do on the user's own sequences.

For each chosen sequence ``explain`` records, from an exported bundle (or any trained model):

- the input channels over time (in the units the model reads them, after the training scalers);
- per layer and direction, every gate's activation and the states over the model's steps
  (``Cell.trace``: the same equations as training, in the plain step loop);
- the prediction as if the sequence ended at each step (every prefix, one batched forward pass) —
  when the model made up its mind;
- the mean absolute hidden state per step of each layer, so an LSTM-family layer and a GRU layer of
  a hybrid stack can be compared over the same steps;
- the effect of clamping each gate of each layer to 0, to 1 and to its own mean over the sequence
  (``Cell.clamped``: inside the cell, never by editing weights), ranked by how much it moves the
  prediction.

``write_html`` turns them into one self-contained interactive page (plotly, its JavaScript inlined:
it opens offline and inside MLflow's artifact viewer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsearch.errors import UserError

#: Gate letters in words (the cells' ``gate_names``), and which are states rather than gates.
GATE_WORDS = {"i": "input gate", "f": "forget gate", "o": "output gate", "g": "candidate (cell input)",
              "c": "cell state", "h": "hidden state", "r": "reset gate", "z": "update gate",
              "n": "candidate (new state)"}
STATES = ("c", "h")
CANDIDATES = ("g", "n")
#: Values each clampable gate is fixed to.
CLAMP_TO = ("0", "1", "mean")


@dataclass
class LayerTrace:
    """One layer and direction over one sequence: ``gates`` name → (units, steps)."""

    layer: int
    direction: str
    cell: str
    gates: dict[str, np.ndarray]
    mean_abs_hidden: np.ndarray


@dataclass
class ClampEffect:
    """The prediction with one gate of one layer fixed at every step."""

    layer: int
    direction: str
    gate: str
    to: str
    output: np.ndarray
    change: float
    text: str


@dataclass
class Explanation:
    """Everything the explain page shows for one sequence (see the module doc)."""

    key: str
    truth: Any
    inputs: np.ndarray
    channels: list[str]
    patch: int
    step_ends: np.ndarray
    per_step: np.ndarray
    output: np.ndarray
    output_names: list[str]
    prediction: str
    layers: list[LayerTrace] = field(default_factory=list)
    clamps: list[ClampEffect] = field(default_factory=list)


def _units(out: np.ndarray, prep: Any, scale: tuple[float, float] | None) -> np.ndarray:
    """Model outputs (N, O) → probabilities (classification) or values in the target's units."""
    if prep.classes is not None:
        z = np.exp(out - out.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    if scale is None:
        return out * prep.target_std + prep.target_mean
    return out * scale[1] + scale[0]


def _describe(values: np.ndarray, names: list[str], prep: Any) -> str:
    if prep.classes is not None:
        k = int(values.argmax())
        return f"{names[k]} ({values[k]:.2f})"
    return ", ".join(f"{v:.3g}" for v in values[:4]) + (" …" if len(values) > 4 else "")


def pick_member(model: Any, member: int | None = None) -> Any:
    """A single ``SequenceModel``: the model itself, or an ensemble's member (default: the heaviest)."""
    members = getattr(model, "members", None)
    if members is None:
        if member not in (None, 0):
            raise UserError(f"--member {member}: the model is not an ensemble")
        return model
    if member is None:
        return members[int(np.argmax(model.weights))]
    if not 0 <= member < len(members):
        raise UserError(f"--member {member}: the ensemble has members 0 to {len(members) - 1}")
    return members[member]


def explain_sequences(model: Any, prep: Any, x: np.ndarray, lengths: np.ndarray, keys: np.ndarray,
                      scale: tuple[np.ndarray, np.ndarray] | None = None, truth: dict[str, Any] | None = None,
                      channels: list[str] | None = None, clamps: bool = True) -> list[Explanation]:
    """Explain each sequence of a padded batch ``x`` (N, T, F) with ``model`` (a ``SequenceModel``)."""
    import torch

    model.eval()
    names = [str(c) for c in prep.classes] if prep.classes is not None else (
        ["value"] if model.spec.n_outputs == 1 else [f"step {k + 1}" for k in range(model.spec.n_outputs)])
    out = []
    for n in range(len(x)):
        length = int(lengths[n])
        xs = torch.from_numpy(np.ascontiguousarray(x[n:n + 1, :length])).float()
        sc = None if scale is None else (float(scale[0][n]), float(scale[1][n]))
        out.append(_explain_one(model, prep, xs, str(keys[n]), sc, (truth or {}).get(str(keys[n])), names,
                                channels or [f"x{k}" for k in range(x.shape[2])], clamps))
    return out


def _explain_one(model: Any, prep: Any, xs: Any, key: str, scale: tuple[float, float] | None, truth: Any,
                 names: list[str], channels: list[str], clamps: bool) -> Explanation:
    import torch

    from cellsearch.stack import reverse_padded

    p, length = model.spec.patch, xs.shape[1]
    with torch.no_grad():
        steps = -(-length // p)
        ends = np.minimum((np.arange(steps) + 1) * p, length)
        prefix = torch.from_numpy(ends.astype(np.int64))
        per_step = _units(model(xs.expand(steps, -1, -1), prefix).numpy(), prep, scale)
        final = per_step[-1]
        h, lens = model.prepare(xs, torch.tensor([length]))
        h = h.transpose(0, 1)  # time-major, as the cells read it
        layers: list[LayerTrace] = []
        cells = []
        for k, (layer, spec) in enumerate(zip(model.stack.layers, model.stack.specs)):
            for direction, cell in (("forward", layer.fwd), ("backward", layer.bwd)):
                if cell is None:
                    continue
                seq = h if direction == "forward" else reverse_padded(h, lens)
                tr = cell.trace(seq)
                if direction == "backward":
                    tr = {g: reverse_padded(v, lens) for g, v in tr.items()}
                gates = {g: v[:, 0].T.numpy() for g, v in tr.items()}
                layers.append(LayerTrace(k, direction, spec.cell, gates, np.abs(gates["h"]).mean(axis=0)))
                cells.append((k, direction, cell, gates))
            h = layer(h, lens, None)
        effects = _clamp_effects(model, prep, xs, scale, final, names, cells) if clamps else []
    return Explanation(key=key, truth=truth, inputs=xs[0].numpy(), channels=channels, patch=p, step_ends=ends,
                       per_step=per_step, output=final, output_names=names,
                       prediction=_describe(final, names, prep), layers=layers, clamps=effects)


def _clamp_effects(model: Any, prep: Any, xs: Any, scale: Any, base: np.ndarray, names: list[str],
                   cells: list[tuple[int, str, Any, dict[str, np.ndarray]]]) -> list[ClampEffect]:
    """Every clampable gate of every layer fixed to 0, 1 and its mean; ranked by the change."""
    target = int(base.argmax()) if prep.classes is not None else None
    effects = []
    for k, direction, cell, gates in cells:
        for gate in cell.clampable:
            for to in CLAMP_TO:
                value = gates[gate].mean(axis=1) if to == "mean" else float(to)
                with cell.clamped({gate: value}):
                    out = _units(model(xs).numpy(), prep, scale)[0]
                where = f"{GATE_WORDS[gate]} of layer {k + 1}" + (f" ({direction})" if direction != "forward" or
                                                                   model.stack.specs[k].bidirectional else "")
                if target is not None:
                    change = float(out[target] - base[target])
                    text = (f"{where} clamped to {to}: probability of {names[target]} "
                            f"{'falls' if change < 0 else 'rises'} from {base[target]:.2f} to {out[target]:.2f}")
                else:
                    change = float(np.mean(out - base))
                    text = (f"{where} clamped to {to}: prediction moves from {_describe(base, names, prep)} to "
                            f"{_describe(out, names, prep)}")
                effects.append(ClampEffect(k, direction, gate, to, out, change, text))
    return sorted(effects, key=lambda e: -abs(e.change))


def _choose(keys: np.ndarray, probs: np.ndarray, prep: Any, wanted: list[str] | None, limit: int) -> list[int]:
    """Which sequences to explain: the ones asked for, else one per predicted class (the most
    confident of each), else the most and least confident (or highest and lowest value)."""
    if wanted:
        index = {str(k): n for n, k in enumerate(keys)}
        missing = [w for w in wanted if w not in index]
        if missing:
            shown = ", ".join(map(str, keys[:5])) + (" …" if len(keys) > 5 else "")
            raise UserError(f"--sequence {missing[0]}: no such sequence in the data (there are: {shown})")
        return [index[w] for w in wanted]
    if prep.classes is not None:
        label, conf = probs.argmax(axis=1), probs.max(axis=1)
        picks = [int(np.flatnonzero(label == c)[conf[label == c].argmax()]) for c in np.unique(label)]
        picks += [int(conf.argmin())]
        return list(dict.fromkeys(picks))[:limit]
    v = probs.mean(axis=1)
    return list(dict.fromkeys([int(v.argmax()), int(v.argmin()), 0]))[:limit]


def explain(model_dir: str | Path, data: str | Path | Any, sequences: list[str] | None = None,
            member: int | None = None, limit: int = 4, max_steps: int = 1000) -> list[Explanation]:
    """Explain an exported bundle on sequences of a CSV (or DataFrame) in its training layout.

    Args:
        model_dir: a directory written by ``cellsearch export``.
        data: the CSV path or a DataFrame; the target column may be there (it is shown as the truth).
        sequences: the keys (sequence ids, or series for forecasting) to explain; default: a few
            chosen as ``_choose`` says.
        member: for an ensemble, which member (default: the heaviest-weighted).
        limit: at most this many sequences by default.
        max_steps: longer sequences are explained on their last ``max_steps`` steps.

    Returns:
        One ``Explanation`` per sequence, with the arrays the page draws.
    """
    import pandas as pd

    from cellsearch.export import load
    from cellsearch.predict import transform

    predictor = load(model_dir)
    prep = predictor.prep
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        where = str(path)
    else:
        df, where = data, "data"
    inputs = transform(df, prep, where)
    probs = _units(predictor.raw_outputs(inputs.x, inputs.lengths), prep, None) if prep.classes is not None else \
        predictor.raw_outputs(inputs.x, inputs.lengths)
    picks = _choose(inputs.keys, probs, prep, sequences, limit)
    x, lengths = inputs.x[picks], inputs.lengths[picks].copy()
    if x.shape[1] > max_steps:  # keep each sequence's last max_steps real steps
        cut = np.zeros((len(picks), max_steps, x.shape[2]), dtype=x.dtype)
        for n, length in enumerate(lengths):
            keep = min(int(length), max_steps)
            cut[n, :keep] = x[n, int(length) - keep:int(length)]
            lengths[n] = keep
        x = cut
    scale = None if inputs.scale is None else (inputs.scale[0][picks], inputs.scale[1][picks])
    truth = None
    if prep.task != "forecasting" and prep.id_col and prep.target in df.columns and prep.id_col in df.columns:
        truth = {str(k): v for k, v in df.groupby(prep.id_col, sort=False)[prep.target].first().items()}
    channels = [str(c) for c in (prep.inputs or prep.features or [])]
    if len(channels) != x.shape[2]:
        channels = [f"x{k}" for k in range(x.shape[2])]
    return explain_sequences(pick_member(predictor.model, member), prep, x, lengths, inputs.keys[picks], scale,
                             truth, channels)
