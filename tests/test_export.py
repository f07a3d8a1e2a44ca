"""Export bundles, ONNX parity for every variant, predict from raw CSVs, serving, and the round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cellsearch
from cellsearch.export import export
from cellsearch.model import ModelSpec, build
from cellsearch.stack import LayerSpec
from tests.conftest import http_json, make_sales_csv, serve_bundle, stop_process, wait_for_server


@pytest.fixture(scope="module")
def bundle(tuned, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    return export(out=out, run_dir=tuned.run_dir, formats=["onnx"], register="tiny-model")


def test_bundle_contents(bundle, tuned):
    for name in ("MLmodel", "weights.pt", "spec.json", "preprocessing.json", "README.md", "model.onnx",
                 "input_example.json", "requirements.txt", "metrics.json"):
        assert (bundle / name).exists(), name
    state = torch.load(bundle / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["trial"] == tuned.chosen["trial"]
    card = (bundle / "README.md").read_text()
    assert "best validation check" in card and tuned.chosen["arch"].split(" ")[0] in card
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert prep["classes"] == ["c0", "c1", "c2"] and len(prep["scaler"]["mean"]) == 2
    assert not list(bundle.parent.glob(".model.*")), "no staging folder left behind"


def test_registered_in_mlflow_registry(bundle, tuned):
    from mlflow import MlflowClient

    from cellsearch.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(tuned.run_dir))
    versions = client.search_model_versions("name='tiny-model'")
    assert len(versions) == 1


def test_existing_out_is_refused_without_force(bundle, tuned):
    from cellsearch.errors import UserError

    with pytest.raises(UserError, match="--force"):
        export(out=bundle, run_dir=tuned.run_dir)
    export(out=bundle, run_dir=tuned.run_dir, force=True, formats=["onnx"])
    assert (bundle / "MLmodel").exists()


def test_round_trip_in_a_fresh_process(bundle, tuned, tiny_csv, tmp_path):
    """Predictions on the test split from a fresh process equal the in-memory model's."""
    from cellsearch.data import read_dataset

    prep = json.loads((bundle / "preprocessing.json").read_text())
    # read as the bundle read it; tiny data keeps no test split (--test-fraction auto) and the search
    # reads without a validation split: every sequence is in "train"
    ds = read_dataset(tiny_csv, **{k: v for k, v in prep["options"].items() if v is not None})
    test_keys = set(ds.splits["train"].keys.tolist())
    df = pd.read_csv(tiny_csv)
    test_df = df[df.id.isin(test_keys)].drop(columns=["label"])
    test_csv = tmp_path / "test.csv"
    test_df.to_csv(test_csv, index=False)
    out_csv = tmp_path / "preds.csv"
    res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "predict", str(bundle), str(test_csv),
                          "--out", str(out_csv)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    fresh = pd.read_csv(out_csv).set_index("id").sort_index()
    # the chosen model: a trial's fold models, or an ensemble's members (the knee keeps the best,
    # most often an ensemble, on data this small); ``assemble`` builds either
    from cellsearch.ensemble import assemble
    from cellsearch.pareto import member_points, trial_points

    points = trial_points(tuned.study, tuned.cost, ensembles=False, root=tuned.run_dir)
    paths = {p["trial"]: p["checkpoint"] for p in points + member_points(tuned.study, tuned.run_dir)}
    model = assemble(tuned.chosen, paths.__getitem__)
    model.eval()
    with torch.no_grad():
        split = ds.splits["train"]
        logits = model(torch.from_numpy(split.x), torch.from_numpy(split.lengths))
    probs = torch.softmax(logits, 1).numpy()
    order = np.argsort(split.keys)
    assert fresh.index.tolist() == sorted(test_keys)
    assert np.allclose(fresh[[f"prob_c{k}" for k in range(3)]].to_numpy(), probs[order], atol=1e-5)
    assert fresh["prediction"].tolist() == [f"c{k}" for k in probs[order].argmax(1)]


