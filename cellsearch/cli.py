"""The ``cellsearch`` command line: a thin layer that parses options and calls one library function.

Heavy libraries are imported inside the commands, so ``cellsearch --help`` stays instant. Bad input
raises ``UserError`` anywhere below; ``main`` turns it into one line on stderr and exit status 2
(``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from cellsearch.costs import COSTS
from cellsearch.errors import UserError
from cellsearch.files import dumps
from cellsearch.formats import FORMATS

app = typer.Typer(
    name="cellsearch",
    help="Search recurrent architectures (LSTM, peephole, CIFG, GRU per layer) for a sequence CSV.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STARTED = time.time()  # --timeout counts from here: imports and data loading are part of the budget


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """``--debug`` is read by ``main`` before the command runs (it decides how errors are shown)."""


def _share(text: str, what: str) -> float | str:
    """A share given on the command line: a number, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{what} must be a number or auto, got {text!r}") from None


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must be positive integers, got {text!r}")
    return values


# Data options shared by every command that reads a CSV (one definition, reused).
LAYOUT = typer.Option(None, "--layout", help="text, long, wide or series (detected by default).")
TARGET = typer.Option(None, "--target", help="Target column (detected by default).")
ID_COL = typer.Option(None, "--id-col", help="Column grouping rows into sequences or series.")
TIME_COL = typer.Option(None, "--time-col", help="Column ordering rows within a sequence.")
TASK = typer.Option(None, "--task", help="classification, regression, forecasting or another registered task.")
WINDOW = typer.Option(None, "--window", help="Forecasting: past steps per input window.")
HORIZON = typer.Option(None, "--horizon", help="Forecasting: future steps to predict (default 1).")
FILL = typer.Option(None, "--fill", help="Fill missing feature values: ffill or zero (default: refuse).")
SEASON = typer.Option(None, "--season", help="Forecasting: season length for MASE and the seasonal naive "
                      "forecast (default: from the time column's dates: 12 monthly, 4 quarterly, 7 daily; else 1).")
SEED = typer.Option(0, "--seed", help="Seed for splits, sampling and training.")
TEXT_COL = typer.Option(None, "--text-col", help="Text layout: the column of documents (detected by default).")
MAX_TOKENS = typer.Option(None, "--max-tokens", help="Text layout: tokens read per document (default: the "
                          "training documents' 95th percentile, at most 512); longer ones keep head and tail.")


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="The CSV file."),
    layout: str | None = LAYOUT, target: str | None = TARGET, id_col: str | None = ID_COL,
    time_col: str | None = TIME_COL, task: str | None = TASK, window: int | None = WINDOW,
    horizon: int | None = HORIZON, fill: str | None = FILL, season: int | None = SEASON, seed: int = SEED,
    text_col: str | None = TEXT_COL, max_tokens: int | None = MAX_TOKENS,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """What cellsearch understood of a CSV: layout, task, columns, sequences and the split."""
    from cellsearch.data import inspect as inspect_file

    info = inspect_file(file, layout=layout, target=target, id_col=id_col, time_col=time_col, task=task,
                        window=window, horizon=horizon, fill=fill, season=season, seed=seed,
                        text_col=text_col, max_tokens=max_tokens)
    if as_json:
        print(dumps(info))
        return
    from cellsearch.report import print_inspect

    print_inspect(info)


