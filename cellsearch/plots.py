"""The pictures that explain a search: Pareto front, parameter importance, which cell where, gates.

All are PNG (matplotlib, headless Agg backend) plus JSON of the numbers behind them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from cellsearch.costs import COSTS


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
    ax.plot([p["cost"] for p in fr], [p["score"] for p in fr], "-o", color="#d1495b", ms=6,
            label="Pareto front", zorder=3)
    spread = [p.get("spread") or 0.0 for p in fr]
    if any(spread):
        ax.errorbar([p["cost"] for p in fr], [p["score"] for p in fr], yerr=spread, fmt="none",
                    ecolor="#d1495b", alpha=0.5, capsize=3, label="spread over folds", zorder=3)
    for p in fr:
        label = p["arch"] if p.get("kind", "trial") == "trial" else f"{p['name']}: {p['arch']}"
        ax.annotate(label, (p["cost"], p["score"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    if chosen:
        ax.scatter([chosen["cost"]], [chosen["score"]], s=160, facecolors="none", edgecolors="#2e86ab",
                   linewidths=2, label=f"chosen: {chosen['arch']}", zorder=4)
    refs = _plotted(references)
    if refs:
        ax.scatter([r["cost"] for r in refs], [r["score"] for r in refs], marker="D", s=50, c="#222222",
                   label="references (not networks)", zorder=5)
        for r in refs:
            ax.annotate(r["arch"], (r["cost"], r["score"]), textcoords="offset points", xytext=(6, -10), fontsize=7)
    if points and min(p["cost"] for p in [*points, *refs]) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(COSTS[cost].label if cost in COSTS else cost)
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_html(path: Path, points: list[dict[str, Any]], front: list[dict[str, Any]],
                chosen: dict[str, Any] | None, metric: str, cost: str,
                references: list[dict[str, Any]] | None = None) -> Path:
    """The Pareto plot as one self-contained HTML page (inline SVG): hover a point for its trial,
    architecture, score and cost. No JavaScript library, opens anywhere (MLflow shows it inline)."""
    import html

    w, h, m = 820, 520, 60
    refs = _plotted(references)
    costs = [max(p["cost"], 1e-12) for p in [*points, *refs]] or [1.0]
    scores = [p["score"] for p in [*points, *refs]] or [0.0]
    lx = math.log10
    c_lo, c_hi = lx(min(costs)), lx(max(costs))
    s_lo, s_hi = min(scores), max(scores)
    c_hi, s_hi = (c_hi + 1e-9 if c_hi == c_lo else c_hi), (s_hi + 1e-9 if s_hi == s_lo else s_hi)

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
        tip = html.escape(f"{what}: {p['arch']}\n{metric} {p['score']:.4g}{spread}\n{cost} {p['cost']:.4g}")
        color = "#d1495b" if name(p) in on_front else "#e0a458" if p.get("kind") == "ensemble" else "#9aa5b1"
        ring = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="#2e86ab" stroke-width="2"/>'
                if chosen and name(p) == name(chosen) else "")
        label = (f'<text x="{x + 7:.1f}" y="{y - 7:.1f}" font-size="11">{html.escape(p["arch"])}</text>'
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
    axes = (f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="#333"/>'
            f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="#333"/>'
            f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">{html.escape(cost)} (log scale, '
            f"{10 ** c_lo:.3g} to {10 ** c_hi:.3g})</text>"
            f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">validation '
            f"{html.escape(metric)} ({s_lo:.4g} to {s_hi:.4g})</text>")
    page = (f"<!doctype html><meta charset='utf-8'><title>Pareto front</title><h3 style='font-family:sans-serif'>"
            f"Accuracy against compute — hover a point</h3><svg xmlns='http://www.w3.org/2000/svg' width='{w}' "
            f"height='{h}' font-family='sans-serif'>{axes}{''.join(items)}</svg>")
    path.write_text(page)
    return path


def cell_by_slot(points: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean validation score (and count) per cell variant for each layer slot."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        arch = p.get("choices", {})
        for k in range(8):
            cell = arch.get(f"l{k}_cell", arch.get("cell") if f"l{k}_hidden" in arch else None)
            if cell is None:
                continue
            acc[f"layer {k}"][cell].append(p["score"])
    return {slot: {c: {"mean": sum(v) / len(v), "n": len(v)} for c, v in cells.items()}
            for slot, cells in acc.items()}


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
                ax.text(j, i, f"{e['mean']:.3g}\n(n={e['n']})", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(cells)), cells)
    ax.set_yticks(range(len(slots)), slots or ["-"])
    ax.set_title(f"Which cell where: mean validation {metric}")
    fig.colorbar(im, ax=ax)
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


def importance_plot(path: Path, imp: dict[str, float], metric: str) -> Path:
    plt = _plt()
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * max(1, len(items))), dpi=110)
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2e86ab")
    ax.set_xlabel(f"fANOVA importance for validation {metric}")
    ax.set_title("Parameter importance")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def gates_plot(path: Path, checkpoint: str, dataset: Any, n_sequences: int = 3) -> Path | None:
    """Gate activations over time of the chosen model on a few validation sequences."""
    import torch

    from cellsearch.model import EnsembleModel, load_checkpoint

    split = dataset.splits["val"] if len(dataset.splits["val"]) else dataset.splits["train"]
    if not len(split) or not Path(checkpoint).exists():
        return None
    model, _ = load_checkpoint(checkpoint)
    if isinstance(model, EnsembleModel):  # a cross-validated trial: its first fold's model
        model = model.members[0]
    k = min(n_sequences, len(split))
    x = torch.from_numpy(split.x[:k])
    lengths = torch.from_numpy(split.lengths[:k].astype("int64"))
    x, lengths = model.prepare(x, lengths)  # what the stack reads (normalised, in patches)
    traces = model.stack.trace(x, lengths)
    plt = _plt()
    n_cols = max(len(t) for t in traces)
    fig, axes = plt.subplots(len(traces) * k, n_cols, figsize=(2.4 * n_cols, 1.7 * len(traces) * k), dpi=100,
                             squeeze=False)
    for s in range(k):
        n = int(lengths[s])
        for li, (trace, spec) in enumerate(zip(traces, model.spec.layers)):
            row = s * len(traces) + li
            for j in range(n_cols):
                ax = axes[row][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(trace):
                    ax.axis("off")
                    continue
                name = list(trace)[j]
                vals = trace[name][s, :n].T.numpy()
                lo, hi = (0, 1) if name in ("i", "f", "o", "r", "z") else (-1, 1)
                ax.imshow(vals, aspect="auto", cmap="magma" if lo == 0 else "coolwarm", vmin=lo, vmax=hi,
                          interpolation="nearest")
                if row == 0 or s == 0 and li == 0:
                    ax.set_title(name, fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"seq {s}\nL{li} {spec.cell}", fontsize=7)
    fig.suptitle("Gate activations of the chosen model (units x time)", fontsize=9)
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
            (out / "cell_by_slot.json").write_text(json.dumps(table, indent=2))
            files += [cell_plot(out / "cell_by_slot.png", table, metric), out / "cell_by_slot.json"]
        (out / "pareto_front.json").write_text(json.dumps(front, indent=2, default=str))
        files.append(out / "pareto_front.json")
    imp = importance(study)
    if imp:
        (out / "param_importance.json").write_text(json.dumps(imp, indent=2))
        files += [importance_plot(out / "param_importance.png", imp, metric), out / "param_importance.json"]
    if chosen and chosen.get("checkpoint"):
        g = gates_plot(out / "gates_chosen.png", chosen["checkpoint"], dataset)
        if g:
            files.append(g)
    return files
