"""Hardening, round two: what careless uses found on the landed main (issue 33), each through the
real CLI — one clear line and exit 2 (or it works), and nothing of the user's lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_hardening import one_line_error, run_cli


@pytest.fixture(scope="module")
def small_space(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("h2space") / "s.yaml"
    p.write_text("layers: {depth: 1, cell: gru, hidden: 4}\nlr: 0.02\nbatch_size: 16\nmax_epochs: 2\n"
                 "patience: 1\nmin_steps: 10\nmax_steps: 0\n")
    return p


@pytest.fixture(scope="module")
def model(tiny_csv, small_space, tmp_path_factory) -> Path:
    """A bundle of a tiny search on ``tiny_csv`` (in-process: the fixture, not the thing tested)."""
    from cellsearch.export import export
    from cellsearch.search import tune

    runs = tmp_path_factory.mktemp("h2runs")
    tune(tiny_csv, space=str(small_space), trials=2, run_dir=runs, progress=False, seed=0, cv=2)
    return export(out=runs / "model", run_dir=runs)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- 1: an output that is one of the command's inputs, or inside the bundle ----------------------------


def test_weights_that_do_not_match_the_spec_name_the_keys_in_one_line(model, tiny_csv, tmp_path):
    """A bundle whose weights.pt lacks a tensor its spec needs (one exported by an older version, say):
    one line that names the missing key, exit 2."""
    import shutil

    import torch

    old = tmp_path / "old"
    shutil.copytree(model, old)
    state = torch.load(old / "weights.pt", weights_only=True)
    gone = sorted(state)[0]
    torch.save({k: v for k, v in state.items() if k != gone}, old / "weights.pt")
    res = run_cli("predict", str(old), str(tiny_csv))
    one_line_error(res, "does not match spec.json")
    assert gone in res.stderr and "exporting again" in res.stderr


def test_predict_and_explain_never_overwrite_their_inputs(model, tiny_csv, tmp_path):
    data = tmp_path / "in.csv"
    data.write_bytes(tiny_csv.read_bytes())
    before = {p: _digest(p) for p in [data, *model.iterdir()] if p.is_file()}
    one_line_error(run_cli("predict", str(model), str(data), "--out", str(data)), "input file")
    one_line_error(run_cli("explain", str(model), str(data), "--out", str(data)), "input file")
    one_line_error(run_cli("predict", str(model), str(data), "--out", str(model / "weights.pt")), "bundle")
    one_line_error(run_cli("predict", str(model), str(data), "--out", str(tmp_path)), "directory")
    assert {p: _digest(p) for p in before} == before
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    ok = run_cli("predict", str(model), str(data), "--out", str(tmp_path / "new" / "preds.csv"))
    assert ok.returncode == 0, ok.stderr
    assert len(pd.read_csv(tmp_path / "new" / "preds.csv")) == pd.read_csv(data)["id"].nunique()


# ---- 5, 9: a space-file mistake is refused up front; a search whose every trial failed says why ------


@pytest.mark.parametrize("text,needle", [
    ("layers: {depth: 1, cell: gru, hidden: {type: int, low: 4, high: 8, step: 0}}\n", "step"),
    ("dropout: .nan\n", "dropout"),
    ("starts:\n  - {lr: 'abc'}\n", "starts[0].lr"),
])
def test_space_mistakes_are_refused_before_any_trial(tmp_path, tiny_csv, text, needle):
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    one_line_error(run_cli("tune", str(tiny_csv), "--space", str(space), "--run-dir", str(tmp_path / "runs")),
                   needle)
    assert not (tmp_path / "runs").exists()


def test_a_binary_space_file_and_a_negative_seed_are_refused(tmp_path, tiny_csv):
    space = tmp_path / "bin.yaml"
    space.write_bytes(bytes(range(256)) * 4)
    one_line_error(run_cli("tune", str(tiny_csv), "--space", str(space), "--run-dir", str(tmp_path / "r")),
                   "not a text file")
    one_line_error(run_cli("tune", str(tiny_csv), "--seed", "-1", "--run-dir", str(tmp_path / "r")), "--seed")


def test_a_search_whose_every_trial_failed_says_the_first_reason(tmp_path, tiny_csv, small_space, monkeypatch,
                                                                 capsys):
    import cellsearch.cli
    import cellsearch.model

    def broken(spec):
        raise RuntimeError("the model could not be built (a broken test double)")

    monkeypatch.setattr(cellsearch.model, "build", broken)
    with pytest.raises(SystemExit) as exc:
        cellsearch.cli.main(["tune", str(tiny_csv), "--space", str(small_space), "--trials", "2", "--workers", "1",
                             "--run-dir", str(tmp_path / "runs"), "--no-track", "--no-references"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "every trial failed" in err and "could not be built" in err


# ---- 8: explain's work is bounded -------------------------------------------------------------------------


def test_explain_refuses_more_steps_than_it_can_draw(model, tiny_csv, tmp_path):
    from cellsearch.explain import MAX_STEPS

    one_line_error(run_cli("explain", str(model), str(tiny_csv), "--max-steps", "20000",
                           "--out", str(tmp_path / "e.html")), f"--max-steps {MAX_STEPS}")
    assert not (tmp_path / "e.html").exists()


def test_prefix_predictions_are_sampled_and_batched_on_long_sequences(monkeypatch):
    import torch

    import cellsearch.explain as ex
    from cellsearch.model import ModelSpec, build
    from cellsearch.stack import LayerSpec

    monkeypatch.setattr(ex, "PREFIX_BATCH_STEPS", 3000)
    torch.manual_seed(0)
    m = build(ModelSpec(2, (LayerSpec("gru", 3),), 2, "classification")).eval()
    prep = type("P", (), {"task": "classification", "classes": ["a", "b"]})()
    x = np.random.default_rng(0).normal(size=(1, 1500, 2)).astype(np.float32)
    seen = []
    real = m.forward
    monkeypatch.setattr(m, "forward", lambda xb, lb=None: seen.append(tuple(xb.shape)) or real(xb, lb))
    (e,) = ex.explain_sequences(m, prep, x, np.array([1500]), np.array(["s"]), clamps=False)
    done = np.isfinite(e.per_step[:, 0])
    assert done.sum() == ex.MAX_PREFIXES and done[-1] and done[0]
    assert max(b * t for b, t, _ in seen[:-1]) <= 3000 * 2  # each batch: at most 2 prefixes of 1,500 steps
    with torch.no_grad():
        full = torch.softmax(real(torch.from_numpy(x)), 1).numpy()[0]
    np.testing.assert_allclose(e.output, full, atol=1e-5)


# ---- 11, 12, 13, 15, 18 ----------------------------------------------------------------------------------


def test_predict_fill_is_an_option_that_works(model, tiny_csv, tmp_path):
    df = pd.read_csv(tiny_csv)
    df.loc[df.index[3], "x"] = np.nan
    gappy = tmp_path / "gappy.csv"
    df.to_csv(gappy, index=False)
    refused = run_cli("predict", str(model), str(gappy))
    one_line_error(refused, "--fill")
    filled = run_cli("predict", str(model), str(gappy), "--fill", "ffill", "--out", str(tmp_path / "p.csv"))
    assert filled.returncode == 0, filled.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == df["id"].nunique()


def test_conflicting_export_options_are_refused(model, tmp_path):
    runs = model.parent
    one_line_error(run_cli("export", "--run-dir", str(runs), "--trial", "0", "--ensemble", "E1",
                           "--out", str(tmp_path / "m")), "--trial", "--ensemble")
    assert not (tmp_path / "m").exists()


def test_the_model_card_escapes_text_from_the_data(tmp_path):
    from cellsearch.export import export
    from cellsearch.search import tune
    from tests.conftest import make_classification_csv

    csv = make_classification_csv(tmp_path / "x.csv", n_seq=40)
    df = pd.read_csv(csv).rename(columns={"z": "<script>alert(1)</script>", "label": "<img src=x onerror=alert(2)>"})
    df.to_csv(csv, index=False)
    space = tmp_path / "s.yaml"
    space.write_text("layers: {depth: 1, cell: gru, hidden: 4}\nlr: 0.02\nbatch_size: 16\nmax_epochs: 1\n"
                     "patience: 1\nmin_steps: 5\nmax_steps: 0\n")
    tune(csv, space=str(space), trials=1, run_dir=tmp_path / "runs", progress=False, track=False, cv=2,
         target="<img src=x onerror=alert(2)>")
    card = (export(out=tmp_path / "m", run_dir=tmp_path / "runs") / "README.md").read_text()
    assert "<script>" not in card and "<img" not in card
    assert "&lt;script&gt;" in card and "&lt;img src=x onerror=alert(2)&gt;" in card


def test_the_test_fraction_message_states_the_real_limit(tmp_path, tiny_csv):
    one_line_error(run_cli("tune", str(tiny_csv), "--test-fraction", "0.99", "--run-dir", str(tmp_path / "r")),
                   "--test-fraction", "below 0.85")


def test_a_reduced_cv_is_said(tmp_path, small_space):
    from tests.conftest import make_classification_csv

    csv = make_classification_csv(tmp_path / "few.csv", n_seq=12)
    res = run_cli("tune", str(csv), "--space", str(small_space), "--cv", "1000", "--trials", "1",
                  "--workers", "1", "--test-fraction", "0", "--run-dir", str(tmp_path / "runs"), "--no-track",
                  "--json")
    assert res.returncode == 0, res.stderr
    assert "notice: --cv 1000" in res.stderr
    assert "folds" in json.loads(res.stdout)["cv"]


# ---- 3: one constant series does not rule a forecasting panel ------------------------------------------


def test_a_constant_series_gets_a_scale_of_its_own_and_a_notice(tmp_path, small_space):
    from cellsearch.data import read_dataset
    from tests.conftest import make_sales_csv

    csv = make_sales_csv(tmp_path / "panel.csv", [(10.0, 60), (1000.0, 60), (0.0, 60)])  # shop s2: all zeros
    ds = read_dataset(csv, horizon=3)
    assert any("constant history" in w and "s2" in w for w in ds.info["warnings"])
    for split in ds.splits.values():
        if len(split):
            w = np.asarray(split.weight)
            assert np.isfinite(w).all() and w.max() < 1e3, w.max()  # was 1e9 for the zero series
    res = run_cli("tune", str(csv), "--horizon", "3", "--space", str(small_space), "--trials", "1",
                  "--workers", "1", "--run-dir", str(tmp_path / "runs"), "--no-track", "--json")
    assert res.returncode == 0, res.stderr
    assert "notice: 1 series with a constant history" in res.stderr and "s2" in res.stderr
    chosen = json.loads(res.stdout)["chosen"]
    assert chosen["score"] < 100  # an average of comparable numbers (was ~6.5e6 with a zero series)


# ---- 4: an integer target that could be either is decided well, and the choice is said --------------


def _integer_targets_csv(path: Path, targets: list[int]) -> Path:
    rng = np.random.default_rng(0)
    rows = [pd.DataFrame({"id": i, "x": rng.normal(size=5).round(3), "label": y}) for i, y in enumerate(targets)]
    pd.concat(rows).to_csv(path, index=False)
    return path


def test_label_numbers_are_classes_and_the_choice_is_said_first(tmp_path):
    from cellsearch.data import read_dataset

    labels = _integer_targets_csv(tmp_path / "labels.csv", [k % 30 + 1 for k in range(90)])  # 1..30, 3 each
    ds = read_dataset(labels)
    assert ds.task == "classification" and len(ds.preprocessing.classes) == 30
    res = run_cli("inspect", str(labels))
    assert res.returncode == 0, res.stderr
    first = " ".join(res.stdout.splitlines()[:3])
    assert "read as classes" in first and "--task regression" in first
    ages = _integer_targets_csv(tmp_path / "ages.csv", list(range(20, 110, 2)))  # 45 values with gaps, once each
    ds = read_dataset(ages)
    assert ds.task == "regression"
    assert any("--task classification" in w for w in ds.info["warnings"])
    assert read_dataset(labels, task="regression").task == "regression"  # the override still rules


# ---- 6: a shared dashboard answers those it was shared with -----------------------------------------------


@pytest.mark.slow
def test_a_shared_dashboard_answers_the_names_it_is_reached_by(model, tmp_path):
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import free_port, stop_process

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cellsearch.cli", "ui", "--run-dir", str(model.parent), "--port",
                             str(port), "--host", "0.0.0.0", "--allowed-hosts", "dash.example.org"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def status(host_header: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host_header})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        t0 = time.time()
        while True:
            try:
                code = status(f"dash.example.org:{port}")
                break
            except OSError:
                assert proc.poll() is None and time.time() - t0 < 90, "the dashboard did not start"
                time.sleep(0.3)
        assert code == 200  # the name it was shared by (403 "Invalid Host header" before)
        assert status(f"elsewhere.example.com:{port}") == 403  # and not any name at all
    finally:
        stop_process(proc)


# ---- 7: an archived (read-only) run directory is still exported from and viewed -------------------------


def _read_only_mount_works(tmp_path: Path) -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount --bind {tmp_path / 'a'} {tmp_path / 'b'} && "
                            f"mount -o remount,bind,ro {tmp_path / 'b'} && ! touch {tmp_path / 'b' / 'x'}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_export_and_ui_work_on_a_read_only_run_directory(model, tmp_path):
    import shlex
    import subprocess
    import sys

    from tests.conftest import free_port

    if not _read_only_mount_works(tmp_path):
        pytest.skip("no read-only bind mounts here (unshare --mount)")
    runs, ro = model.parent, tmp_path / "archive"
    ro.mkdir()
    before = {p: _digest(p) for p in runs.rglob("*") if p.is_file() and p.suffix == ".db"}
    port = free_port()
    py = shlex.quote(sys.executable)
    probe = (f"import time, urllib.request\nfor _ in range(300):\n    try:\n        urllib.request.urlopen("
             f"'http://127.0.0.1:{port}/health', timeout=2); print('UI-OK'); break\n    except OSError:\n"
             f"        time.sleep(0.3)\n")
    script = (f"mount --bind {runs} {ro} && mount -o remount,bind,ro {ro} && "
              f"{py} -m cellsearch.cli export --run-dir {ro} --out {tmp_path / 'out'} && "
              f"{{ {py} -m cellsearch.cli ui --run-dir {ro} --port {port} > /dev/null 2> {tmp_path / 'ui.err'} & "
              f"ui=$!; {py} -c {shlex.quote(probe)}; kill $ui; wait $ui; }}")
    res = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "readonly database" not in res.stderr and "internal error" not in res.stderr
    assert (tmp_path / "out" / "weights.pt").exists()
    assert "UI-OK" in res.stdout and "read-only" in (tmp_path / "ui.err").read_text()
    assert {p: _digest(p) for p in before} == before  # nothing of the archive changed


# ---- 16: the seasonal naive reference sees a season, or says that it could not -------------------------


def _monthly_csv(path: Path) -> Path:
    rows = []
    for k in range(3):
        t = np.arange(60)
        rows.append(pd.DataFrame({"shop": f"s{k}", "month": pd.date_range("2010-01-01", periods=60, freq="MS"),
                                  "sales": (k + 2) * (3 + np.sin(2 * np.pi * t / 12)) + 0.1 * t}))
    pd.concat(rows).to_csv(path, index=False)
    return path


def test_the_default_window_covers_a_season_and_a_short_one_is_said(tmp_path):
    from cellsearch.data import read_dataset
    from cellsearch.folds import make_folds
    from cellsearch.references import fit_references

    csv = _monthly_csv(tmp_path / "monthly.csv")
    ds = read_dataset(csv, horizon=3)
    # three seasons, not three horizons: the statistical members' decomposition needs them
    assert ds.preprocessing.layout_data["season"] == 12 and ds.preprocessing.layout_data["window"] == 36
    refs = {r["name"]: r for r in fit_references(ds, "macs", folds=make_folds(ds, 1))}
    assert refs["theta"]["score"] < 0.5 * refs["seasonal_naive"]["score"]  # it takes the season out
    assert refs["seasonal_naive"]["arch"] == "seasonal naive"
    assert refs["seasonal_naive"]["score"] < refs["naive"]["score"]  # it does see the season now
    short = read_dataset(csv, horizon=3, window=6)
    assert any("shorter than the season" in w and "--window 13" in w for w in short.info["warnings"])
    refs = {r["name"]: r for r in fit_references(short, "macs", folds=make_folds(short, 1))}
    assert "= naive" in refs["seasonal_naive"]["arch"]


# ---- 19: what the terminal shows ---------------------------------------------------------------------


def test_the_pareto_table_wraps_long_architectures_on_a_narrow_terminal(monkeypatch, capsys):
    from types import SimpleNamespace

    from cellsearch.report import print_result

    monkeypatch.setenv("COLUMNS", "60")
    arch = "lstm16-cifg32-peephole64-gru128/p8/attention/zn"
    point = {"name": "3", "trial": 3, "kind": "trial", "arch": arch, "score": 0.91, "spread": 0.02,
             "test_score": 0.9, "macs": 123456, "params": 7890, "folds": 5}
    from cellsearch.search import TuneResult

    result = TuneResult(counts={"complete": 1}, study=SimpleNamespace(study_name="s"), front=[point], cost="macs",
                        metric="accuracy", direction="maximize", chosen=point, pick="knee", references=[],
                        run_dir=Path("runs"))
    print_result(result, tracked=False, run_dir="runs")
    out = capsys.readouterr().out
    cells = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.count("│") > 3)
    assert arch in cells  # the whole architecture, folded over lines


def test_the_pareto_plot_does_not_warn_on_the_terminal(tmp_path, monkeypatch):
    """matplotlib warns "Creating legend with loc='best' can be slow" on the terminal when a legend
    must find its own place among many points: the plot gives it one."""
    from matplotlib.axes import Axes

    from cellsearch import plots

    asked = []
    real = Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **k: asked.append(k.get("loc", "best")) or real(self, *a, **k))
    points = [{"name": str(k), "trial": k, "kind": "trial", "arch": f"gru{k}", "score": 0.5 + k / 100,
               "cost": 100.0 * (k + 1), "macs": 100 * (k + 1), "params": 10, "spread": 0.01}
              for k in range(40)]
    path = plots.pareto_plot(tmp_path / "p.png", points, points[-3:], points[-1], "accuracy", "macs")
    assert path.exists() and asked and "best" not in asked


# ---- 10: a crafted bundle's metadata is untrusted input ----------------------------------------------


def _spec_mut(key, value):
    def mutate(d):
        # a network member's spec, or a reference member's own fields (``cellsearch.refmembers``)
        specs = [m.get("spec", m) for m in d["members"]] if "members" in d else [d]
        for s in specs:
            s[key] = value
        return d
    return mutate


def _members_mut(d):
    d["members"][0]["weight"] = -1e308
    return d


@pytest.mark.parametrize("name,mutate,needle", [
    ("spec.json", lambda d: "[" * 200_000 + "]" * 200_000, "spec.json"),
    ("spec.json", _spec_mut("task", "astrology"), "unknown task"),
    ("spec.json", _members_mut, "weights"),
    ("preprocessing.json", None, "preprocessing.json: missing"),
    ("preprocessing.json", "symlink", "symbolic link"),
    ("preprocessing.json", lambda d: {**d, "classes": d["classes"][:1]}, "classes"),
    ("preprocessing.json", lambda d: {**d, "layout_data": {**d["layout_data"], "window": 10 ** 12}}, "window"),
    ("preprocessing.json", lambda d: {**d, "layout_data": {**d["layout_data"], "window": -5}}, "window"),
    ("preprocessing.json", lambda d: {**d, "scaler": {"mean": d["scaler"]["mean"][:1], "std": d["scaler"]["std"]}},
     "scaler"),
    ("preprocessing.json", lambda d: {**d, "scaler": {"mean": d["scaler"]["mean"],
                                                      "std": [0.0] * len(d["scaler"]["std"])}}, "spreads"),
    ("preprocessing.json", lambda d: {**d, "task": "astrology"}, "unknown task"),
    ("metrics.json", lambda d: "{" * 200_000, "metrics.json"),
])
def test_a_crafted_bundle_is_refused_in_one_line(model, tiny_csv, tmp_path, name, mutate, needle):
    import os
    import shutil

    if name == "spec.json" and mutate is _members_mut and "members" not in json.loads((model / name).read_text()):
        pytest.skip("the fixture's model is not an ensemble")
    crafted = tmp_path / "crafted"
    shutil.copytree(model, crafted)
    target = crafted / name
    if mutate is None:
        target.unlink()
    elif mutate == "symlink":
        other = tmp_path / "elsewhere.json"
        other.write_text(target.read_text())
        target.unlink()
        os.symlink(other, target)
    else:
        out = mutate(json.loads(target.read_text()))
        target.write_text(out if isinstance(out, str) else json.dumps(out))
    one_line_error(run_cli("predict", str(crafted), str(tiny_csv)), needle)


# ---- 14: a bad request to the served model gets cellsearch's one line, no traceback -------------------


@pytest.mark.slow
def test_serving_answers_a_bad_request_with_one_line_and_no_traceback(model, tiny_csv):
    import urllib.error

    from tests.conftest import http_json, serve_bundle, stop_process, wait_for_server

    proc, url = serve_bundle(model)
    try:
        df = pd.read_csv(tiny_csv).drop(columns=["label"])
        good = {"dataframe_split": df[df.id.isin([0, 1])].to_dict(orient="split")}
        wait_for_server(lambda: http_json(url, good), proc)
        bad = df[df.id.isin([0, 1])].copy()
        bad.loc[bad.index[1], "x"] = np.nan  # passes MLflow's schema check; cellsearch refuses it
        try:
            split = json.loads(bad.to_json(orient="split", index=False))  # NaN as null
            http_json(url, {"dataframe_split": split})
            raise AssertionError("a bad request was answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400
            answer = json.loads(exc.read())
        assert answer["message"].startswith("cellsearch: ") and "\n" not in answer["message"]
        assert "'x'" in answer["message"]
        assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)
    finally:
        stop_process(proc)


# ---- 17: processes sharing a study never draw the same point twice ---------------------------------


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_two_processes_on_one_study_draw_different_points(tmp_path, kind):
    import optuna

    from cellsearch.study import default_storage, make_sampler, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(default_storage(tmp_path))
    # two `tune` commands started together: the same --seed, nothing in the study yet
    first = optuna.create_study(study_name="s", storage=storage, sampler=make_sampler(kind, 0))
    second = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(kind, 0))
    drawn = []
    for _ in range(4):
        for study in (first, second):
            trial = study.ask()
            drawn.append((trial.suggest_float("lr", 1e-4, 1e-2, log=True), trial.suggest_int("hidden", 16, 256)))
    assert len(set(drawn)) == len(drawn)
    # one process alone still draws exactly the same points for the same seed
    again = optuna.create_study(study_name="t", storage=storage, sampler=make_sampler(kind, 0))
    alone = []
    for _ in range(3):
        trial = again.ask()
        alone.append((trial.suggest_float("lr", 1e-4, 1e-2, log=True), trial.suggest_int("hidden", 16, 256)))
    assert alone == drawn[:3] if kind == "random" else len(set(alone)) == 3


# ---- 2: identifiers and labels are the text in the file ---------------------------------------------


def test_ids_and_labels_keep_the_text_of_the_file(model, tiny_csv, tmp_path):
    rng = np.random.default_rng(0)
    ids = ["1", "01", "2", "02", "00005", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13"]
    lines = [f"{i},{t},{rng.normal():.3f},{rng.normal():.3f},{'01' if k % 2 else '1'}"
             for k, i in enumerate(ids) for t in range(8)]
    csv = tmp_path / "text_ids.csv"
    csv.write_text("id,t,x,z,label\n" + "\n".join(lines) + "\n")
    res = run_cli("inspect", str(csv), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["n_sequences"] == 16  # `1` and `01` are two sequences, not one of 16 steps
    assert info["task"] == "classification" and sorted(info["classes"]) == ["01", "1"]
    out = tmp_path / "preds.csv"
    res = run_cli("predict", str(model), str(csv), "--out", str(out))
    assert res.returncode == 0, res.stderr
    back = pd.read_csv(out, dtype={"id": str})
    assert sorted(back["id"]) == sorted(ids)  # `00005` comes back as `00005`
    plain = run_cli("inspect", str(tiny_csv), "--json")  # plain numbers stay numbers
    assert json.loads(plain.stdout)["n_sequences"] == pd.read_csv(tiny_csv)["id"].nunique()


def test_a_pruned_trial_is_not_a_failed_run(tmp_path):
    from mlflow import MlflowClient

    from cellsearch.tracking import MLflowTrialRun, default_tracking_uri

    client = MlflowClient(default_tracking_uri(tmp_path))
    exp = client.create_experiment("s", artifact_location=(tmp_path / "mlartifacts").as_uri())
    states = {}
    for state in ("PRUNED", "FAILED", "FINISHED"):
        run = client.create_run(exp)
        MLflowTrialRun(client, run.info.run_id).finish(state, reason="why" if state != "FINISHED" else None)
        got = client.get_run(run.info.run_id)
        states[state] = (got.info.status, got.data.tags["state"])
    assert states == {"PRUNED": ("FINISHED", "PRUNED"), "FAILED": ("FAILED", "FAILED"),
                      "FINISHED": ("FINISHED", "COMPLETE")}


def test_scores_are_recorded_as_the_runs_table_should_show_them(tmp_path):
    from mlflow import MlflowClient

    from cellsearch.tracking import MLflowTrialRun, default_tracking_uri

    client = MlflowClient(default_tracking_uri(tmp_path))
    run = client.create_run(client.create_experiment("s", artifact_location=(tmp_path / "a").as_uri()))
    MLflowTrialRun(client, run.info.run_id).finish("FINISHED", metrics={
        "score": 2 / 3, "fold1_score": 0.123456789, "macs": 123456.0, "train_seconds": 1.23456789})
    m = client.get_run(run.info.run_id).data.metrics
    assert m["score"] == 0.6667 and m["fold1_score"] == 0.1235  # not 0.66666667
    assert m["macs"] == 123456.0 and m["train_seconds"] == 1.23456789  # counts and times as they are


def test_a_search_with_no_complete_trial_names_the_killed_and_the_pruned_ones():
    """A trial failed by optuna when a killed search resumed has no recorded reason: the line says
    so, and names the pruned trials' first reason rather than calling every trial failed."""
    import optuna

    from cellsearch.records import TrialRecord
    from cellsearch.search import TuneResult

    study = optuna.create_study(directions=["maximize", "minimize"])
    killed = study.ask()
    study.tell(killed, state=optuna.trial.TrialState.FAIL)  # as fail_stale_trials leaves it
    late = study.ask()
    TrialRecord(reason="the time limit came before its first validation").write(late, "reason")
    study.tell(late, state=optuna.trial.TrialState.PRUNED)
    result = TuneResult(study, "accuracy", "maximize", "macs", [], None, Path("."), counts={"fail": 1, "pruned": 1})
    line = result.failure
    assert line.startswith("no trial completed: 1 failed") and "killed" in line
    assert "1 pruned before a score (the first: the time limit came before its first validation)" in line
    assert TuneResult(study, "accuracy", "maximize", "macs", [], None, Path("."),
                      counts={"fail": 1, "complete": 1}).failure is None
    # failures alone: every trial failed, the first recorded reason
    bare = optuna.create_study()
    t = bare.ask()
    TrialRecord(reason="RuntimeError: boom").write(t, "reason")
    bare.tell(t, state=optuna.trial.TrialState.FAIL)
    assert TuneResult(bare, "accuracy", "maximize", "macs", [], None, Path("."),
                      counts={"fail": 1}).failure == "every trial failed; the first: RuntimeError: boom"


