"""The pictures that explain a search: Pareto front, parameter importance, which cell where, gates.

All are PNG (matplotlib, headless Agg backend) plus JSON of the numbers behind them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from cellsearch.costs import COSTS
from cellsearch.files import dumps


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plotted(references: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The references that have a cost of the study's kind (a measured latency has none)."""
    return [r for r in references or [] if r.get("cost") is not None and math.isfinite(r["cost"])]


def pareto_plot(path: Path, points: list[dict[str, Any]], front: list[dict[str, Any]],
                chosen: dict[str, Any] | None, metric: str, cost: str,
                references: list[dict[str, Any]] | None = None) -> Path:
    """Score against cost for every finished trial (squares: ensembles of trials); the front
    highlighted and labelled, with each member's spread over folds as an error bar; the simple
    reference models as black diamonds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    singles = [p for p in points if p.get("kind", "trial") == "trial"]
    groups = [p for p in points if p.get("kind") == "ensemble"]
    ax.scatter([p["cost"] for p in singles], [p["score"] for p in singles], s=18, c="#9aa5b1",
               label="trials", zorder=2)
    if groups:
        ax.scatter([p["cost"] for p in groups], [p["score"] for p in groups], s=30, marker="s", c="#e0a458",
                   label="ensembles of trials", zorder=2)
    fr = sorted(front, key=lambda p: p["cost"])
    ax.plot([p["cost"] for p in fr], [p["score"] for p in fr], "-", color="#d1495b", label="Pareto front", zorder=3)
    for kind, marker in (("trial", "o"), ("ensemble", "s")):
        members = [p for p in fr if p.get("kind", "trial") == kind]
        ax.scatter([p["cost"] for p in members], [p["score"] for p in members], marker=marker, s=40,
                   c="#d1495b", zorder=3)
    spread = [p.get("spread") or 0.0 for p in fr]
    if any(spread):
        ax.errorbar([p["cost"] for p in fr], [p["score"] for p in fr], yerr=spread, fmt="none",
                    ecolor="#d1495b", alpha=0.5, capsize=3, label="spread over folds", zorder=3)
    for p in fr:
        label = p["arch"] if p.get("kind", "trial") == "trial" else f"{p['name']}: {p['arch']}"
        if p.get("test_score") is not None:
            label += f" (test {p['test_score']:.3g})"
        right = p is fr[-1] and len(fr) > 1  # the most expensive member: label to its left, inside the frame
        ax.annotate(label, (p["cost"], p["score"]), textcoords="offset points", xytext=(-8, -12) if right else (5, 5),
                    ha="right" if right else "left", fontsize=7)
    if chosen:
        ax.scatter([chosen["cost"]], [chosen["score"]], s=160, facecolors="none", edgecolors="#2e86ab",
                   linewidths=2, label=f"chosen: {chosen['arch']}", zorder=4)
    refs = _plotted(references)
    if refs:
        ax.scatter([r["cost"] for r in refs], [r["score"] for r in refs], marker="D", s=50, c="#222222",
                   label="references (not networks)", zorder=5)
        for r in refs:
            ax.annotate(r["arch"], (r["cost"], r["score"]), textcoords="offset points", xytext=(6, -10), fontsize=7)
    everything = [p for p in [*points, *refs] if math.isfinite(p["cost"])]
    if everything and min(p["cost"] for p in everything) > 0:
        from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        lo, hi = min(p["cost"] for p in everything), max(p["cost"] for p in everything)
        ax.set_xlim(lo / 1.6, hi * 1.6)  # padding, so no point sits on the frame
        # Labels at 1, 2 and 5 of each decade over a narrow range, at each decade over a wide one.
        narrow = math.log10(hi * 1.6) - math.log10(lo / 1.6) <= 2.5
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0, 3.0)))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if everything:
        s_lo, s_hi = min(p["score"] for p in everything), max(p["score"] for p in everything)
        pad = 0.08 * (s_hi - s_lo) or 0.05 * abs(s_hi) or 0.05
        ax.set_ylim(s_lo - pad, s_hi + pad)
    ax.set_xlabel(COSTS[cost].label if cost in COSTS else cost)
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _eng(v: float) -> str:
    """1.5k, 20M: a tick label."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def pareto_html(path: Path, points: list[dict[str, Any]], front: list[dict[str, Any]],
                chosen: dict[str, Any] | None, metric: str, cost: str,
                references: list[dict[str, Any]] | None = None) -> Path:
    """The Pareto plot as one self-contained HTML page (inline SVG): hover a point for its trial,
    architecture, score and cost. No JavaScript library, opens anywhere (MLflow shows it inline)."""
    import html

    w, h, m = 900, 560, 70
    refs = _plotted(references)
    costs = [max(p["cost"], 1e-12) for p in [*points, *refs]] or [1.0]
    scores = [p["score"] for p in [*points, *refs]] or [0.0]
    lx = math.log10
    c_lo, c_hi = lx(min(costs)) - 0.1, lx(max(costs)) + 0.1  # padding: no point on the frame
    s_pad = 0.06 * (max(scores) - min(scores)) or 0.05 * abs(max(scores)) or 0.05
    s_lo, s_hi = min(scores) - s_pad, max(scores) + s_pad

    def xy(p: dict[str, Any]) -> tuple[float, float]:
        x = m + (lx(max(p["cost"], 1e-12)) - c_lo) / (c_hi - c_lo) * (w - 2 * m)
        y = h - m - (p["score"] - s_lo) / (s_hi - s_lo) * (h - 2 * m)
        return x, y

    on_front = {p.get("name", str(p.get("trial"))) for p in front}
    items = []
    fr = sorted(front, key=lambda p: p["cost"])
    if fr:
        items.append('<polyline fill="none" stroke="#d1495b" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, fr)) + '"/>')

    def name(p: dict[str, Any]) -> str:
        return p.get("name", str(p.get("trial")))

    for p in points:
        x, y = xy(p)
        what = "ensemble " + p["name"] if p.get("kind") == "ensemble" else f"trial {p['trial']}"
        spread = f" ± {p['spread']:.2g} over folds" if p.get("spread") else ""
        test = f"\ntest {metric} {p['test_score']:.4g}" if p.get("test_score") is not None else ""
        tip = html.escape(f"{what}: {p['arch']}\n{metric} {p['score']:.4g}{spread}{test}\n{cost} {p['cost']:.4g}")
        color = "#d1495b" if name(p) in on_front else "#e0a458" if p.get("kind") == "ensemble" else "#9aa5b1"
        ring = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="#2e86ab" stroke-width="2"/>'
                if chosen and name(p) == name(chosen) else "")
        near_right = x > w - m - 0.3 * (w - 2 * m)  # label to the left, inside the frame
        label = (f'<text x="{x + (-9 if near_right else 7):.1f}" y="{y - 9:.1f}" font-size="11" '
                 f'text-anchor="{"end" if near_right else "start"}">{html.escape(p["arch"])}</text>'
                 if name(p) in on_front else "")
        mark = (f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="{color}"/>'
                if p.get("kind") == "ensemble" else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}"/>')
        items.append(f"<g><title>{tip}</title>{ring}{mark}{label}</g>")
    for r in refs:
        x, y = xy(r)
        tip = html.escape(f"reference: {r['arch']}\n{metric} {r['score']:.4g}\n{cost} {r['cost']:.4g}")
        items.append(f'<g><title>{tip}</title><rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" '
                     f'transform="rotate(45 {x:.1f} {y:.1f})" fill="#222"/><text x="{x + 9:.1f}" y="{y + 14:.1f}" '
                     f'font-size="11">{html.escape(r["arch"])}</text></g>')
    ticks = []
    for decade in range(math.floor(c_lo), math.ceil(c_hi) + 1):
        for mult in (1, 2, 5):
            v = mult * 10.0 ** decade
            if c_lo <= lx(v) <= c_hi:
                x = m + (lx(v) - c_lo) / (c_hi - c_lo) * (w - 2 * m)
                ticks.append(f'<line x1="{x:.1f}" y1="{h - m}" x2="{x:.1f}" y2="{h - m + 5}" stroke="#333"/>'
                             f'<line x1="{x:.1f}" y1="{m}" x2="{x:.1f}" y2="{h - m}" stroke="#eee"/>'
                             f'<text x="{x:.1f}" y="{h - m + 18}" font-size="11" text-anchor="middle">'
                             f"{_eng(v)}</text>")
    for k in range(6):
        v = s_lo + (s_hi - s_lo) * k / 5
        y = h - m - k / 5 * (h - 2 * m)
        ticks.append(f'<line x1="{m - 5}" y1="{y:.1f}" x2="{m}" y2="{y:.1f}" stroke="#333"/>'
                     f'<line x1="{m}" y1="{y:.1f}" x2="{w - m}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{m - 8}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:.3g}</text>')
    axes = ("".join(ticks) + f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="#333"/>'
            f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="#333"/>'
            f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">{html.escape(cost)} (log scale)</text>'
            f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">validation '
            f"{html.escape(metric)}</text>")
    page = (f"<!doctype html><meta charset='utf-8'><title>Pareto front</title><h3 style='font-family:sans-serif'>"
            f"Accuracy against compute — hover a point</h3><svg xmlns='http://www.w3.org/2000/svg' width='{w}' "
            f"height='{h}' font-family='sans-serif'>{axes}{''.join(items)}</svg>")
    path.write_text(page)
    return path


