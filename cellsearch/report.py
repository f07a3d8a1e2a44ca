"""Terminal output: the human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from typing import Any


def print_inspect(info: dict[str, Any]) -> None:
    """The ``cellsearch inspect`` summary as a short table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cellsearch.tasks import get_task

    console = Console()
    table = Table(show_header=False, title=f"cellsearch inspect {info['file']}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("layout", info["layout"]),
        ("task", info["task"]),
        ("target", info["target"]),
        ("id column", info["id_col"] or "-"),
        ("time column", info["time_col"] or "-"),
        ("features", ", ".join(info["features"])),
        ("rows", f"{info['n_rows']:,}"),
        (get_task(info["task"]).unit, f"{info['n_sequences']:,}"),
        ("split", " / ".join(f"{k} {v:,}" for k, v in info["splits"].items()) + f"  ({info['split_source']})"),
        ("length", f"min {info['length']['min']}, median {info['length']['median']:g}, max {info['length']['max']}"),
    ]
    if "window" in info:
        rows.append(("window / horizon", f"{info['window']} / {info['horizon']}, season {info['season']} "
                     f"({info['n_series']} series, {info['series_trained']} long enough to train)"))
    if "text" in info:
        t = info["text"]
        rows.append(("text", f"column {t['column']!r}: {t['documents']:,} documents, vocabulary {t['vocabulary']:,} "
                     f"word pieces (training rows); tokens per document median {t['tokens']['median']:g}, 95th "
                     f"percentile {t['tokens']['p95']:.0f}, max {t['tokens']['max']:,}; read up to {t['max_tokens']} "
                     f"({t['cut']:,} cut to head and tail)"
                     + (f"; as characters up to {t['max_chars']:,} ({t['chars_per_piece']:g} per piece)"
                        if "max_chars" in t else "")))
    if "classes" in info:
        rows.append(("classes", ", ".join(f"{k}: {v}" for k, v in info["classes"].items())))
    for k, v in rows:
        table.add_row(k, str(v))
    for w in info["warnings"]:  # first: how the task was chosen, what was guessed or left out
        console.print(f"[yellow]note:[/yellow] {escape(w)}", highlight=False)
    console.print(table)


def _fmt_int(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def print_result(result: Any, *, tracked: bool, run_dir: Any) -> None:
    """The end of a search: the Pareto front, the chosen model with its test score, what next (the
    commands with their paths quoted for the shell)."""
    from shlex import quote

    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items()))
    name = result.study.study_name
    table = Table(title=f"Pareto front of study '{name}' ({counts})", title_justify="left")
    folds = max((p.get("folds") or 1 for p in result.front), default=1)
    val_head = f"val {result.metric}" + (f" ({folds}-fold mean ± sd)" if folds > 1 else "")
    held = result.held_out
    for col in ("trial", "architecture", val_head, f"{held} {result.metric}", "MACs/seq", "params", "chosen"):
        # the architecture wraps on a narrow terminal instead of being cut ("lstm16-ci…")
        table.add_column(col, justify="left" if col == "architecture" else "right",
                         overflow="fold" if col == "architecture" else "ellipsis")
    chosen = result.chosen.get("name") if result.chosen else None
    for p in result.front:
        test = result.held_out_score(p)
        val = f"{p['score']:.4g}" + (f" ± {p['spread']:.2g}" if p.get("spread") else "")
        table.add_row(p["name"], p["arch"], val, "-" if test is None else f"{test:.4g}",
                      _fmt_int(p.get("macs")), _fmt_int(p.get("params")),
                      f"<- {result.pick}" if p["name"] == chosen else "")
    if result.references:
        table.add_section()
    for r in result.references:
        test = r.get("test_score") if held == "test" else r.get("score")
        table.add_row("ref", r["arch"], f"{r['score']:.4g}", "-" if test is None else f"{test:.4g}",
                      _fmt_int(r.get("macs")), _fmt_int(r.get("params")), "reference")
    console.print(table)
    if held != "test":
        console.print(f"[dim]no test split (too few rows to spare one: --test-fraction auto); the {held} column "
                      "scores each model on rows it did not train on[/dim]")
    if result.chosen:
        c = result.chosen
        test = result.held_out_score(c)
        what = f"ensemble {c['name']}" if c.get("kind") == "ensemble" else f"trial {c['trial']}"
        console.print(f"chosen: {what} [bold]{c['arch']}[/bold], validation {result.metric} "
                      f"{c['score']:.4g}, {held} {result.metric} {'-' if test is None else f'{test:.4g}'}, "
                      f"{_fmt_int(c.get('params'))} parameters")
    else:
        console.print("[yellow]no trial finished[/yellow]")
    from cellsearch.references import verdict

    line = verdict(result.chosen, result.references, result.metric, result.direction)
    if line:
        console.print(f"[yellow]{line}[/yellow]")
    console.print("next:")
    if tracked:
        console.print(f"  cellsearch ui --run-dir {quote(str(run_dir))}            # the MLflow dashboard")
    console.print(f"  cellsearch export --run-dir {quote(str(run_dir))} --study {quote(name)} --out model/   "
                  "# the chosen model")