def test_load_predict_with_and_without_target(bundle, tiny_csv):
    model = cellsearch.load(bundle)
    df = pd.read_csv(tiny_csv)
    with_target = model.predict(df)
    without = model.predict(df.drop(columns=["label"]))
    assert len(with_target) == df.id.nunique()
    pd.testing.assert_frame_equal(with_target, without)


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: d.drop(columns=["z"]), "missing column(s) z"),
    (lambda d: d.assign(extra=1.0), "unexpected column(s) extra"),
    (lambda d: d.assign(x=d.x.astype(str).where(d.index != 3, "abc")), "should be numeric"),
])
def test_predict_bad_input_is_one_line_exit_2(bundle, tiny_csv, tmp_path, mutate, expect):
    bad = tmp_path / "bad.csv"
    mutate(pd.read_csv(tiny_csv)).to_csv(bad, index=False)
    res = subprocess.run([sys.executable, "-m", "cellsearch.cli", "predict", str(bundle), str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr


def test_unseen_category_is_refused(tmp_path):
    from cellsearch.data import Preprocessing
    from cellsearch.errors import UserError
    from cellsearch.predict import transform

    prep = Preprocessing.from_dict({
        "layout": "long", "task": "classification", "target": "label", "id_col": "id", "time_col": None,
        "features": ["a", "color"], "inputs": ["a", "color=red", "color=blue"],
            "categories": {"color": ["blue", "red"]}, "scaler": {"mean": [0, 0, 0], "std": [1, 1, 1]},
            "options": {}, "split_col": None})
    df = pd.DataFrame({"id": [1, 1], "a": [0.5, 0.2], "color": ["red", "green"]})
    with pytest.raises(UserError, match="unseen in training: green"):
        transform(df, prep)


@pytest.mark.parametrize("layers", [
    [("lstm", 6)], [("peephole", 5)], [("cifg", 7)], [("gru", 4)],
    [("peephole", 5, True), ("cifg", 6), ("gru", 3, True), ("lstm", 4, True)],
])
@pytest.mark.parametrize("task,n_out", [("classification", 3), ("forecasting", 2)])
def test_onnx_matches_pytorch_on_variable_lengths(layers, task, n_out):
    import onnxruntime as ort

    from cellsearch.onnx_export import build_onnx

    torch.manual_seed(0)
    model = build(ModelSpec(3, tuple(LayerSpec(*layer) for layer in layers), n_out, task, 0.2)).eval()
    sess = ort.InferenceSession(build_onnx(model).SerializeToString())
    for batch, time_, lengths in [(5, 9, [9, 3, 1, 7, 5]), (2, 4, [4, 2]), (1, 13, [13])]:
        x = torch.randn(batch, time_, 3)
        lens = torch.tensor(lengths)
        ref = model(x, lens).detach().numpy()
        out = sess.run(None, {"x": x.numpy(), "lengths": lens.numpy()})
        assert np.abs(out[0] - ref).max() < 1e-4
        if task == "classification":
            assert np.allclose(out[1], torch.softmax(torch.from_numpy(ref), 1).numpy(), atol=1e-5)


@pytest.mark.slow
def test_forecasting_predicts_the_next_values_after_each_series(tmp_path):
    from cellsearch.search import tune

    csv = make_sales_csv(tmp_path / "sales.csv", [(10.0, 70), (1000.0, 60)])
    space = tmp_path / "s.yaml"
    space.write_text("layers: {depth: 1, cell: peephole, hidden: 8}\nlr: 0.01\nmax_epochs: 3\npatience: 3\n")
    tune(csv, space=str(space), trials=1, window=14, horizon=3, run_dir=tmp_path / "runs", track=False,
         progress=False)
    out = export(out=tmp_path / "m", run_dir=tmp_path / "runs")
    preds = cellsearch.load(out).predict(pd.read_csv(csv))
    assert list(preds.columns) == ["shop", "step", "prediction"]
    assert preds.shape[0] == 6 and preds.step.tolist() == [1, 2, 3, 1, 2, 3]
    s1 = preds[preds.shop == "s1"].prediction
    assert s1.between(0, 5000).all() and s1.mean() > 100  # back in the series' own units


def test_mlflow_models_serve_answers(bundle, tiny_csv):
    proc, url = serve_bundle(bundle)
    try:
        df = pd.read_csv(tiny_csv).drop(columns=["label"])
        df = df[df.id.isin([0, 1, 2])]
        body = {"dataframe_split": df.to_dict(orient="split")}
        answer = wait_for_server(lambda: http_json(url, body), proc)
        preds = pd.DataFrame(answer["predictions"])
        expected = cellsearch.load(bundle).predict(df)
        assert preds["prediction"].tolist() == expected["prediction"].tolist()
        assert np.allclose(preds["prob_c0"], expected["prob_c0"], atol=1e-6)
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_export_from_another_machine_uses_mlflow_and_the_study(tiny_csv, tiny_space, tmp_path):
    """With the local checkpoints and preprocessing gone (another machine), export fetches the
    checkpoint from the trial's MLflow run and the preprocessing from the study."""
    import shutil

    from cellsearch.search import tune

    r = tune(tiny_csv, space=str(tiny_space), trials=2, run_dir=tmp_path, progress=False, max_epochs=2)
    shutil.rmtree(tmp_path / "studies")
    out = export(out=tmp_path / "m", run_dir=tmp_path)
    assert json.loads((out / "metrics.json").read_text())["trial"] == r.chosen["trial"]
    preds = cellsearch.load(out).predict(pd.read_csv(tiny_csv))
    assert len(preds) == pd.read_csv(tiny_csv).id.nunique()