def test_a_trial_that_fails_after_training_records_why(tmp_path, tiny_csv, monkeypatch):
    """An error while a trained trial's models are saved and scored (its out-of-fold outputs here)
    fails the trial with the reason recorded, so the search's line names it (it used to say none)."""
    import cellsearch.evaluation
    from cellsearch.records import TrialRecord
    from cellsearch.search import tune

    def broken(*args, **kwargs):
        raise RuntimeError("the outputs could not be computed (a broken test double)")

    space = tmp_path / "s.yaml"
    space.write_text("layers:\n  depth: 1\n  cell: gru\n  hidden: 4\nlr: 0.01\nbatch_size: 16\nmax_epochs: 2\n"
                     "patience: 2\n")
    monkeypatch.setattr(cellsearch.evaluation, "outputs", broken)
    r = tune(tiny_csv, space=str(space), trials=1, run_dir=tmp_path / "runs", progress=False, track=False, cv=2,
             seed=1, prune=False, references=False)
    assert r.counts.get("fail") and not r.counts.get("complete")
    reasons = {TrialRecord.of(t).reason for t in r.study.trials}
    assert reasons == {"RuntimeError: the outputs could not be computed (a broken test double)"}
    assert r.failure == f"every trial failed; the first: {reasons.pop()}"
