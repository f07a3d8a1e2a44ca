"""MLflow records: read back through MLflow's own client, and through a real server's REST API."""

from __future__ import annotations

import json
import sys

import optuna
from mlflow import MlflowClient
from PIL import Image

from cellsearch.tracking import default_tracking_uri
from tests.conftest import free_port, http_json, start_server, stop_process, wait_for_server


def _client(tuned) -> MlflowClient:
    return MlflowClient(tracking_uri=default_tracking_uri(tuned.run_dir))


def test_experiment_parent_and_child_runs(tuned):
    client = _client(tuned)
    exp = client.get_experiment_by_name(tuned.study.study_name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                and "trial_number" in r.data.tags]
    assert len(parents) == 1
    p = parents[0]
    for tag in ("data", "study", "command", "cellsearch_version"):
        assert p.data.tags.get(tag), tag
    assert p.info.status == "FINISHED" and p.data.tags["chosen_trial"] == tuned.chosen["name"]  # a trial or E1, E2, ...
    trials = tuned.study.trials
    assert len(children) == len(trials)
    by_number = {int(r.data.tags["trial_number"]): r for r in children}
    for t in trials:
        r = by_number[t.number]
        spec = t.user_attrs["spec"]
        assert r.data.params["n_layers"] == str(len(spec["layers"]))
        for k, layer in enumerate(spec["layers"]):
            assert r.data.params[f"l{k}_cell"] == layer["cell"]
            assert r.data.params[f"l{k}_hidden"] == str(layer["hidden"])
        assert r.data.tags["arch"] == t.user_attrs["arch"]
        assert {"lr", "dropout", "batch_size"} <= set(r.data.params)
        state = {optuna.trial.TrialState.COMPLETE: "COMPLETE", optuna.trial.TrialState.PRUNED: "PRUNED"}[t.state]
        assert r.data.tags["state"] == state
        history = client.get_metric_history(r.info.run_id, "val_score")
        assert [m.step for m in history] == list(range(len(t.user_attrs["curve"])))
        assert [m.value for m in history] == [round(v, 4) for v in t.user_attrs["curve"]]  # scores: 4 decimals
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert r.data.metrics["score"] == round(t.user_attrs["val_score"], 4)  # as the runs table shows it
            assert r.data.metrics["macs"] == t.user_attrs["macs"]
            assert r.data.metrics["params"] == t.user_attrs["params"]
            assert r.data.metrics["train_seconds"] > 0
            assert len(client.get_metric_history(r.info.run_id, "train_loss")) == len(history)


def test_study_rebuilt_from_mlflow_alone(tuned):
    """The front can be recomputed from MLflow's records without the Optuna database."""
    from cellsearch.pareto import pareto_front

    client = _client(tuned)
    exp = client.get_experiment_by_name(tuned.study.study_name)
    runs = [r for state in ("COMPLETE", "ENSEMBLE")
            for r in client.search_runs([exp.experiment_id], f"tags.state = '{state}'")]
    pts = [{"name": r.data.tags.get("ensemble") or r.data.tags["trial_number"],
            "score": r.data.metrics["score"], "oof_loss": r.data.metrics["oof_loss"],
            "cost": r.data.metrics["macs"], "arch": ""} for r in runs]
    assert any(r.data.tags["state"] == "ENSEMBLE" for r in runs)
    assert sorted(p["name"] for p in pareto_front(pts, "maximize")) == sorted(p["name"] for p in tuned.front)


def test_plots_are_valid_images(tuned, tmp_path):
    client = _client(tuned)
    exp = client.get_experiment_by_name(tuned.study.study_name)
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "search"][0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for png in ("plots/pareto_front.png", "plots/cell_by_slot.png"):
        assert png in names, names
        local = client.download_artifacts(parent.info.run_id, png, str(tmp_path))
        with Image.open(local) as im:
            im.verify()
            assert im.size[0] > 200 and im.size[1] > 100
    page = open(client.download_artifacts(parent.info.run_id, "plots/pareto_front.html", str(tmp_path))).read()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # interactive, self-contained
    for p in tuned.front:  # every front member is identifiable by hovering
        assert (f"trial {p['trial']}: " if p.get("kind", "trial") == "trial" else f"ensemble {p['name']}") in page
    explain = open(client.download_artifacts(parent.info.run_id, "plots/explain_chosen.html", str(tmp_path))).read()
    assert "Plotly.newPlot" in explain and "Gate manipulation" in explain and "clamped to" in explain
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "plots/cell_by_slot.json",
                                                      str(tmp_path))).read())
    assert "layer 0" in table


def test_real_mlflow_server_lists_the_runs(tuned):
    port = free_port()
    proc = start_server([sys.executable, "-m", "cellsearch.cli", "ui", "--run-dir", str(tuned.run_dir),
                         "--port", str(port)])
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        exp = wait_for_server(lambda: http_json(f"{base}/experiments/get-by-name?experiment_name="
                                                f"{tuned.study.study_name}"), proc)["experiment"]
        runs = http_json(f"{base}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        searches = [r for r in runs if any(t["key"] == "role" and t["value"] == "search"
                                           for t in r["data"].get("tags", []))]
        assert len(searches) == 1
        trial_runs = [r for r in runs if any(t["key"] == "trial_number" for t in r["data"].get("tags", []))]
        assert len(trial_runs) == len(tuned.study.trials)
    finally:
        stop_process(proc)


def test_references_are_runs_tagged_reference_under_the_search(tuned):
    """Each reference is one finished nested run of the search, tagged ``reference``, with the scores
    the result reports; never counted as a trial."""
    client = _client(tuned)
    exp = client.get_experiment_by_name(tuned.study.study_name)
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "search"][0]
    refs = client.search_runs([exp.experiment_id], "tags.role = 'reference'")
    assert sorted(r.data.tags["reference"] for r in refs) == sorted(x["name"] for x in tuned.references) == \
        ["1nn", "ridge", "rocket"]
    by_name = {x["name"]: x for x in tuned.references}
    for r in refs:
        want = by_name[r.data.tags["reference"]]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED"
        assert r.data.tags["state"] == "REFERENCE" and "trial_number" not in r.data.tags
        assert r.data.metrics["score"] == round(want["score"], 4)
        assert r.data.metrics["macs"] == want["macs"] and r.data.metrics["params"] == want["params"]
    result = json.loads((tuned.run_dir / "studies" / tuned.study.study_name / "result.json").read_text())
    assert [x["name"] for x in result["references"]] == ["1nn", "ridge", "rocket"]
