"""Terminal output: the human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from typing import Any


def print_inspect(info: dict[str, Any]) -> None:
    """The ``cellsearch inspect`` summary as a short table."""
    from rich.console import Console
    from rich.table import Table

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
        ("sequences" if info["task"] != "forecasting" else "windows", f"{info['n_sequences']:,}"),
        ("split", " / ".join(f"{k} {v:,}" for k, v in info["splits"].items()) + f"  ({info['split_source']})"),
        ("length", f"min {info['length']['min']}, median {info['length']['median']:g}, max {info['length']['max']}"),
    ]
    if info["task"] == "forecasting":
        rows.append(("window / horizon", f"{info['window']} / {info['horizon']} ({info['n_series']} series)"))
    if "classes" in info:
        rows.append(("classes", ", ".join(f"{k}: {v}" for k, v in info["classes"].items())))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    for w in info["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
