"""What a user sees in ``cellsearch ui``: the runs-table view, the search's description, the tags and
metrics it sorts by — and, in a real headless Chromium, that the trials render with score and cost."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import optuna
import pytest

from tests.conftest import free_port, stop_process


def _client(tuned):
    from mlflow import MlflowClient

    from cellsearch.tracking import default_tracking_uri

    return MlflowClient(tracking_uri=default_tracking_uri(tuned.run_dir))


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                None)


def test_study_opens_on_its_runs_table_view(tuned):
    from cellsearch.tracking import VIEW_COLUMNS, VIEW_KEY

    client = _client(tuned)
    exp = client.get_experiment_by_name(tuned.study.study_name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    assert view["orderByKey"] == "metrics.`score`" and view["selectedColumns"] == list(VIEW_COLUMNS)
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "search"}]
    chart = view["compareRunCharts"][0]  # the chart tab: score against the search's cost
    assert chart["type"] == "SCATTER" and chart["yaxis"]["key"] == "score" and chart["xaxis"]["key"] == "macs"
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "search"][0]
    for r in client.search_runs([exp.experiment_id]):  # every run of the search is grouped under it
        assert r.data.tags["search"] == parent.info.run_name


def test_parent_description_tags_and_metrics(tuned):
    client = _client(tuned)
    exp = client.get_experiment_by_name(tuned.study.study_name)
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "search"][0]
    note = parent.data.tags["mlflow.note.content"]
    chosen = tuned.chosen
    assert "**Chosen (knee):**" in note and chosen["arch"] in note and "pareto_front.html" in note
    assert note.count("\n| ") >= len(tuned.front) + 1  # the Pareto table, a row per front member
    front = {str(p["trial"]) for p in tuned.front if p["kind"] == "trial"}
    for t in tuned.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        run = client.search_runs([exp.experiment_id], f"tags.trial_number = '{t.number}'")[0]
        assert run.data.metrics["score"] == round(t.user_attrs["val_score"], 4)  # the trial's score, as shown
        assert run.data.metrics["latency_ms"] > 0  # every complete trial, whatever the cost objective
        assert run.data.tags["pareto"] == str(str(t.number) in front).lower()
        expected = ("true" if chosen.get("trial") == t.number else
                    "member" if t.number in (chosen.get("members") or {}) else "false")
        assert run.data.tags["chosen"] == expected
        if str(t.number) in front:  # tiny data keeps no test split: the out-of-fold score stands in
            assert tuned.held_out == "out-of-fold" and "test_score" not in run.data.metrics
            assert run.data.metrics["oof_score"] == next(p["oof_score"] for p in tuned.front
                                                         if str(p["trial"]) == str(t.number) and p["kind"] == "trial")


def test_result_files_are_strict_json(tuned):
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    sdir = tuned.run_dir / "studies" / tuned.study.study_name
    for f in [sdir / "result.json", sdir / "dataset.json", sdir / "preprocessing.json"]:
        json.loads(f.read_text(), parse_constant=refuse)
    from cellsearch.files import dumps

    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}


def test_ui_refuses_a_busy_or_invalid_port(tuned):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for p in (str(port), "70000"):
            t0 = time.time()
            res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "ui", "--run-dir", str(tuned.run_dir),
                                  "--port", p], capture_output=True, text=True, timeout=60)
            assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert "Traceback" not in res.stderr and time.time() - t0 < 5


def test_ui_in_a_real_browser(tuned, tmp_path):
    """Start ``cellsearch ui`` on a tiny search, open the link it prints in headless Chromium and find
    the trials with their score and cost in the rendered runs table."""
    browser = _browser()
    if browser is None:
        if os.environ.get("CELLSEARCH_REQUIRE_BROWSER"):
            pytest.fail("CELLSEARCH_REQUIRE_BROWSER is set but no Chromium is installed")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it and runs this test")
    port = free_port()
    err = tmp_path / "ui.err"
    proc = subprocess.Popen([sys.executable, "-m", "cellsearch.cli", "ui", "--run-dir", str(tuned.run_dir),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err.open("w"),
                            start_new_session=True)
    try:
        t0 = time.time()
        import urllib.request

        while True:  # listening within a few seconds (8 s on 2 idle cores; allow for a busy test machine)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, err.read_text()
                assert time.time() - t0 < 60, "the dashboard did not start listening"
                time.sleep(0.2)
        link = re.search(r"http://\S+viewStateShareKey=\S+", err.read_text()).group(0)
        assert f"{tuned.study.study_name}: {link}" in err.read_text()
        dom = ""
        for _ in range(3):  # the page renders from the API; give a slow machine more time
            dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1800,1000",
                                  "--virtual-time-budget=20000", "--dump-dom", link],
                                 capture_output=True, text=True, timeout=120).stdout
            if "trial-" in dom:
                break
        complete = tuned.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        for t in complete:
            assert f"trial-{t.number}-" in dom, f"trial {t.number} not rendered"
        for column in ("score", "macs"):
            assert re.search(rf">\s*{column}\s*<", dom), f"column {column} not rendered"
        best = max(complete, key=lambda t: t.user_attrs["val_score"])
        assert f"{best.user_attrs['val_score']:.4g}"[:4] in dom  # a score value rendered in the table
        assert f"{int(best.user_attrs['macs'])}" in dom  # and a cost value
    finally:
        stop_process(proc)


def test_ui_warns_when_listening_beyond_this_machine(tuned):
    proc = subprocess.Popen([sys.executable, "-m", "cellsearch.cli", "ui", "--run-dir", str(tuned.run_dir),
                             "--port", str(free_port()), "--host", "0.0.0.0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stderr.readline()
    finally:
        stop_process(proc)
    assert "warning" in first and "no authentication" in first
