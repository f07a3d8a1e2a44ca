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
    ax.legend(fontsize=8, loc="upper right")  # loc="best" is slow, and says so on the terminal
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
    """The Pareto plot as one self-contained interactive page (plotly, its JavaScript inlined: opens
    offline and inside MLflow's artifact viewer): hover any point for what it is (trial or ensemble,
    architecture, score ± spread over folds, test score, cost), zoom, toggle groups in the legend."""
    import plotly.graph_objects as go

    def name(p: dict[str, Any]) -> str:
        return p.get("name", str(p.get("trial")))

    def hover(p: dict[str, Any]) -> str:
        what = ("ensemble " + p["name"] if p.get("kind") == "ensemble" else "reference" if p.get("kind") ==
                "reference" else f"trial {p.get('trial')}")
        spread = f" ± {p['spread']:.2g} over folds" if p.get("spread") else ""
        test = f"<br>test {metric} {p['test_score']:.4g}" if p.get("test_score") is not None else ""
        pick = "<br><b>chosen</b>" if chosen and name(p) == name(chosen) else ""
        return f"{what}: {p['arch']}<br>{metric} {p['score']:.4g}{spread}{test}<br>{cost} {p['cost']:.4g}{pick}"

    on_front = {name(p) for p in front}
    groups = [("other trials", [p for p in points if name(p) not in on_front and p.get("kind") != "ensemble"],
               "circle", "#9aa5b1"),
              ("other ensembles", [p for p in points if name(p) not in on_front and p.get("kind") == "ensemble"],
               "square", "#e0a458"),
              ("Pareto front", sorted(front, key=lambda p: p["cost"]), "circle", "#d1495b"),
              ("references", _plotted(references), "diamond", "#222222")]
    fig = go.Figure()
    for label, group, symbol, color in groups:
        if not group:
            continue
        symbols = ["square" if p.get("kind") == "ensemble" else symbol for p in group]
        fig.add_trace(go.Scatter(
            x=[max(p["cost"], 1e-12) for p in group], y=[p["score"] for p in group], name=label,
            mode="lines+markers+text" if label == "Pareto front" else "markers",
            text=[p["arch"] for p in group] if label in ("Pareto front", "references") else None,
            textposition="top center", textfont=dict(size=10),
            marker=dict(symbol=symbols, size=10, color=color, line=dict(width=0)),
            line=dict(color=color, width=2),
            error_y=dict(type="data", array=[p.get("spread") or 0 for p in group], visible=True, thickness=1,
                         color=color) if any(p.get("spread") for p in group) else None,
            hovertext=[hover(p) for p in group], hoverinfo="text"))
    if chosen:
        fig.add_trace(go.Scatter(x=[max(chosen["cost"], 1e-12)], y=[chosen["score"]], name="chosen",
                                 mode="markers", hovertext=[hover(chosen)], hoverinfo="text",
                                 marker=dict(symbol="circle-open", size=22, color="#2e86ab", line=dict(width=3))))
    fig.update_layout(title_text="Accuracy against compute — hover a point, drag to zoom, click the legend",
                      xaxis=dict(type="log", title_text=f"{cost} (log scale)"),
                      yaxis=dict(title_text=f"validation {metric}"), height=620, template="plotly_white",
                      legend=dict(orientation="h", y=-0.15))
    from cellsearch.pages import html_page

    return html_page(path, "Pareto front", [fig])


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
    shown = chosen
    if chosen and chosen.get("members"):  # an ensemble: its heaviest-weighted network (references have no gates)
        networks = [t for t in chosen["members"] if int(t) >= 0]
        heaviest = max(networks, key=lambda t: chosen["members"][t]) if networks else None
        shown = next((p for p in points if heaviest is not None and p.get("trial") == int(heaviest)
                      and p.get("kind", "trial") == "trial"), None)
    if shown and shown.get("checkpoint"):
        from cellsearch.explain import explain_checkpoint

        page = explain_checkpoint(out / "explain_chosen.html", shown["checkpoint"], dataset,
                                  title="The chosen model, explained" if shown is chosen else
                                  f"The chosen ensemble {chosen.get('name')}, explained by its heaviest network "
                                  f"(trial {shown['trial']})")
        if page:
            files.append(page)
    return files