def cell_by_slot(points: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean validation score, count and median cost of the trials using each cell variant in each
    layer slot (complete trials only; ensembles have no single cell)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        if p.get("kind", "trial") != "trial":
            continue
        arch = p.get("choices", {})
        for k in range(8):
            cell = arch.get(f"l{k}_cell", arch.get("cell") if f"l{k}_hidden" in arch else None)
            if cell is None:
                continue
            acc[f"layer {k}"][cell].append((p["score"], p.get("cost")))
    return {slot: {c: {"mean": sum(v for v, _ in vals) / len(vals), "n": len(vals),
                       "cost": _median([c for _, c in vals if c is not None and math.isfinite(c)])}
                   for c, vals in cells.items()}
            for slot, cells in acc.items()}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def cell_plot(path: Path, table: dict[str, dict[str, dict[str, float]]], metric: str) -> Path:
    from cellsearch.cells import CELLS

    plt = _plt()
    slots = sorted(table)
    cells = list(CELLS)
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * max(1, len(cells)), 1.2 + 0.6 * max(1, len(slots))), dpi=110)
    grid = [[table[s].get(c, {}).get("mean", math.nan) for c in cells] for s in slots] or [[math.nan] * len(cells)]
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, s in enumerate(slots):
        for j, c in enumerate(cells):
            e = table[s].get(c)
            if e:
                cost = f"\ncost {_eng(e['cost'])}" if e.get("cost") is not None else ""
                ax.text(j, i, f"{e['mean']:.3g}{cost}\n(n={e['n']})", ha="center", va="center", fontsize=7,
                        color="w")
            else:  # untried: hatched and said so, not a blank that reads as a low score
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb"))
                ax.text(j, i, "not tried", ha="center", va="center", fontsize=7, color="#777777")
    ax.set_xticks(range(len(cells)), cells)
    ax.set_yticks(range(len(slots)), slots or ["-"])
    ax.set_title(f"Which cell where: mean validation {metric} (cost: median of those trials)", fontsize=9)
    fig.colorbar(im, ax=ax, label=f"mean validation {metric}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def importance(study: Any) -> dict[str, float]:
    """fANOVA importance of each parameter for the validation score (empty if too few trials)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=lambda t: t.values[0]))
    except Exception:  # too few distinct values, a single parameter, ...
        return {}


#: Below this many complete trials the importance plot says it is only a hint.
FEW_TRIALS = 20


def importance_plot(path: Path, imp: dict[str, float], metric: str, n_trials: int | None = None) -> Path:
    """fANOVA importances as bars; the title says how many complete trials they rest on and warns
    below ``FEW_TRIALS``."""
    plt = _plt()
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * max(1, len(items))), dpi=110)
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2e86ab")
    ax.set_xlabel(f"fANOVA importance for validation {metric}")
    title = "Parameter importance" + (f" from {n_trials} complete trials" if n_trials else "")
    if n_trials is not None and n_trials < FEW_TRIALS:
        title += f"\n(fewer than {FEW_TRIALS}: a rough hint, not a finding)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


#: What the letters of a cell's trace mean, for the gate plots' titles.
GATE_NAMES = {"i": "input gate", "f": "forget gate", "o": "output gate", "g": "candidate", "c": "cell state",
              "h": "hidden state", "r": "reset gate", "z": "update gate", "n": "candidate"}


def gates_plot(path: Path, checkpoint: str, dataset: Any, n_sequences: int = 3, max_steps: int = 200
               ) -> Path | None:
    """Gate activations over time of the chosen model on a few validation sequences: one row per
    sequence and layer, one column per gate (names spelled out), time along x, a colour bar per
    column, each sequence's true class and prediction in its row label."""
    import numpy as np
    import torch

    from cellsearch.model import EnsembleModel, load_checkpoint

    split = dataset.splits["val"] if len(dataset.splits["val"]) else dataset.splits["train"]
    if not len(split) or not Path(checkpoint).exists():
        return None
    model, _ = load_checkpoint(checkpoint)
    if isinstance(model, EnsembleModel):  # a cross-validated trial: its first fold's model
        model = model.members[0]
    model.eval()
    k = min(n_sequences, len(split))
    steps = min(split.x.shape[1], max_steps)  # a long sequence: its first steps, readable and quick
    x = torch.from_numpy(split.x[:k, :steps])
    lengths = torch.from_numpy(np.minimum(split.lengths[:k], steps).astype("int64"))
    with torch.no_grad():
        out = model(x, lengths).numpy()
    classes = dataset.preprocessing.classes
    if classes:
        truth = [str(classes[int(v)]) for v in np.asarray(split.y[:k])]
        guess = [str(classes[int(v)]) for v in out.argmax(axis=1)]
    else:
        truth = [f"{float(np.ravel(v)[0]):.3g}" for v in np.asarray(split.y[:k])]
        guess = [f"{float(np.ravel(v)[0]):.3g}" for v in out]
    xs, lens = model.prepare(x, lengths)  # what the stack reads (normalised, in patches)
    with torch.no_grad():
        traces = model.stack.trace(xs, lens)
    plt = _plt()
    n_cols = max(len(t) for t in traces)
    fig, axes = plt.subplots(len(traces) * k, n_cols, figsize=(2.9 * n_cols, 2.0 * len(traces) * k), dpi=100,
                             squeeze=False)
    for s in range(k):
        n = int(lens[s])
        for li, (trace, spec) in enumerate(zip(traces, model.spec.layers)):
            row = s * len(traces) + li
            for j in range(n_cols):
                ax = axes[row][j]
                if j >= len(trace):
                    ax.axis("off")
                    continue
                name = list(trace)[j]
                vals = trace[name][s, :n].T.numpy()
                lo, hi = (0, 1) if name in ("i", "f", "o", "r", "z") else (-1, 1)
                im = ax.imshow(vals, aspect="auto", cmap="magma" if lo == 0 else "coolwarm", vmin=lo, vmax=hi,
                               interpolation="nearest", extent=(-0.5, n - 0.5, vals.shape[0] - 0.5, -0.5))
                fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
                ax.set_title(GATE_NAMES.get(name, name), fontsize=8)
                ax.tick_params(labelsize=6)
                ax.set_xlabel("step" + (f" (patches of {model.spec.patch})" if model.spec.patch > 1 else ""),
                              fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"seq {s}: true {truth[s]}, predicted {guess[s]}\nlayer {li} {spec.cell} "
                                  "(units)", fontsize=7)
    fig.suptitle("The chosen model's gates over time (first fold's model, validation sequences)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def study_plots(out: Path, study: Any, points: list[dict[str, Any]], front: list[dict[str, Any]], dataset: Any,
                chosen: dict[str, Any] | None, meta: dict[str, Any],
                references: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write every study picture (and its numbers) into ``out``; returns the files."""
    metric, cost = meta.get("metric", "score"), meta.get("cost", "macs")
    files = []
    if points:
        files.append(pareto_plot(out / "pareto_front.png", points, front, chosen, metric, cost, references))
        files.append(pareto_html(out / "pareto_front.html", points, front, chosen, metric, cost, references))
        table = cell_by_slot(points)
        if table:  # empty when the space fixes every layer's cell
            (out / "cell_by_slot.json").write_text(dumps(table))
            files += [cell_plot(out / "cell_by_slot.png", table, metric), out / "cell_by_slot.json"]
        (out / "pareto_front.json").write_text(dumps(front))
        files.append(out / "pareto_front.json")
    imp = importance(study)
    if imp:
        (out / "param_importance.json").write_text(dumps(imp))
        n = sum(1 for p in points if p.get("kind", "trial") == "trial")
        files += [importance_plot(out / "param_importance.png", imp, metric, n), out / "param_importance.json"]
    if chosen and chosen.get("checkpoint"):
        g = gates_plot(out / "gates_chosen.png", chosen["checkpoint"], dataset)
        if g:
            files.append(g)
    return files
