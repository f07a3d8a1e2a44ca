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
  prediction; where the steps are words (text), the strongest clamps also name the words whose
  effect on the prediction (the change as each word is read) the gate carried.

Where the layout names its steps (``Layout.step_labels``: a document's tokens), the page's x axis
and hover show them.

``write_html`` turns them into one self-contained interactive page (plotly, its JavaScript inlined:
it opens offline and inside MLflow's artifact viewer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsearch.errors import UserError
from cellsearch.predict import to_units
from cellsearch.tasks import get_task

#: The longest stretch of a sequence ``explain`` draws (its last steps), and the prefixes whose
#: prediction it computes (evenly spaced; their input steps per batch).
MAX_STEPS = 5000
MAX_PREFIXES = 400
PREFIX_BATCH_STEPS = 200_000
#: Values each clampable gate is fixed to.
CLAMP_TO = ("0", "1", "mean")
#: Where steps are words: the strongest clamps whose per-word effects are computed, and the words named.
WORD_CLAMPS = 3
WORDS_NAMED = 5


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
    #: Text: the words whose effect on the prediction the clamp changed most, with that change.
    words: list[tuple[str, float]] = field(default_factory=list)


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
    probabilities: bool = False
    layers: list[LayerTrace] = field(default_factory=list)
    clamps: list[ClampEffect] = field(default_factory=list)
    #: What each input step is (text: its token), or ``None`` (steps are numbered).
    step_labels: list[str] | None = None


def _describe(values: np.ndarray, names: list[str], prep: Any) -> str:
    if prep.classes is not None:
        k = int(values.argmax())
        return f"{names[k]} ({values[k]:.2f})"
    return ", ".join(f"{v:.3g}" for v in values[:4]) + (" …" if len(values) > 4 else "")


def model_steps(model: Any, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inputs as the model reads them step by step (``SequenceModel.resequence``: a character-level
    text model's characters), so that every panel's x axis is the recurrent stack's steps."""
    import torch

    with torch.no_grad():
        xs, ls = model.resequence(torch.from_numpy(x), torch.from_numpy(lengths.astype(np.int64)))
    return xs.numpy().astype(x.dtype), ls.numpy().astype(lengths.dtype)


def pick_member(model: Any, member: int | None = None) -> Any:
    """A single ``SequenceModel``: the model itself, or an ensemble's network member (default: the
    heaviest network)."""
    members = getattr(model, "members", None)
    if members is None:
        if member not in (None, 0):
            raise UserError(f"--member {member}: the model is not an ensemble")
        return model
    networks = model.networks  # a reference member has no gates to show
    if member is None:
        return max(networks, key=lambda km: model.weights[km[0]])[1]
    if not 0 <= member < len(members):
        raise UserError(f"--member {member}: the ensemble has members 0 to {len(members) - 1}")
    if all(k != member for k, _ in networks):
        raise UserError(f"--member {member}: that member is a reference (no gates); networks: "
                        f"{', '.join(str(k) for k, _ in networks)}")
    return members[member]


def explain_sequences(model: Any, prep: Any, x: np.ndarray, lengths: np.ndarray, keys: np.ndarray,
                      scale: tuple[np.ndarray, np.ndarray] | None = None, truth: dict[str, Any] | None = None,
                      channels: list[str] | None = None, clamps: bool = True,
                      labels: list[list[str] | None] | None = None) -> list[Explanation]:
    """Explain each sequence of a padded batch ``x`` (N, T, F) with ``model`` (a ``SequenceModel``);
    ``channels`` name the inputs (default: the preprocessing's model inputs, else x0, x1, ...);
    ``labels`` name each sequence's steps (text: its tokens)."""
    import torch

    model.eval()
    if channels is None:
        named = [str(c) for c in (getattr(prep, "inputs", None) or getattr(prep, "features", None) or [])]
        channels = named if len(named) == x.shape[2] else [f"x{k}" for k in range(x.shape[2])]
    names = [str(c) for c in prep.classes] if prep.classes is not None else (
        ["value"] if model.spec.n_outputs == 1 else [f"step {k + 1}" for k in range(model.spec.n_outputs)])
    out = []
    for n in range(len(x)):
        length = int(lengths[n])
        xs = torch.from_numpy(np.ascontiguousarray(x[n:n + 1, :length])).float()
        sc = None if scale is None else (float(scale[0][n]), float(scale[1][n]))
        out.append(_explain_one(model, prep, xs, str(keys[n]), sc, (truth or {}).get(str(keys[n])), names,
                                channels, clamps, labels[n] if labels is not None else None))
    return out


def _prefix_predictions(model: Any, prep: Any, xs: Any, ends: np.ndarray, scale: Any) -> np.ndarray:
    """The prediction as if the sequence ended at each of ``ends`` (in the target's terms): at most
    ``MAX_PREFIXES`` of them, evenly spaced and always the last (NaN at the others, which the plot
    joins), in batches of at most ``PREFIX_BATCH_STEPS`` input steps — memory and time bounded
    however long the sequence."""
    import torch

    picks = np.unique(np.linspace(0, len(ends) - 1, min(len(ends), MAX_PREFIXES)).round().astype(int))
    chunk = max(1, PREFIX_BATCH_STEPS // max(1, xs.shape[1]))
    outs = []
    for k in range(0, len(picks), chunk):
        part = ends[picks[k:k + chunk]]
        longest = int(part.max())
        batch = xs[:, :longest].expand(len(part), -1, -1)
        outs.append(model(batch, torch.from_numpy(part.astype(np.int64))).numpy())
    values = to_units(np.concatenate(outs), prep, scale)
    per_step = np.full((len(ends), values.shape[1]), np.nan, dtype=np.float64)
    per_step[picks] = values
    return per_step


def _explain_one(model: Any, prep: Any, xs: Any, key: str, scale: tuple[float, float] | None, truth: Any,
                 names: list[str], channels: list[str], clamps: bool, labels: list[str] | None = None
                 ) -> Explanation:
    import torch

    from cellsearch.stack import reverse_padded

    p, length = model.spec.patch, xs.shape[1]
    with torch.no_grad():
        steps = -(-length // p)
        ends = np.minimum((np.arange(steps) + 1) * p, length)
        per_step = _prefix_predictions(model, prep, xs, ends, scale)
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
        if labels is not None:
            _word_effects(model, prep, xs, scale, ends, per_step, labels, effects, cells)
    read = model.inputs.read_channels(len(channels))
    return Explanation(key=key, truth=truth, inputs=xs[0].numpy()[:, read], channels=[channels[k] for k in read],
                       patch=p, step_ends=ends,
                       per_step=per_step, output=final, output_names=names, probabilities=prep.classes is not None,
                       prediction=_describe(final, names, prep), layers=layers, clamps=effects, step_labels=labels)


def word_effects(per_step: np.ndarray, output: int) -> np.ndarray:
    """Each step's effect on output ``output``: how the prediction changes as it is read (the first
    step: from the prediction after it alone — nothing is read before it). Steps whose prefix was not
    computed (``_prefix_predictions`` spaces them on long sequences) share the change of their run."""
    curve = per_step[:, output]
    known = np.flatnonzero(np.isfinite(curve))
    filled = np.interp(np.arange(len(curve)), known, curve[known]) if len(known) else np.zeros(len(curve))
    return np.diff(np.r_[filled[0], filled])


def _word_effects(model: Any, prep: Any, xs: Any, scale: Any, ends: np.ndarray, base: np.ndarray,
                  labels: list[str], effects: list[ClampEffect], cells: list[tuple[int, str, Any, Any]]) -> None:
    """For the ``WORD_CLAMPS`` strongest clamps: the words (steps, by ``labels``) whose effect on the
    predicted output changed most under the clamp, named in ``ClampEffect.words`` and its text."""
    target = int(np.nan_to_num(base[-1]).argmax()) if prep.classes is not None else 0
    by_cell = {(k, d): cell for k, d, cell, _ in cells}
    gates = {(k, d): g for k, d, _, g in cells}
    before = word_effects(base, target)
    for e in effects[:WORD_CLAMPS]:
        cell = by_cell[(e.layer, e.direction)]
        with cell.clamped({e.gate: _clamp_value(gates[(e.layer, e.direction)][e.gate], e.to)}):
            after = word_effects(_prefix_predictions(model, prep, xs, ends, scale), target)
        carried = before - after  # the part of each word's effect that the gate carried
        top = np.argsort(-np.abs(carried))[:WORDS_NAMED]
        e.words = [(_step_words(labels, ends, int(j)), float(carried[j])) for j in top if abs(carried[j]) > 1e-4]
        if e.words:
            e.text += "; words whose effect it carried: " + ", ".join(f"{w!r} ({c:+.2f})" for w, c in e.words)


def _clamp_value(trace: np.ndarray, to: str) -> Any:
    """What a gate is fixed to (``CLAMP_TO``): 0, 1, or each unit's mean over the sequence (``trace``:
    the gate's (units, steps) values as trained)."""
    return trace.mean(axis=1) if to == "mean" else float(to)


def _step_words(labels: list[str], ends: np.ndarray, j: int) -> str:
    """The words a model step read (one, or a patch of several)."""
    start = int(ends[j - 1]) if j else 0
    return " ".join(labels[start:int(ends[j])])


def _clamp_effects(model: Any, prep: Any, xs: Any, scale: Any, base: np.ndarray, names: list[str],
                   cells: list[tuple[int, str, Any, dict[str, np.ndarray]]]) -> list[ClampEffect]:
    """Every clampable gate of every layer fixed to 0, 1 and its mean; ranked by the change."""
    target = int(base.argmax()) if prep.classes is not None else None
    effects = []
    for k, direction, cell, gates in cells:
        for gate in cell.clampable:
            for to in CLAMP_TO:
                with cell.clamped({gate: _clamp_value(gates[gate], to)}):
                    out = to_units(model(xs).numpy(), prep, scale)[0]
                side = direction != "forward" or model.stack.specs[k].bidirectional
                where = f"{cell.gate_words.get(gate, gate)} of layer {k + 1}" + (f" ({direction})" if side else "")
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
        max_steps: longer sequences are explained on their last ``max_steps`` steps (at most
            ``MAX_STEPS``: the page draws every gate of every unit at every step).

    Returns:
        One ``Explanation`` per sequence, with the arrays the page draws.
    """
    from cellsearch.predict import load, read_input, transform

    if not 1 <= max_steps <= MAX_STEPS:
        raise UserError(f"--max-steps {max_steps}: explain draws 1 to {MAX_STEPS:,} steps of a sequence (every "
                        f"gate of every unit at every step); pass --max-steps {MAX_STEPS} or less")
    predictor = load(model_dir)
    prep = predictor.prep
    if isinstance(data, (str, Path)):
        df, where = read_input(data, prep), str(data)
    else:
        df, where = data, "data"
    inputs = transform(df, prep, where)
    probs = to_units(predictor.raw_outputs(inputs.x, inputs.lengths), prep, None) if prep.classes is not None else \
        predictor.raw_outputs(inputs.x, inputs.lengths)
    picks = _choose(inputs.keys, probs, prep, sequences, limit)
    chosen = pick_member(predictor.model, member)
    x, lengths = model_steps(chosen, inputs.x[picks], inputs.lengths[picks].copy())
    if x.shape[1] > max_steps:  # keep each sequence's last max_steps real steps
        cut = np.zeros((len(picks), max_steps, x.shape[2]), dtype=x.dtype)
        for n, length in enumerate(lengths):
            keep = min(int(length), max_steps)
            cut[n, :keep] = x[n, int(length) - keep:int(length)]
            lengths[n] = keep
        x = cut
    scale = None if inputs.scale is None else (inputs.scale[0][picks], inputs.scale[1][picks])
    truth = None
    if get_task(prep.task).whole_sequences and prep.id_col and prep.target in df.columns and prep.id_col in df.columns:
        truth = {str(k): v for k, v in df.groupby(prep.id_col, sort=False)[prep.target].first().items()}
    from cellsearch.data import get_layout

    layout = get_layout(prep.layout)
    labels = [layout.step_labels(prep, x[n], int(lengths[n])) for n in range(len(picks))]
    return explain_sequences(chosen, prep, x, lengths, inputs.keys[picks], scale,
                             truth, labels=labels if any(v is not None for v in labels) else None)


def _sequence_figure(e: Explanation, title: str) -> Any:
    """One tall figure: inputs, the per-step prediction, every layer's gates and states as heatmaps,
    the mean absolute hidden state per layer; a slider and a play button move a cursor over the
    steps of all panels at once."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from cellsearch.cells import CELLS

    words = e.step_labels
    panels = [("inputs", "Tokens, as the model reads them" if words else "Input channels (as the model reads them)"),
              ("pred", "Prediction if the text ended here" if words else "Prediction if the sequence ended here")]
    for tr in e.layers:
        side = f" ({tr.direction})" if tr.direction != "forward" or any(
            o.layer == tr.layer and o.direction == "backward" for o in e.layers) else ""
        cell = CELLS[tr.cell]
        for g in tr.gates:
            kind = cell.gate_kinds.get(g, "gate")
            panels.append((("heat", tr, g), f"Layer {tr.layer + 1} {tr.cell}{side}: {cell.gate_words.get(g, g)} "
                                            f"[{kind}]"))
    panels.append(("mag", "Mean |hidden state| per step, each layer"))
    heights = [1.3 if p[0] in ("inputs", "pred", "mag") else 1.0 for p in panels]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.35 / len(panels),
                        subplot_titles=[p[1] for p in panels], row_heights=heights)
    t_raw = np.arange(1, len(e.inputs) + 1)
    read = [words[int(end) - 1] for end in e.step_ends] if words else None  # the token each model step ends on
    if words:  # the text itself, one token per tick along the shared axis (zoom in to read a long one)
        fig.add_trace(go.Scatter(x=t_raw, y=np.zeros(len(words)), mode="markers", marker=dict(size=5, color="#888"),
                                 text=words, name="tokens", showlegend=False,
                                 hovertemplate="token %{x}: %{text}<extra></extra>"), row=1, col=1)
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=1)
        fig.update_xaxes(tickmode="array", tickvals=t_raw, ticktext=words, tickangle=-60, showticklabels=True,
                         tickfont=dict(size=11), row=1, col=1)
    else:
        for c in range(e.inputs.shape[1]):
            fig.add_trace(go.Scatter(x=t_raw, y=e.inputs[:, c], mode="lines", name=e.channels[c], legendgroup="in",
                                     legendgrouptitle_text="inputs" if c == 0 else None), row=1, col=1)
    for j, name in enumerate(e.output_names[:10]):
        fig.add_trace(go.Scatter(x=e.step_ends, y=e.per_step[:, j], mode="lines+markers", marker_size=4,
                                 connectgaps=True, name=name, legendgroup="out", text=read,
                                 hovertemplate=(f"after %{{x}} tokens (…%{{text}}): {name} %{{y:.3f}}<extra></extra>"
                                                if words else None),
                                 legendgrouptitle_text="prediction" if j == 0 else None), row=2, col=1)
    for r, (kind, _) in enumerate(panels, start=1):
        if isinstance(kind, tuple):
            _, tr, g = kind
            z = tr.gates[g]
            state = CELLS[tr.cell].gate_kinds.get(g, "gate") != "gate"
            lim = float(np.abs(z).max()) or 1.0
            lo, hi = fig.layout[f"yaxis{r if r > 1 else ''}"].domain  # the colour bar beside its own panel
            fig.add_trace(go.Heatmap(
                z=z, x=e.step_ends, y=np.arange(1, z.shape[0] + 1), colorscale="RdBu",
                zmin=-lim if state else 0.0, zmax=lim if state else 1.0, showscale=True,
                colorbar=dict(len=hi - lo, y=(lo + hi) / 2, yanchor="middle", thickness=12,
                              title=dict(text="value" if state else "open", side="right"),
                              tickvals=None if state else [0, 0.5, 1],
                              ticktext=None if state else ["0 shut", "0.5", "1 open"]),
                text=[read] * z.shape[0] if words else None,
                hovertemplate=("token %{x} (%{text})" if words else "step %{x}") + "<br>unit %{y}<br>%{z:.3f}"
                              "<extra></extra>"), row=r, col=1)
            fig.update_yaxes(title_text="unit", row=r, col=1)
    for tr in e.layers:
        fig.add_trace(go.Scatter(x=e.step_ends, y=tr.mean_abs_hidden, mode="lines",
                                 name=f"layer {tr.layer + 1} {tr.cell}" + (
                                     "" if tr.direction == "forward" else " (backward)"),
                                 legendgroup="mag", legendgrouptitle_text="mean |h|" if tr is e.layers[0] else None),
                      row=len(panels), col=1)
    fig.update_xaxes(title_text="token" if words else "step", row=len(panels), col=1)
    # the cursor: a vertical line over every panel, moved by the slider and the play button
    def cursor(x: float) -> list[dict[str, Any]]:
        return [dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1,
                     line=dict(color="black", width=1.5, dash="dot"))]

    def where(k: int, x: float) -> str:
        return (f"{title} — token {int(x)} / {len(e.inputs)}: {read[k]!r}" if words else
                f"{title} — step {int(x)} / {len(e.inputs)}")

    frames = [go.Frame(name=str(k), layout=dict(shapes=cursor(float(x)), title_text=where(k, x)))
              for k, x in enumerate(e.step_ends)]
    fig.frames = frames
    anim = dict(frame=dict(duration=250, redraw=True), mode="immediate", transition=dict(duration=0))
    fig.update_layout(
        title_text=where(len(e.step_ends) - 1, e.step_ends[-1]), shapes=cursor(float(e.step_ends[-1])),
        height=max(700, 190 * len(panels)), margin=dict(l=70, r=40, t=90, b=110), legend=dict(x=1.08, y=1),
        updatemenus=[dict(type="buttons", x=0.0, y=-0.02, yanchor="top", xanchor="left", direction="left",
                          buttons=[dict(label="▶ play", method="animate", args=[None, {**anim, "fromcurrent": True}]),
                                   dict(label="❚❚ pause", method="animate",
                                        args=[[None], dict(frame=dict(duration=0, redraw=False),
                                                           mode="immediate")])])],
        sliders=[dict(active=len(frames) - 1, x=0.2, len=0.78, y=-0.02, yanchor="top",
                      currentvalue=dict(prefix="Current step: "),
                      steps=[dict(label=f"{int(x)} / {len(e.inputs)}", method="animate",
                                  args=[[str(k)], {**anim, "frame": dict(duration=0, redraw=True)}])
                             for k, x in enumerate(e.step_ends)])])
    return fig


def _clamp_figure(e: Explanation) -> Any:
    """Output before and after each clamp; a drop-down picks the clamp (ranked by effect)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = e.output_names[:10]
    for n, c in enumerate(e.clamps):
        fig.add_trace(go.Bar(x=names, y=e.output[:10], name="as trained", marker_color="#888", visible=n == 0))
        fig.add_trace(go.Bar(x=names, y=c.output[:10], name="clamped", marker_color="#c0392b", visible=n == 0))
    buttons = []
    for n, c in enumerate(e.clamps):
        visible = [k // 2 == n for k in range(2 * len(e.clamps))]
        buttons.append(dict(label=c.text.split(":")[0], method="update",
                            args=[{"visible": visible}, {"title.text": c.text}]))
    fig.update_layout(title_text=e.clamps[0].text if e.clamps else "no clampable gates", barmode="group",
                      height=420, margin=dict(t=110),
                      yaxis_title="probability" if e.probabilities else "prediction",
                      updatemenus=[dict(buttons=buttons, x=0, y=1.22, xanchor="left", yanchor="top")]
                      if buttons else [])
    return fig


def write_html(explanations: list[Explanation], path: str | Path, title: str = "cellsearch explain",
               about: str = "") -> Path:
    """One self-contained page (plotly's JavaScript inlined) for the explanations."""
    import html

    from cellsearch.pages import html_page

    toc, parts = [], []
    for n, e in enumerate(explanations):
        truth = f"{e.truth:.4g}" if isinstance(e.truth, float) else e.truth
        label = f"sequence {e.key}" + (f" — true {truth}" if e.truth is not None else "") + \
            f" — predicted {e.prediction}"
        toc.append(f'<li><a href="#s{n}">{html.escape(label)}</a></li>')
        rows = "".join(f"<tr><td>{k + 1}</td><td>{html.escape(c.text)}</td><td>{c.change:+.3g}</td></tr>"
                       for k, c in enumerate(e.clamps[:15]))
        parts += [f'<section id="s{n}"><h2>{html.escape(label)}</h2>', _sequence_figure(e, f"Sequence {e.key}"),
                  "<h3>Gate manipulation</h3><p>Each gate of each layer fixed to 0, to 1 or to its own mean over "
                  "this sequence, at every step, inside the cell (the weights are untouched); the rest of the "
                  "model runs as trained. Pick a clamp in the drop-down; the table ranks them by how far they "
                  "move the prediction.</p>", _clamp_figure(e),
                  f"<table><tr><th>#</th><th>clamp</th><th>change</th></tr>{rows}</table></section>"]
    guide = ("<p><b>Reading this page.</b> Gates are fractions between 0 (shut, red) and 1 (open, blue): "
             "an <i>input gate</i> near 1 writes the new candidate into the cell, a <i>forget gate</i> near 1 "
             "keeps the cell's memory (near 0 wipes it), an <i>output gate</i> near 1 shows the cell to the "
             "next layer; in a GRU the <i>update gate</i> near 1 keeps the old state and the <i>reset gate</i> "
             "near 0 ignores it when forming the candidate. States and candidates (marked so) are signed "
             "values: blue positive, red negative. The cursor follows the slider (or ▶ play) through the "
             "steps; the second panel shows the prediction the model would make if the sequence ended at "
             "each step — where it settles is where the model made up its mind.</p>")
    head = f"<h1>{html.escape(title)}</h1><p>{html.escape(about)}</p>{guide}<ul>{''.join(toc)}</ul>"
    return html_page(Path(path), title, [head, *parts])


def explain_checkpoint(path: str | Path, checkpoint: str | Path, dataset: Any, limit: int = 4,
                       max_steps: int = 500, title: str = "The chosen model, explained") -> Path | None:
    """The explain page of a trained checkpoint on a few of the search's own sequences (validation,
    else training): what a search records for its chosen model. ``None`` when there is nothing to show."""
    import torch

    from cellsearch.model import load_checkpoint

    split = dataset.splits["val"] if len(dataset.splits["val"]) else dataset.splits["train"]
    if not len(split) or not Path(checkpoint).exists():
        return None
    model = pick_member(load_checkpoint(checkpoint)[0])
    model.eval()
    prep = dataset.preprocessing
    n = min(len(split), 256)
    steps = min(split.x.shape[1], max_steps)  # a long sequence: its first steps
    x, lengths = split.x[:n, :steps], np.minimum(split.lengths[:n], steps).astype(np.int64)
    scale = None if split.origin is None else (split.origin[:n, 0], split.origin[:n, 1])
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(lengths)).numpy()
    picks = _choose(split.keys[:n], to_units(out, prep, None) if prep.classes is not None else out, prep, None, limit)
    keys = np.asarray([str(k) for k in split.keys[:n]])
    truth = None
    task = get_task(prep.task)
    if task.whole_sequences:
        y = np.asarray(split.y[:n])
        truth = {keys[i]: task.truth(y[i], prep) for i in picks}
    explanations = explain_sequences(model, prep, x[picks], lengths[picks], keys[picks],
                                     None if scale is None else (scale[0][picks], scale[1][picks]), truth)
    return write_html(explanations, path, title=title,
                      about=f"{model.spec.arch}, on {len(explanations)} of the search's own sequences")