@app.command()
def tune(
    file: Path = typer.Argument(..., help="The CSV file."),
    layout: str | None = LAYOUT, target: str | None = TARGET, id_col: str | None = ID_COL,
    time_col: str | None = TIME_COL, task: str | None = TASK, window: int | None = WINDOW,
    horizon: int | None = HORIZON, fill: str | None = FILL, season: int | None = SEASON, seed: int = SEED,
    text_col: str | None = TEXT_COL, max_tokens: int | None = MAX_TOKENS,
    space: str = typer.Option("default", "--space", help="Search space: a shipped name (quick, default, greff) "
                              "or a YAML path."),
    trials: int | None = typer.Option(None, "--trials", help="Finished trials the study should hold (resumes "
                                      "count); default 20, or as many as --timeout allows when it is given."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds for the whole search, final "
                                            "steps included."),
    objective: str = typer.Option("pareto", "--objective", help="pareto (score and cost) or score (with pruning)."),
    cost: str = typer.Option("macs", "--cost", help=f"Compute cost to minimise: {', '.join(COSTS)}."),
    pick: str = typer.Option("knee", "--pick", help="Which front member to choose: knee, best or smallest."),
    study: str | None = typer.Option(None, "--study", help="Study name (default: the file's name)."),
    run_dir: Path = typer.Option(Path("cellsearch-runs"), "--run-dir", help="Where the study and runs live."),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL (e.g. postgresql://...)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    track: bool = typer.Option(True, "--track/--no-track", help="Record in MLflow (default) or not."),
    references: bool = typer.Option(True, "--references/--no-references", help="Also score reference models "
                                    "(1-NN, ridge, ROCKET; forecasts: naive, seasonal naive, theta, damped trend, "
                                    "drift; text: TF-IDF) on the same splits (default) or not."),
    max_epochs: int | None = typer.Option(None, "--max-epochs", help="Override the space's max_epochs "
                                            "(validation checks; epochs on large data); training then ends at "
                                            "max_epochs, or at min_steps on small data (the space's max_steps "
                                            "is ignored)."),
    trial_timeout: float | None = typer.Option(None, "--trial-timeout", help="Seconds per trial at most."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Stop hopeless trials early (default) or never."),
    cv: str = typer.Option("auto", "--cv", help="Folds per trial: a number (1: one validation split), or auto: "
                           "5 for at most 2,000 sequences (forecasting: 10,000 windows), else 1."),
    fold_batching: str = typer.Option("auto", "--fold-batching", help="How a trial's folds train on the CPU: "
                                      "auto: together as one batched model where a quick measurement says it "
                                      "is faster; on: together wherever the model can run batched; off: one "
                                      "by one."),
    ensemble: bool = typer.Option(True, "--ensemble/--no-ensemble", help="Also select ensembles of trials on "
                                  "their out-of-fold predictions (default) or not."),
    networks_only: bool = typer.Option(False, "--networks-only", help="Ensembles of networks only: the ridge "
                                       "reference does not join them as a member."),
    test_size: str = typer.Option("auto", "--test-fraction", help="Share of sequences (forecasting: of each "
                                  "series' end) held out as the test split; 0 keeps none; auto: 0.15 where "
                                  "that holds at least 200 sequences (forecasting: horizons), else none, and "
                                  "the out-of-fold score is reported instead."),
    workers: str = typer.Option("auto", "--workers", help="Worker processes on this machine sharing the study: "
                                "a number, or auto: one per CPU core (at most 4; 1 on a GPU)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    verbose: bool = typer.Option(False, "--verbose", help="Lightning's own progress and notices."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Search per-layer cells, depth and width for a CSV; show the Pareto front and the chosen model."""
    # Every parameter but the file and --json is a TuneConfig or DataOptions field of the same name.
    options = {k: v for k, v in locals().items() if k not in ("file", "as_json")}
    options["test_size"] = _share(test_size, "--test-fraction")
    from cellsearch.checks import check_readable
    from cellsearch.config import TuneConfig

    check_readable(file)  # before the heavy imports: a typo is reported at once
    TuneConfig.create(file, **options).validate()
    from cellsearch.search import tune as run_tune

    result = run_tune(TuneConfig.create(file, **options, started_at=_STARTED))
    if as_json:
        print(dumps(result.to_dict()))
    else:
        from cellsearch.report import print_result

        print_result(result, tracked=track, run_dir=run_dir)
    if result.interrupted:
        print("cellsearch: interrupted; the study is saved, run the same command again to continue",
              file=sys.stderr)
        sys.exit(130)
    if result.failure:
        print(f"cellsearch: error: {result.failure} (--verbose shows more)",
              file=sys.stderr)
        sys.exit(1)


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="Folder to write the bundle to."),
    run_dir: Path = typer.Option(Path("cellsearch-runs"), "--run-dir", help="The run directory of the search."),
    study: str | None = typer.Option(None, "--study", help="Study name (needed when the run holds several)."),
    trial: int | None = typer.Option(None, "--trial", help="Export this trial instead of picking from the front."),
    ensemble: str | None = typer.Option(None, "--ensemble", help="Export this ensemble (E1, as the Pareto "
                                        "table names it) instead of picking from the front."),
    pick: str = typer.Option("knee", "--pick", help="knee, best or smallest member of the Pareto front."),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL (default: the run's SQLite)."),
    formats: list[str] = typer.Option([], "--format", help="Also write this format into the bundle (repeatable): "
                                      f"{', '.join(FORMATS)}."),
    onnx: bool = typer.Option(False, "--onnx", help="Short for --format onnx."),
    register: str | None = typer.Option(None, "--register", help="Also register in the MLflow model registry."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI for --register."),
    force: bool = typer.Option(False, "--force", help="Replace an existing, non-empty --out folder."),
    weights: str = typer.Option("auto", "--weights", help="folds: each trial's cross-validated fold models, "
                                "averaged; refit: each trial retrained on all non-test data; auto (default): "
                                "refit where the search validated on one holdout (its models never trained on "
                                "those rows), folds otherwise."),
) -> None:
    """Export the chosen model (the knee of the Pareto front by default; a trial or an ensemble) as a bundle."""
    from cellsearch.export import export as run_export

    path = run_export(out=out, run_dir=run_dir, study=study, trial=trial, pick=pick, storage=storage,
                      formats=[*formats, *(["onnx"] if onnx else [])], register=register,
                      tracking_uri=tracking_uri, force=force, weights=weights, ensemble=ensemble)
    print(f"exported to {path}  (cellsearch predict {path} data.csv)")


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="A bundle written by `cellsearch export`."),
    file: Path = typer.Argument(..., help="CSV in the training layout (the target column may be absent)."),
    out: Path | None = typer.Option(None, "--out", help="Write predictions to this CSV (default: stdout)."),
    fill: str | None = typer.Option(None, "--fill", help="Fill missing feature values: ffill (within each "
                                    "sequence, then 0) or zero (default: as in training)."),
) -> None:
    """Predict from a CSV in the training layout, preprocessing included."""
    from cellsearch.checks import check_output

    if out is not None:
        check_output(out, inputs=(file,), folders=(model_dir,))
    from cellsearch.predict import load, read_input

    predictor = load(model_dir)
    preds = predictor.predict(read_input(file, predictor.prep), where=str(file), fill=fill)
    if out is None:
        preds.to_csv(sys.stdout, index=False)
        return
    from cellsearch.files import atomic_path

    with atomic_path(out) as tmp:
        preds.to_csv(tmp, index=False)
    print(f"{len(preds)} predictions written to {out}", file=sys.stderr)


@app.command()
def explain(
    model_dir: Path = typer.Argument(..., help="A bundle written by `cellsearch export`."),
    file: Path = typer.Argument(..., help="CSV in the training layout (the target column, if there, is shown)."),
    sequence: list[str] | None = typer.Option(None, "--sequence", help="A sequence id (forecasting: a series) "
                                              "to explain; repeat for more (default: a few, one per class)."),
    member: int | None = typer.Option(None, "--member", help="For an ensemble: which member (default: the "
                                      "heaviest-weighted)."),
    out: Path = typer.Option(Path("explain.html"), "--out", help="The page to write."),
    max_steps: int = typer.Option(1000, "--max-steps", help="Longer sequences are shown by their last steps."),
) -> None:
    """An interactive page of what the model's cells do on your sequences: gates over time, the
    prediction step by step, and the effect of clamping each gate."""
    from cellsearch.checks import check_output
    from cellsearch.explain import explain as run_explain
    from cellsearch.explain import write_html

    check_output(out, inputs=(file,), folders=(model_dir,))
    explanations = run_explain(model_dir, file, sequences=sequence or None, member=member, max_steps=max_steps)
    write_html(explanations, out, title=f"cellsearch explain: {model_dir}",
               about=f"{len(explanations)} sequence(s) of {file}")
    print(f"explain page for {len(explanations)} sequence(s) written to {out}", file=sys.stderr)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@app.command()
def ui(
    run_dir: Path = typer.Option(Path("cellsearch-runs"), "--run-dir", help="The run directory of the searches."),
    port: int = typer.Option(5000, "--port", help="Port for the dashboard."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    allowed_hosts: str | None = typer.Option(None, "--allowed-hosts", help="When shared (--host 0.0.0.0): the "
                                             "comma-separated names or addresses others reach the dashboard by "
                                             "(default: this machine's own names and addresses)."),
) -> None:
    """The MLflow dashboard over the run directory's store: prints each study's runs-table link."""
    import os
    import signal
    import socket
    import subprocess

    from cellsearch.rundir import is_copy, stores_for_reading
    from cellsearch.tracking import default_tracking_uri, repoint_artifacts, view_url

    if not (run_dir / "mlflow.db").exists():
        raise UserError(f"{run_dir}: no MLflow store here (mlflow.db); run `cellsearch tune` first or pass --run-dir")
    store = stores_for_reading(run_dir)
    if is_copy(store, run_dir):
        print(f"cellsearch: notice: {run_dir} is read-only; the dashboard shows a copy of its store, and changes "
              "made there (tags, notes) are not kept", file=sys.stderr)
    repoint_artifacts(store)  # the run directory may have been moved or copied here
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"cellsearch: warning: the dashboard has no authentication; anyone who can reach {host}:{port} "
              "can read and change the runs", file=sys.stderr)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", default_tracking_uri(store),
           "--default-artifact-root", (run_dir / "mlartifacts").resolve().as_uri(), "--host", host,
           "--port", str(port), "--workers", "1"]
    if host not in ("127.0.0.1", "localhost", "::1"):  # MLflow answers other Host headers with 403 otherwise
        from cellsearch.tracking import dashboard_hosts

        cmd += ["--allowed-hosts", ",".join(dashboard_hosts(host, port, allowed_hosts))]
    # One server worker and no background job consumers: a dashboard for one person, quick to start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    base = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
    print(f"MLflow dashboard on {base}  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    for name, exp_id in _studies(store):
        print(f"  {name}: {view_url(base, exp_id)}", file=sys.stderr, flush=True)
    # MLflow's server forks workers that outlive their parent: run it in its own session and end
    # the whole session when we are interrupted or terminated.
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    sys.exit(code)


def _studies(run_dir: Path) -> list[tuple[str, str]]:
    """(study name, MLflow experiment id) of each study tracked in the run directory's store (read
    with SQLite directly: importing MLflow would take seconds)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{run_dir / 'mlflow.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT name, experiment_id FROM experiments WHERE lifecycle_stage = 'active' "
                              "AND name != 'Default' ORDER BY experiment_id").fetchall()
    except sqlite3.Error:
        return []
    return [(str(name), str(exp_id)) for name, exp_id in rows]


@app.command()
def bench(
    hidden: str = typer.Option("64,256", help="Comma-separated hidden sizes."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(2, help="torch threads on the CPU."),
    repeats: int = typer.Option(7, help="Timed repeats (median reported)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    all_backends: bool = typer.Option(False, "--all-backends", help="Also time the custom cells with each "
                                      "recurrent-GEMM backend this machine has (mkl, aten, blocked)."),
    text: bool = typer.Option(False, "--text", help="Instead: training tokens per second of a text model "
                              "(embedding, each cell, mean pooling, Adam), reading word pieces and reading their "
                              "characters, against torch's own modules."),
    steps: bool = typer.Option(False, "--steps", help="Instead: where a small trial's training step goes, and "
                               "the search's fold-steps per second with the folds one by one and together "
                               "against a bare PyTorch loop (the first --hidden size)."),
) -> None:
    """Speed of each cell variant (forward + backward) against torch's nn.LSTM on this machine."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    sizes = _ints(hidden, "--hidden")
    if text:
        _bench_text(sizes, threads, repeats, as_json)
        return
    if steps:
        _bench_steps(sizes[0], threads, as_json)
        return
    import torch

    from cellsearch import kernels
    from cellsearch.benchmarks import cells as bench_mod
    from cellsearch.cells import CELLS

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    rows = bench_mod.run_bench(hidden=sizes, device=device, threads=threads, repeats=repeats)
    chosen = {h: {b: n for n, b in kernels.GEMMS.items()}.get(kernels.gemm_for(64, h, 4)) for h in sizes} \
        if device == "cpu" and kernels.available() else {}
    per_backend = {b: bench_mod.run_bench(hidden=sizes, device=device, threads=threads, repeats=repeats,
                                          variants=tuple(n for n, c in CELLS.items() if c.uses_gemm), backend=b)
                   for b in kernels.gemm_backends()} if all_backends and device == "cpu" else {}
    if as_json:
        print(json.dumps({"device": device, "threads": threads, "kernel": kernels.status(),
                          "cpu": kernels.cpu_model(), "backend": chosen, "torch": torch.__version__,
                          "rows": bench_mod.rows_to_json(rows),
                          "backends": {b: bench_mod.rows_to_json(r) for b, r in per_backend.items()}}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fwd+bwd, batch 64, 100 steps, 16 inputs, {device}, {threads} threads "
                        f"(custom kernel: {kernels.status()})")
    for col in ("variant", "hidden", "ms", "vs nn.LSTM"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for r in rows:
        ref = "vs nn.LSTM(2 layers)" if r.variant.startswith("stack") else ""
        table.add_row(r.variant, str(r.hidden), f"{r.ms:.1f}", f"{r.ratio:.2f}x {ref}".strip())
    Console().print(table)
    if chosen:
        print(f"CPU {kernels.cpu_model()}; recurrent GEMM in use (batch 64, LSTM shape): "
              + ", ".join(f"hidden {h}: {b}" for h, b in chosen.items()))
    for b, brows in per_backend.items():
        print(f"  backend {b}: " + ", ".join(f"{r.variant} h{r.hidden} {r.ratio:.2f}x" for r in brows))


def _bench_steps(hidden: int, threads: int, as_json: bool) -> None:
    """``cellsearch bench --steps``: a small trial's training step by part, and the folds trained
    together (``cellsearch.benchmarks.steps``)."""
    from cellsearch import kernels
    from cellsearch.benchmarks import steps as steps_bench

    r = {"cpu": kernels.cpu_model(), **steps_bench.run_steps(hidden=hidden, threads=threads)}
    if as_json:
        print(json.dumps(r, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"GRU {hidden}, batch {r['batch']}, 67 sequences x 12 steps, 5 folds, {r['steps']} "
                        f"steps; {threads} threads, CPU {r['cpu']}")
    for col in ("way of training", "ms per (fold-)step"):
        table.add_column(col, justify="left" if col.startswith("way") else "right")
    for key, words in (("bare_ms", "bare PyTorch loop, one model"), ("lightning_ms", "fit, fixed steps"),
                       ("alone_ms", "fit as a fold trained alone (validation, early stopping)"),
                       ("together_ms", "five folds together (foldbatch.fit_folds)")):
        table.add_row(words, f"{r[key]:.3f}")
    for part, ms in [*r["parts_ms"].items(), *r["together_parts_ms"].items()]:
        table.add_row(f"  part: {part}", f"{ms:.3f}")
    for mode, words in (("off", "one by one"), ("on", "together")):
        m = r["search"][mode]
        table.add_row(f"search, folds {words}: {m['fold_steps_per_s']:,.0f} fold-steps/s of training",
                      f"{1000 / m['fold_steps_per_s']:.3f}" if m["fold_steps_per_s"] else "-")
    Console().print(table)
    print(f"goal ratio (search's fold-steps/s over the bare loop's steps/s): {r['ratio']:.2f} "
          f"(folds one by one: {r['ratio_before']:.2f}); goal at least 1.0")


def _bench_text(sizes: tuple[int, ...], threads: int, repeats: int, as_json: bool) -> None:
    """``cellsearch bench --text``: training tokens per second (``cellsearch.benchmarks.text``)."""
    from cellsearch import kernels
    from cellsearch.benchmarks import text as text_bench

    rows = text_bench.run_text_bench(hidden=sizes, threads=threads, repeats=repeats)
    if as_json:
        print(json.dumps({"cpu": kernels.cpu_model(), "threads": threads, "kernel": kernels.status(),
                          "rows": text_bench.rows_to_json(rows)}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"text training step (embedding 64, batch 32 documents of 4-256 word pieces, Adam), "
                        f"{threads} threads, CPU {kernels.cpu_model()}; tokens/s counts word pieces, also where "
                        "the model reads their characters")
    for col in ("variant", "reads", "hidden", "tokens/s", "torch's", "tokens/s ", "ratio"):
        table.add_column(col, justify="left" if col in ("variant", "reads", "torch's") else "right")
    for r in rows:
        table.add_row(r.variant, r.tokens, str(r.hidden), f"{r.tokens_per_s:,.0f}", r.reference,
                      f"{r.reference_tokens_per_s:,.0f}", f"{r.ratio:.2f}x")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning bad input into one line on stderr and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="cellsearch", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        print(f"cellsearch: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cellsearch: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Typer's (vendored) click exceptions: usage errors, Exit and Abort, recognised by shape.
        name = type(exc).__name__
        if name == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if name == "Abort":
            print("cellsearch: interrupted", file=sys.stderr)
            sys.exit(130)
        if debug:
            raise
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"cellsearch: error: {exc.format_message()}", file=sys.stderr)
            sys.exit(2)
        print(f"cellsearch: internal error: {type(exc).__name__}: {exc} (run with --debug for the "
              "traceback)", file=sys.stderr)
        sys.exit(1)
    # Typer turns a Ctrl-C that leaves a command into Exit(130), which outside its standalone mode
    # comes back as a return value: without this, Ctrl-C before a search's trials exited 0, silently
    if code == 130:
        print("cellsearch: interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)

if __name__ == "__main__":
    main()

