"""The command line's contract: instant help, one-line errors with exit 2, and the bench command."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellsearch.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from cellsearch.cli import app; "
            "heavy = [m for m in ('torch', 'pytorch_lightning', 'mlflow', 'optuna', 'pandas') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = run_cli("--help")
    assert res.returncode == 0 and "bench" in res.stdout


def test_export_predict_and_explain_train_nothing_and_do_not_import_lightning(tiny_csv, tmp_path):
    """Exporting fold models, predicting and explaining train nothing: they read models through
    ``cellsearch.evaluation``, so a command pays no PyTorch Lightning import (seconds per call)."""
    from cellsearch.search import tune

    space = tmp_path / "s.yaml"
    space.write_text("layers:\n  depth: 1\n  cell: gru\n  hidden: 4\nlr: 0.01\nbatch_size: 16\nmax_epochs: 2\n"
                     "patience: 2\n")
    runs = tmp_path / "runs"
    tune(tiny_csv, space=str(space), trials=2, run_dir=runs, progress=False, track=False, cv=2, seed=1, prune=False,
         test_size=0.2)
    bundle = str(tmp_path / "m")
    commands = [["export", "--run-dir", str(runs), "--out", bundle],
                ["predict", bundle, str(tiny_csv), "--out", str(tmp_path / "p.csv")],
                ["explain", bundle, str(tiny_csv), "--out", str(tmp_path / "e.html")]]
    code = (f"import sys; from cellsearch.cli import main\nfor args in {commands!r}:\n"
            "    try:\n        main(args)\n"
            "    except SystemExit as exc:\n        assert not exc.code, (args, exc.code)\n"
            "print('pytorch_lightning' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False True"  # torch ran the models; Lightning stayed out
    card = (tmp_path / "m" / "README.md").read_text()
    assert "test accuracy: " in card and "test accuracy: n/a" not in card  # the test split was scored


def test_usage_errors_are_one_line_with_status_2():
    for args in (["bench", "--no-such-option"], ["no-such-command"], ["bench", "--hidden", "x"],
                 ["bench", "--device", "tpu"]):
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cellsearch: error:"), res.stderr
        assert "Traceback" not in res.stderr


def test_bench_json_reports_every_variant():
    res = run_cli("bench", "--hidden", "8", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    rows = {r["variant"]: r for r in data["rows"]}
    assert {"lstm", "peephole", "cifg", "gru", "stack lstm x2"} <= set(rows)
    for r in rows.values():
        assert r["hidden"] == 8 and r["ms"] > 0 and r["ratio"] > 0


def test_bench_names_the_backend_and_times_each_with_all_backends():
    from cellsearch import kernels

    res = run_cli("bench", "--hidden", "8", "--repeats", "1", "--json", "--all-backends")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert "gru vs nn.GRU" in {r["variant"] for r in data["rows"]}
    if not kernels.available():
        return
    assert data["backend"]["8"] in kernels.gemm_backends() and data["cpu"]
    assert set(data["backends"]) == set(kernels.gemm_backends())
    for rows in data["backends"].values():
        assert {r["variant"] for r in rows} >= {"peephole", "cifg", "gru"} and all(r["ms"] > 0 for r in rows)


def test_bench_text_reports_pieces_and_characters_against_torch():
    """``bench --text --json``: a row per cell, width and reading (word pieces, their characters), each
    with positive speeds of ours and torch's on the same documents; the character-level model reads more
    steps than the word pieces, so it is slower in the documents' word pieces."""
    res = run_cli("bench", "--text", "--hidden", "8", "--repeats", "2", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert {(r["variant"], r["tokens"]) for r in rows} == {(c, k) for c in ("lstm", "peephole", "cifg", "gru")
                                                           for k in ("pieces", "chars")}
    assert all(r["tokens_per_s"] > 0 and r["reference_tokens_per_s"] > 0 and r["ratio"] > 0 for r in rows)
    speed = {(r["variant"], r["tokens"]): r["reference_tokens_per_s"] for r in rows}
    assert all(speed[(c, "chars")] < speed[(c, "pieces")] for c in ("lstm", "gru"))
